//! The fault suite on the sqlx paths (PgPool guard, PgConnection guard).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use advisory_common::ErrorKind;
use advisory_tests::{assert_no_locks, db, unique_key, unique_name};
use rand::Rng;
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Row};
use sqlx_advisory::prelude::*;

use super::support::*;

async fn pool(size: u32) -> PgPool {
    // generous checkout timeout: under load, 32 tasks queue for 8 connections that wait on one lock
    PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(300))
        .max_connections(size)
        .connect(db().url())
        .await
        .unwrap()
}

async fn works(pool: &PgPool) -> bool {
    let key = unique_key();
    let Ok(g) = pool.advisory_lock(key).await else {
        return false;
    };
    g.release().await.is_ok() && sqlx::query("SELECT 1").execute(pool).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holder_killed_sqlx_pool() {
    let p = pool(2).await;
    let key = unique_key();
    let mut g = p.advisory_lock(key).await.unwrap();
    let waited = tokio::task::spawn_blocking(move || kill_holder("sqlx PgPool", key))
        .await
        .unwrap();
    let held = g.is_held().await;
    assert!(
        !matches!(held, Ok(true)),
        "a killed session cannot hold the lock: {held:?}"
    );
    let held = held.map_err(|e| e.kind());
    let rel = g
        .release()
        .await
        .expect_err("release after the session was killed must fail");
    assert_eq!(rel.kind(), Some(ErrorKind::ConnectionLost), "{rel:?}");
    let ok = works(&p).await && works(&p).await;
    assert!(ok);
    summary(
        "holder killed",
        "sqlx PgPool",
        format_args!(
            "waiter_ms={:.1} is_held={held:?} release={rel} pool_ok={ok}",
            waited.as_secs_f64() * 1e3
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holder_killed_sqlx_connection() {
    let mut c = PgConnection::connect(db().url()).await.unwrap();
    let key = unique_key();
    let mut g = c.advisory_lock(key).await.unwrap();
    let waited = tokio::task::spawn_blocking(move || kill_holder("sqlx PgConnection", key))
        .await
        .unwrap();
    let held = g.is_held().await;
    assert!(!matches!(held, Ok(true)), "{held:?}");
    let held = held.map_err(|e| e.kind());
    let rel = g
        .release()
        .await
        .expect_err("release after the session was killed must fail");
    assert_eq!(rel.kind(), Some(ErrorKind::ConnectionLost), "{rel:?}");
    summary(
        "holder killed",
        "sqlx PgConnection",
        format_args!(
            "waiter_ms={:.1} is_held={held:?} release={rel}",
            waited.as_secs_f64() * 1e3
        ),
    );
}

/// 32 tasks x 500 lock-protected read-modify-write increments of one row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_rmw_sqlx_pool() {
    let (tasks, each) = (32, 500);
    let p = pool(8).await;
    let key = unique_key();
    let id = Arc::new(unique_name("load-sqlx"));
    sqlx::query(NEW_ROW)
        .bind(id.as_str())
        .execute(&p)
        .await
        .unwrap();
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..tasks {
        let (p, id) = (p.clone(), id.clone());
        set.spawn(async move {
            for _ in 0..each {
                let mut g = p.advisory_lock(key).await.unwrap();
                let v: i64 = sqlx::query_scalar(RMW_READ)
                    .bind(id.as_str())
                    .fetch_one(&mut *g)
                    .await
                    .unwrap();
                sqlx::query(RMW_WRITE)
                    .bind(id.as_str())
                    .bind(v + 1)
                    .execute(&mut *g)
                    .await
                    .unwrap();
                g.release().await.unwrap();
            }
        });
    }
    set.join_all().await;
    let el = t.elapsed();
    let v: i64 = sqlx::query_scalar(RMW_READ)
        .bind(id.as_str())
        .fetch_one(&p)
        .await
        .unwrap();
    assert_eq!(v, (tasks * each) as i64);
    assert_no_locks(&[key], Duration::from_secs(5));
    summary(
        "load rmw",
        "sqlx PgPool",
        format_args!(
            "tasks={tasks} ops={} final={v} ops_per_s={:.0}",
            tasks * each,
            (tasks * each) as f64 / el.as_secs_f64()
        ),
    );
}

/// Readers (shared) never see a writer's (exclusive) half-done update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_writer_sqlx_pool() {
    let p = pool(8).await;
    let key = unique_key();
    let id = Arc::new(unique_name("rw-sqlx"));
    sqlx::query(NEW_ROW)
        .bind(id.as_str())
        .execute(&p)
        .await
        .unwrap();
    let (reads, broken) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for w in 0..6 {
        let (p, id, reads, broken) = (p.clone(), id.clone(), reads.clone(), broken.clone());
        set.spawn(async move {
            for _ in 0..150 {
                if w < 2 {
                    let mut g = p.advisory_lock(key).await.unwrap();
                    sqlx::query(RW_WRITE_A)
                        .bind(id.as_str())
                        .execute(&mut *g)
                        .await
                        .unwrap();
                    sqlx::query(RW_WRITE_B)
                        .bind(id.as_str())
                        .execute(&mut *g)
                        .await
                        .unwrap();
                    g.release().await.unwrap();
                } else {
                    let mut g = p.advisory_lock_shared(key).await.unwrap();
                    let r = sqlx::query(RW_READ)
                        .bind(id.as_str())
                        .fetch_one(&mut *g)
                        .await
                        .unwrap();
                    let (a, b): (i64, i64) = (r.get(0), r.get(1));
                    reads.fetch_add(1, Ordering::Relaxed);
                    if a != b {
                        broken.fetch_add(1, Ordering::Relaxed);
                    }
                    g.release().await.unwrap();
                }
            }
        });
    }
    set.join_all().await;
    let r = sqlx::query(RW_READ)
        .bind(id.as_str())
        .fetch_one(&p)
        .await
        .unwrap();
    let (a, b): (i64, i64) = (r.get(0), r.get(1));
    assert_eq!((a, b), (300, 300));
    assert_eq!(
        broken.load(Ordering::Relaxed),
        0,
        "a reader saw a = b broken under a shared lock"
    );
    summary(
        "readers-writer",
        "sqlx PgPool",
        format_args!(
            "writes=300 reads={} broken=0 ms={}",
            reads.load(Ordering::Relaxed),
            t.elapsed().as_millis()
        ),
    );
}

/// Acquires with random deadlines on a key another session holds and releases; afterwards no
/// locks remain and the pool serves. Returns (acquired, cancelled).
pub async fn storm_sqlx_pool(n: usize, key: advisory_common::Key) -> (usize, usize) {
    let p = pool(4).await;
    let (mut acquired, mut cancelled) = (0, 0);
    for i in 0..n {
        let d = Duration::from_micros(rand::thread_rng().gen_range(0..20_000));
        let r = match i % 3 {
            0 => tokio::time::timeout(d, p.advisory_lock(key))
                .await
                .map(|r| r.map(Some)),
            1 => tokio::time::timeout(d, p.try_advisory_lock(key)).await,
            _ => tokio::time::timeout(d, p.advisory_lock_timeout(key, Duration::from_millis(2)))
                .await
                .map(|r| match r {
                    Ok(g) => Ok(Some(g)),
                    Err(e) if e.kind() == Some(ErrorKind::Timeout) => Ok(None),
                    Err(e) => Err(e),
                }),
        };
        match r {
            Ok(Ok(Some(g))) => {
                acquired += 1;
                g.release().await.unwrap();
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => panic!("unexpected error in the storm: {e:?}"),
            Err(_) => cancelled += 1,
        }
    }
    assert!(works(&p).await);
    (acquired, cancelled)
}
