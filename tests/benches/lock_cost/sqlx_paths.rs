//! sqlx paths: pool guard, connection guard, transaction lock; raw SQL floors on the same kind of
//! connection; sqlx's own `PgAdvisoryLock`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use advisory_common::Key;
use rand::Rng;
use sqlx::postgres::{PgAdvisoryLock, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Row};
use sqlx_advisory::prelude::*;

use crate::report::{Figure, percentile};
use crate::{Opts, ops, ops_fig, order};

const LOCK: &str = "SELECT pg_advisory_lock($1)";
const UNLOCK: &str = "SELECT pg_advisory_unlock($1)";
const TRY: &str = "SELECT pg_try_advisory_lock($1)";
const XACT: &str = "SELECT pg_advisory_xact_lock($1)";

fn k(key: Key) -> i64 {
    match key {
        Key::BigInt(k) => k,
        Key::Pair(..) => unreachable!(),
    }
}

async fn pool(url: &str, size: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(size)
        .min_connections(size)
        .connect(url)
        .await
        .expect("sqlx pool")
}

pub async fn run(url: &str, o: Opts) -> Vec<Figure> {
    let mut figs = Vec::new();
    let key = advisory_tests::unique_key();
    let p = pool(url, 2).await;
    let mut conn = PgConnection::connect(url).await.unwrap();
    let theirs = PgAdvisoryLock::with_key(sqlx::postgres::PgAdvisoryLockKey::BigInt(k(key)));

    // warm up: prepare every statement on every connection
    for _ in 0..3 {
        for _ in 0..2 {
            p.advisory_lock(key).await.unwrap().release().await.unwrap();
            pool_floor(&p, key, 1).await;
        }
        conn.advisory_lock(key)
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
        conn_floor(&mut conn, key, 1).await;
        let g = theirs.acquire(&mut conn).await.unwrap();
        g.release_now().await.unwrap();
    }

    // per group [ours, floor, theirs]: one push each per repetition, so index i = repetition i
    let (mut pv, mut cv): ([Vec<f64>; 3], [Vec<f64>; 3]) = Default::default();
    let mut xv: [Vec<f64>; 5] = Default::default();
    for rep in 0..o.reps {
        for v in order(rep, 3) {
            let t = Instant::now();
            match v {
                0 => {
                    for _ in 0..o.iters {
                        p.advisory_lock(key).await.unwrap().release().await.unwrap();
                    }
                }
                1 => {
                    pool_floor(&p, key, o.iters).await;
                }
                _ => {
                    for _ in 0..o.iters {
                        let g = theirs.acquire(p.acquire().await.unwrap()).await.unwrap();
                        g.release_now().await.unwrap();
                    }
                }
            }
            pv[v].push(ops(o.iters, t.elapsed()));
        }
        for v in order(rep, 3) {
            let t = Instant::now();
            match v {
                0 => {
                    for _ in 0..o.iters {
                        let g = conn.advisory_lock(key).await.unwrap();
                        g.release().await.unwrap();
                    }
                }
                1 => {
                    conn_floor(&mut conn, key, o.iters).await;
                }
                _ => {
                    for _ in 0..o.iters {
                        let g = theirs.acquire(&mut conn).await.unwrap();
                        g.release_now().await.unwrap();
                    }
                }
            }
            cv[v].push(ops(o.iters, t.elapsed()));
        }
        // [xact_lock in begin(), raw, begin_with_xact_lock on the connection, on the pool, raw on the pool]
        for v in order(rep, 5) {
            let t = Instant::now();
            for _ in 0..o.iters {
                match v {
                    0 | 1 => {
                        let mut tx = conn.begin().await.unwrap();
                        if v == 0 {
                            tx.xact_lock(key).await.unwrap();
                        } else {
                            sqlx::query(XACT)
                                .bind(k(key))
                                .execute(&mut *tx)
                                .await
                                .unwrap();
                        }
                        tx.commit().await.unwrap();
                    }
                    2 => conn
                        .begin_with_xact_lock(key)
                        .await
                        .unwrap()
                        .commit()
                        .await
                        .unwrap(),
                    3 => p
                        .begin_with_xact_lock(key)
                        .await
                        .unwrap()
                        .commit()
                        .await
                        .unwrap(),
                    _ => {
                        let mut tx = p.begin().await.unwrap();
                        sqlx::query(XACT)
                            .bind(k(key))
                            .execute(&mut *tx)
                            .await
                            .unwrap();
                        tx.commit().await.unwrap();
                    }
                }
            }
            xv[v].push(ops(o.iters, t.elapsed()));
        }
    }
    let (
        [ours_p, floor_p, theirs_p],
        [ours_c, floor_c, theirs_c],
        [ours_x, floor_x, fast_x, fast_xp, floor_xp],
    ) = (pv, cv, xv);
    figs.push(ops_fig(
        "uncontended",
        "sqlx PgPool guard",
        ours_p.clone(),
        "raw SQL on pool checkout",
        floor_p,
    ));
    figs.push(ops_fig(
        "uncontended",
        "sqlx PgPool guard",
        ours_p,
        "sqlx PgAdvisoryLock (pool)",
        theirs_p,
    ));
    figs.push(ops_fig(
        "uncontended",
        "sqlx PgConnection guard",
        ours_c.clone(),
        "raw SQL on PgConnection",
        floor_c,
    ));
    figs.push(ops_fig(
        "uncontended",
        "sqlx PgConnection guard",
        ours_c,
        "sqlx PgAdvisoryLock (conn)",
        theirs_c,
    ));
    figs.push(ops_fig(
        "transaction scope",
        "sqlx BEGIN+xact_lock+COMMIT",
        ours_x,
        "raw BEGIN+lock+COMMIT",
        floor_x.clone(),
    ));
    figs.push(ops_fig(
        "transaction scope",
        "sqlx conn begin_with_xact_lock+COMMIT",
        fast_x,
        "raw BEGIN+lock+COMMIT",
        floor_x,
    ));
    figs.push(ops_fig(
        "transaction scope",
        "sqlx PgPool begin_with_xact_lock+COMMIT",
        fast_xp,
        "raw pool.begin()+lock+COMMIT",
        floor_xp,
    ));

    // try on a key held elsewhere
    let mut holder = PgConnection::connect(url).await.unwrap();
    sqlx::query(LOCK)
        .bind(k(key))
        .execute(&mut holder)
        .await
        .unwrap();
    // [conn ours, conn floor, pool ours, pool floor], all four rotated together
    let mut tv: [Vec<f64>; 4] = Default::default();
    for rep in 0..o.reps {
        for v in order(rep, 4) {
            let t = Instant::now();
            for _ in 0..o.iters {
                let got = match v {
                    0 => conn.try_advisory_lock(key).await.unwrap().is_some(),
                    1 => sqlx::query_scalar(TRY)
                        .bind(k(key))
                        .fetch_one(&mut conn)
                        .await
                        .unwrap(),
                    2 => p.try_advisory_lock(key).await.unwrap().is_some(),
                    _ => {
                        let mut c = p.acquire().await.unwrap();
                        sqlx::query_scalar(TRY)
                            .bind(k(key))
                            .fetch_one(&mut *c)
                            .await
                            .unwrap()
                    }
                };
                assert!(!got);
            }
            tv[v].push(ops(o.iters, t.elapsed()));
        }
    }
    let [ours_t, floor_t, ours_tp, floor_tp] = tv;
    sqlx::query(UNLOCK)
        .bind(k(key))
        .execute(&mut holder)
        .await
        .unwrap();
    figs.push(ops_fig(
        "try (held elsewhere)",
        "sqlx PgConnection try",
        ours_t,
        "raw pg_try_advisory_lock",
        floor_t,
    ));
    figs.push(ops_fig(
        "try (held elsewhere)",
        "sqlx PgPool try",
        ours_tp,
        "raw try on pool checkout",
        floor_tp,
    ));

    figs.extend(handoffs(url, &p, &mut holder, o).await);
    figs.extend(contention(url, o).await);
    figs
}

async fn pool_floor(p: &PgPool, key: Key, n: usize) -> Duration {
    let t = Instant::now();
    for _ in 0..n {
        let mut c = p.acquire().await.unwrap();
        sqlx::query(LOCK)
            .bind(k(key))
            .execute(&mut *c)
            .await
            .unwrap();
        sqlx::query(UNLOCK)
            .bind(k(key))
            .execute(&mut *c)
            .await
            .unwrap();
    }
    t.elapsed()
}

async fn conn_floor(c: &mut PgConnection, key: Key, n: usize) -> Duration {
    let t = Instant::now();
    for _ in 0..n {
        sqlx::query(LOCK)
            .bind(k(key))
            .execute(&mut *c)
            .await
            .unwrap();
        sqlx::query(UNLOCK)
            .bind(k(key))
            .execute(&mut *c)
            .await
            .unwrap();
    }
    t.elapsed()
}

#[derive(Clone, Copy, PartialEq)]
enum How {
    Blocking,
    Timeout,
    Polling,
}

/// Holder releases; how long until the waiting task holds the lock.
async fn handoffs(_url: &str, p: &PgPool, holder: &mut PgConnection, o: Opts) -> Vec<Figure> {
    let mut figs = Vec::new();
    let mut blocking_p50 = f64::NAN;
    for how in [How::Blocking, How::Timeout, How::Polling] {
        let n = if how == How::Polling {
            o.poll_handoffs
        } else {
            o.handoffs
        };
        let mut lat = Vec::with_capacity(n);
        for _ in 0..n {
            let key = advisory_tests::unique_key();
            sqlx::query(LOCK)
                .bind(k(key))
                .execute(&mut *holder)
                .await
                .unwrap();
            let (tried_tx, tried_rx) = tokio::sync::oneshot::channel::<()>();
            let pool = p.clone();
            let waiter = tokio::spawn(async move {
                match how {
                    How::Blocking => {
                        let g = pool.advisory_lock(key).await.unwrap();
                        let at = Instant::now();
                        g.release().await.unwrap();
                        at
                    }
                    How::Timeout => {
                        let g = pool
                            .advisory_lock_timeout(key, Duration::from_secs(30))
                            .await
                            .unwrap();
                        let at = Instant::now();
                        g.release().await.unwrap();
                        at
                    }
                    How::Polling => {
                        // what Ruby's with_advisory_lock does: try, sleep 50-150 ms, try again
                        let mut c = pool.acquire().await.unwrap();
                        let mut tried = Some(tried_tx);
                        loop {
                            let got: bool = sqlx::query_scalar(TRY)
                                .bind(k(key))
                                .fetch_one(&mut *c)
                                .await
                                .unwrap();
                            if got {
                                let at = Instant::now();
                                sqlx::query(UNLOCK)
                                    .bind(k(key))
                                    .execute(&mut *c)
                                    .await
                                    .unwrap();
                                return at;
                            }
                            if let Some(t) = tried.take() {
                                let _ = t.send(());
                            }
                            let ms = rand::thread_rng().gen_range(50..150);
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                        }
                    }
                }
            });
            if how == How::Polling {
                tried_rx.await.unwrap();
            } else {
                tokio::task::spawn_blocking(move || {
                    advisory_tests::wait_until(&[key], Duration::from_secs(10), "a waiter", |r| {
                        r.iter().any(|l| !l.granted)
                    })
                })
                .await
                .unwrap();
            }
            let t0 = Instant::now();
            sqlx::query(UNLOCK)
                .bind(k(key))
                .execute(&mut *holder)
                .await
                .unwrap();
            let at = waiter.await.unwrap();
            lat.push(at.saturating_duration_since(t0).as_secs_f64() * 1000.0);
        }
        let name = match how {
            How::Blocking => "sqlx PgPool advisory_lock",
            How::Timeout => "sqlx PgPool advisory_lock_timeout",
            How::Polling => "polling (try + 50-150ms sleep)",
        };
        let p50 = percentile(&lat, 50.0);
        if how == How::Blocking {
            blocking_p50 = p50;
        }
        for (metric, pct) in [("p50", 50.0), ("p99", 99.0)] {
            figs.push(Figure {
                section: "handoff latency",
                path: name.to_string(),
                metric,
                unit: "ms",
                values: vec![percentile(&lat, pct)],
                baseline: if how == How::Blocking {
                    None
                } else {
                    Some(("sqlx PgPool advisory_lock p50".into(), vec![blocking_p50]))
                },
                higher_is_better: false,
                note: format!("n={n}"),
            });
        }
    }
    figs
}

/// `tasks` tasks on one key: lock, read the counter, write counter+1, unlock.
async fn contention(url: &str, o: Opts) -> Vec<Figure> {
    let p = pool(url, o.tasks as u32 + 1).await;
    let (mut ours, mut raw) = (vec![], vec![]);
    for rep in 0..o.reps {
        for use_ours in order(rep, 2).map(|v| v == 0) {
            let key = advisory_tests::unique_key();
            let id = advisory_tests::unique_name("bench-sqlx");
            sqlx::query("INSERT INTO advisory_test_counters (id, value) VALUES ($1, 0)")
                .bind(&id)
                .execute(&p)
                .await
                .unwrap();
            let id = Arc::new(id);
            let t = Instant::now();
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..o.tasks {
                let (p, id) = (p.clone(), id.clone());
                set.spawn(async move {
                    for _ in 0..o.per_task {
                        if use_ours {
                            let mut g = p.advisory_lock(key).await.unwrap();
                            rmw(&mut g, &id).await;
                            g.release().await.unwrap();
                        } else {
                            let mut c = p.acquire().await.unwrap();
                            sqlx::query(LOCK)
                                .bind(k(key))
                                .execute(&mut *c)
                                .await
                                .unwrap();
                            rmw(&mut c, &id).await;
                            sqlx::query(UNLOCK)
                                .bind(k(key))
                                .execute(&mut *c)
                                .await
                                .unwrap();
                        }
                    }
                });
            }
            set.join_all().await;
            let el = t.elapsed();
            let v: i64 = sqlx::query("SELECT value FROM advisory_test_counters WHERE id = $1")
                .bind(id.as_str())
                .fetch_one(&p)
                .await
                .unwrap()
                .get(0);
            assert_eq!(
                v as usize,
                o.tasks * o.per_task,
                "lost update under the lock"
            );
            let r = ops(o.tasks * o.per_task, el);
            if use_ours { ours.push(r) } else { raw.push(r) }
        }
    }
    let mut f = ops_fig(
        "contention",
        "sqlx PgPool guard (16 tasks, rmw)",
        ours,
        "raw SQL, same loop",
        raw,
    );
    f.path = format!("sqlx PgPool guard ({} tasks, rmw)", o.tasks);
    f.note = "final value checked".into();
    vec![f]
}

async fn rmw(c: &mut PgConnection, id: &str) {
    let v: i64 = sqlx::query_scalar("SELECT value FROM advisory_test_counters WHERE id = $1")
        .bind(id)
        .fetch_one(&mut *c)
        .await
        .unwrap();
    sqlx::query("UPDATE advisory_test_counters SET value = $2 WHERE id = $1")
        .bind(id)
        .bind(v + 1)
        .execute(&mut *c)
        .await
        .unwrap();
}

/// Round trips per call through the counting proxy.
pub async fn count_round_trips(
    purl: &str,
    counter: &crate::proxy::Counter,
    n: usize,
) -> Vec<(String, f64)> {
    let key = advisory_tests::unique_key();
    let p = pool(purl, 1).await;
    let mut conn = PgConnection::connect(purl).await.unwrap();
    let mut out = Vec::new();
    macro_rules! count {
        ($name:expr, $body:expr) => {{
            for _ in 0..3 {
                $body;
            }
            let before = counter.get();
            for _ in 0..n {
                $body;
            }
            out.push((
                $name.to_string(),
                (counter.get() - before) as f64 / n as f64,
            ));
        }};
    }
    count!(
        "sqlx PgConnection advisory_lock+release",
        conn.advisory_lock(key)
            .await
            .unwrap()
            .release()
            .await
            .unwrap()
    );
    count!(
        "  raw lock+unlock (floor)",
        conn_floor(&mut conn, key, 1).await
    );
    count!(
        "sqlx PgConnection advisory_lock_timeout+release",
        conn.advisory_lock_timeout(key, Duration::from_secs(5))
            .await
            .unwrap()
            .release()
            .await
            .unwrap()
    );
    count!(
        "sqlx PgConnection try_advisory_lock+release",
        conn.try_advisory_lock(key)
            .await
            .unwrap()
            .unwrap()
            .release()
            .await
            .unwrap()
    );
    count!(
        "sqlx PgPool advisory_lock+release",
        p.advisory_lock(key).await.unwrap().release().await.unwrap()
    );
    count!(
        "  raw on pool checkout (floor)",
        pool_floor(&p, key, 1).await
    );
    count!("sqlx BEGIN+xact_lock_timeout+COMMIT", {
        let mut tx = conn.begin().await.unwrap();
        tx.xact_lock_timeout(key, Duration::from_secs(5))
            .await
            .unwrap();
        tx.commit().await.unwrap();
    });
    count!("sqlx BEGIN+xact_lock+COMMIT", {
        let mut tx = conn.begin().await.unwrap();
        tx.xact_lock(key).await.unwrap();
        tx.commit().await.unwrap();
    });
    count!("sqlx begin_with_xact_lock+COMMIT", {
        conn.begin_with_xact_lock(key)
            .await
            .unwrap()
            .commit()
            .await
            .unwrap();
    });
    count!("sqlx begin_with_xact_lock_timeout+COMMIT", {
        conn.begin_with_xact_lock_timeout(key, Duration::from_secs(5))
            .await
            .unwrap()
            .commit()
            .await
            .unwrap();
    });
    out
}
