//! The fault suite on the diesel paths (sync PgConnection, r2d2; diesel-async bare, bb8, deadpool).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use advisory_common::{ErrorKind, Key};
use advisory_tests::{assert_no_locks, db, unique_key, unique_name};
use diesel::PgConnection;
use diesel::r2d2::{ConnectionManager, Pool as R2d2Pool};
use diesel::sql_types::{BigInt, Text};
use diesel::{Connection, QueryableByName};
use diesel_advisory::prelude::*;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use rand::Rng;

use super::support::*;

pub type Bb8 = diesel_async::pooled_connection::bb8::Pool<AsyncPgConnection>;
pub type Deadpool = diesel_async::pooled_connection::deadpool::Pool<AsyncPgConnection>;

#[derive(QueryableByName)]
struct V {
    #[diesel(sql_type = BigInt)]
    value: i64,
}

#[derive(QueryableByName)]
struct Ab {
    #[diesel(sql_type = BigInt)]
    a: i64,
    #[diesel(sql_type = BigInt)]
    b: i64,
}

pub async fn bb8(size: u32) -> Bb8 {
    // generous checkout timeout: under load, 32 tasks queue for 8 connections that wait on one lock
    bb8::Pool::builder()
        .connection_timeout(Duration::from_secs(300))
        .max_size(size)
        .build(AsyncDieselConnectionManager::new(db().url()))
        .await
        .unwrap()
}

pub fn deadpool(size: usize) -> Deadpool {
    Deadpool::builder(AsyncDieselConnectionManager::new(db().url()))
        .max_size(size)
        .build()
        .unwrap()
}

fn r2d2(size: u32) -> R2d2Pool<ConnectionManager<PgConnection>> {
    R2d2Pool::builder()
        .connection_timeout(Duration::from_secs(300))
        .max_size(size)
        .build(ConnectionManager::new(db().url()))
        .unwrap()
}

fn r2d2_works(p: &R2d2Pool<ConnectionManager<PgConnection>>) -> bool {
    p.advisory_lock(unique_key())
        .and_then(|g| g.release())
        .is_ok()
}

#[test]
fn holder_killed_diesel_sync_and_r2d2() {
    // bare connection
    let mut c = PgConnection::establish(db().url()).unwrap();
    let key = unique_key();
    let mut g = c.advisory_lock(key).unwrap();
    let waited = kill_holder("diesel sync", key);
    let held = g.is_held();
    assert!(!matches!(held, Ok(true)), "{held:?}");
    let held = held.map_err(|e| e.kind());
    let rel = g
        .release()
        .expect_err("release after the session was killed must fail");
    assert_eq!(rel.kind(), Some(ErrorKind::ConnectionLost), "{rel:?}");
    summary(
        "holder killed",
        "diesel sync PgConnection",
        format_args!(
            "waiter_ms={:.1} is_held={held:?} release={rel}",
            waited.as_secs_f64() * 1e3
        ),
    );

    // r2d2
    let p = r2d2(2);
    let key = unique_key();
    let mut g = p.advisory_lock(key).unwrap();
    let waited = kill_holder("diesel r2d2", key);
    let held = g.is_held();
    assert!(!matches!(held, Ok(true)), "{held:?}");
    let held = held.map_err(|e| e.kind());
    let rel = g
        .release()
        .expect_err("release after the session was killed must fail");
    assert_eq!(rel.kind(), Some(ErrorKind::ConnectionLost), "{rel:?}");
    let ok = r2d2_works(&p) && r2d2_works(&p) && r2d2_works(&p);
    assert!(ok, "r2d2 did not keep serving");
    summary(
        "holder killed",
        "diesel r2d2",
        format_args!(
            "waiter_ms={:.1} is_held={held:?} release={rel} pool_ok={ok}",
            waited.as_secs_f64() * 1e3
        ),
    );
}

macro_rules! killed_async {
    ($name:literal, $g:expr, $key:expr, $works:expr) => {{
        let mut g = $g;
        let key = $key;
        let waited = tokio::task::spawn_blocking(move || kill_holder($name, key))
            .await
            .unwrap();
        let held = g.is_held().await;
        assert!(!matches!(held, Ok(true)), "{held:?}");
        let held = held.map_err(|e| e.kind());
        let rel = g
            .release()
            .await
            .expect_err("release after the session was killed must fail");
        assert_eq!(
            rel.kind(),
            Some(ErrorKind::ConnectionLost),
            "{}: {rel:?}",
            $name
        );
        let ok = $works;
        assert!(ok, "{} did not keep serving", $name);
        summary(
            "holder killed",
            $name,
            format_args!(
                "waiter_ms={:.1} is_held={held:?} release={rel} pool_ok={ok}",
                waited.as_secs_f64() * 1e3
            ),
        );
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holder_killed_diesel_async_paths() {
    let mut c = AsyncPgConnection::establish(db().url()).await.unwrap();
    let key = unique_key();
    killed_async!(
        "diesel-async bare",
        c.advisory_lock(key).await.unwrap(),
        key,
        true
    );

    let p = bb8(2).await;
    let key = unique_key();
    killed_async!(
        "diesel-async bb8",
        p.advisory_lock(key).await.unwrap(),
        key,
        {
            let mut ok = true;
            for _ in 0..3 {
                ok &= p
                    .advisory_lock(unique_key())
                    .await
                    .unwrap()
                    .release()
                    .await
                    .is_ok();
            }
            ok
        }
    );

    let p = deadpool(2);
    let key = unique_key();
    killed_async!(
        "diesel-async deadpool",
        p.advisory_lock(key).await.unwrap(),
        key,
        {
            let mut ok = true;
            for _ in 0..3 {
                ok &= p
                    .advisory_lock(unique_key())
                    .await
                    .unwrap()
                    .release()
                    .await
                    .is_ok();
            }
            ok
        }
    );
}

async fn rmw_async(c: &mut AsyncPgConnection, id: &str) {
    use diesel_async::RunQueryDsl;
    let v: V = diesel::sql_query(RMW_READ)
        .bind::<Text, _>(id)
        .get_result(c)
        .await
        .unwrap();
    diesel::sql_query(RMW_WRITE)
        .bind::<Text, _>(id)
        .bind::<BigInt, _>(v.value + 1)
        .execute(c)
        .await
        .unwrap();
}

fn read_value(id: &str) -> i64 {
    use diesel::RunQueryDsl;
    diesel::sql_query(RMW_READ)
        .bind::<Text, _>(id)
        .get_result::<V>(&mut raw())
        .unwrap()
        .value
}

fn new_row(prefix: &str) -> String {
    use diesel::RunQueryDsl;
    let id = unique_name(prefix);
    diesel::sql_query(NEW_ROW)
        .bind::<Text, _>(&id)
        .execute(&mut raw())
        .unwrap();
    id
}

/// 32 tasks x 500 increments through bb8 and deadpool guards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_rmw_diesel_async_pools() {
    let (tasks, each) = (32usize, 500usize);
    for which in ["diesel-async bb8", "diesel-async deadpool"] {
        let key = unique_key();
        let id = Arc::new(new_row("load-diesel-async"));
        let (b, d) = (bb8(8).await, deadpool(8));
        let t = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..tasks {
            let (b, d, id) = (b.clone(), d.clone(), id.clone());
            set.spawn(async move {
                for _ in 0..each {
                    if which.ends_with("bb8") {
                        let mut g = b.advisory_lock(key).await.unwrap();
                        rmw_async(&mut g, &id).await;
                        g.release().await.unwrap();
                    } else {
                        let mut g = d.advisory_lock(key).await.unwrap();
                        rmw_async(&mut g, &id).await;
                        g.release().await.unwrap();
                    }
                }
            });
        }
        set.join_all().await;
        let el = t.elapsed();
        let v = tokio::task::spawn_blocking({
            let id = id.clone();
            move || read_value(&id)
        })
        .await
        .unwrap();
        assert_eq!(v, (tasks * each) as i64, "{which}");
        summary(
            "load rmw",
            which,
            format_args!(
                "tasks={tasks} ops={} final={v} ops_per_s={:.0}",
                tasks * each,
                (tasks * each) as f64 / el.as_secs_f64()
            ),
        );
    }
}

/// 32 threads x 500 increments through r2d2 guards.
#[test]
fn load_rmw_diesel_r2d2() {
    use diesel::RunQueryDsl;
    let (tasks, each) = (32usize, 500usize);
    let p = r2d2(8);
    let key = unique_key();
    let id = Arc::new(new_row("load-r2d2"));
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..tasks {
            let (p, id) = (&p, id.clone());
            s.spawn(move || {
                for _ in 0..each {
                    let mut g = p.advisory_lock(key).unwrap();
                    let v: V = diesel::sql_query(RMW_READ)
                        .bind::<Text, _>(id.as_str())
                        .get_result(&mut *g)
                        .unwrap();
                    diesel::sql_query(RMW_WRITE)
                        .bind::<Text, _>(id.as_str())
                        .bind::<BigInt, _>(v.value + 1)
                        .execute(&mut *g)
                        .unwrap();
                    g.release().unwrap();
                }
            });
        }
    });
    let el = t.elapsed();
    let v = read_value(&id);
    assert_eq!(v, (tasks * each) as i64);
    assert_no_locks(&[key], Duration::from_secs(5));
    summary(
        "load rmw",
        "diesel r2d2",
        format_args!(
            "tasks={tasks} ops={} final={v} ops_per_s={:.0}",
            tasks * each,
            (tasks * each) as f64 / el.as_secs_f64()
        ),
    );
}

async fn rw_write(c: &mut AsyncPgConnection, id: &str) {
    use diesel_async::RunQueryDsl;
    diesel::sql_query(RW_WRITE_A)
        .bind::<Text, _>(id)
        .execute(c)
        .await
        .unwrap();
    diesel::sql_query(RW_WRITE_B)
        .bind::<Text, _>(id)
        .execute(c)
        .await
        .unwrap();
}

async fn rw_read(c: &mut AsyncPgConnection, id: &str) -> Ab {
    use diesel_async::RunQueryDsl;
    diesel::sql_query(RW_READ)
        .bind::<Text, _>(id)
        .get_result(c)
        .await
        .unwrap()
}

/// Readers with shared locks never see a writer's half-done update (bb8 and deadpool).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_writer_diesel_async_pools() {
    for which in ["diesel-async bb8", "diesel-async deadpool"] {
        let (b, d) = (bb8(8).await, deadpool(8));
        let key = unique_key();
        let id = Arc::new(
            tokio::task::spawn_blocking(|| new_row("rw-async"))
                .await
                .unwrap(),
        );
        let (reads, broken) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let t = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for w in 0..6 {
            let (b, d, id, reads, broken) = (
                b.clone(),
                d.clone(),
                id.clone(),
                reads.clone(),
                broken.clone(),
            );
            set.spawn(async move {
                for _ in 0..150 {
                    let bb = which.ends_with("bb8");
                    if w < 2 {
                        if bb {
                            let mut g = b.advisory_lock(key).await.unwrap();
                            rw_write(&mut g, &id).await;
                            g.release().await.unwrap();
                        } else {
                            let mut g = d.advisory_lock(key).await.unwrap();
                            rw_write(&mut g, &id).await;
                            g.release().await.unwrap();
                        }
                    } else {
                        let r = if bb {
                            let mut g = b.advisory_lock_shared(key).await.unwrap();
                            let r = rw_read(&mut g, &id).await;
                            g.release().await.unwrap();
                            r
                        } else {
                            let mut g = d.advisory_lock_shared(key).await.unwrap();
                            let r = rw_read(&mut g, &id).await;
                            g.release().await.unwrap();
                            r
                        };
                        reads.fetch_add(1, Ordering::Relaxed);
                        if r.a != r.b {
                            broken.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
        set.join_all().await;
        assert_eq!(
            broken.load(Ordering::Relaxed),
            0,
            "{which}: a reader saw a = b broken under a shared lock"
        );
        summary(
            "readers-writer",
            which,
            format_args!(
                "writes=300 reads={} broken=0 ms={}",
                reads.load(Ordering::Relaxed),
                t.elapsed().as_millis()
            ),
        );
    }
}

/// Readers with shared locks never see a writer's half-done update (r2d2, threads).
#[test]
fn readers_writer_diesel_r2d2() {
    use diesel::RunQueryDsl;
    let p = r2d2(8);
    let key = unique_key();
    let id = new_row("rw-r2d2");
    let (reads, broken) = (AtomicU64::new(0), AtomicU64::new(0));
    let t = Instant::now();
    std::thread::scope(|s| {
        for w in 0..6 {
            let (p, id, reads, broken) = (&p, &id, &reads, &broken);
            s.spawn(move || {
                for _ in 0..150 {
                    if w < 2 {
                        let mut g = p.advisory_lock(key).unwrap();
                        diesel::sql_query(RW_WRITE_A)
                            .bind::<Text, _>(id)
                            .execute(&mut *g)
                            .unwrap();
                        diesel::sql_query(RW_WRITE_B)
                            .bind::<Text, _>(id)
                            .execute(&mut *g)
                            .unwrap();
                        g.release().unwrap();
                    } else {
                        let mut g = p.advisory_lock_shared(key).unwrap();
                        let r: Ab = diesel::sql_query(RW_READ)
                            .bind::<Text, _>(id)
                            .get_result(&mut *g)
                            .unwrap();
                        g.release().unwrap();
                        reads.fetch_add(1, Ordering::Relaxed);
                        if r.a != r.b {
                            broken.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    let r: Ab = diesel::sql_query(RW_READ)
        .bind::<Text, _>(&id)
        .get_result(&mut raw())
        .unwrap();
    assert_eq!((r.a, r.b), (300, 300));
    assert_eq!(
        broken.load(Ordering::Relaxed),
        0,
        "a reader saw a = b broken under a shared lock"
    );
    summary(
        "readers-writer",
        "diesel r2d2",
        format_args!(
            "writes=300 reads={} broken=0 ms={}",
            reads.load(Ordering::Relaxed),
            t.elapsed().as_millis()
        ),
    );
}

/// Random-deadline acquires through bb8 (`deadpool = false`) or deadpool; (acquired, cancelled).
pub async fn storm_diesel(n: usize, key: Key, use_deadpool: bool) -> (usize, usize) {
    let (b, d) = (bb8(4).await, deadpool(4));
    let (mut acquired, mut cancelled) = (0, 0);
    macro_rules! one {
        ($p:expr, $i:expr, $d:expr) => {
            match $i % 3 {
                0 => tokio::time::timeout($d, $p.advisory_lock(key))
                    .await
                    .map(|r| r.map(Some)),
                1 => tokio::time::timeout($d, $p.try_advisory_lock(key)).await,
                _ => tokio::time::timeout(
                    $d,
                    $p.advisory_lock_timeout(key, Duration::from_millis(2)),
                )
                .await
                .map(|r| match r {
                    Ok(g) => Ok(Some(g)),
                    Err(e) if e.kind() == Some(ErrorKind::Timeout) => Ok(None),
                    Err(e) => Err(e),
                }),
            }
        };
    }
    for i in 0..n {
        let dl = Duration::from_micros(rand::thread_rng().gen_range(0..20_000));
        if use_deadpool {
            match one!(d, i, dl) {
                Ok(Ok(Some(g))) => {
                    acquired += 1;
                    g.release().await.unwrap();
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => panic!("unexpected error in the storm: {e:?}"),
                Err(_) => cancelled += 1,
            }
        } else {
            match one!(b, i, dl) {
                Ok(Ok(Some(g))) => {
                    acquired += 1;
                    g.release().await.unwrap();
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => panic!("unexpected error in the storm: {e:?}"),
                Err(_) => cancelled += 1,
            }
        }
    }
    // the pool still hands out working connections
    if use_deadpool {
        d.advisory_lock(unique_key())
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
    } else {
        b.advisory_lock(unique_key())
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
    }
    (acquired, cancelled)
}
