//! sqlx under contention: handoff latency (blocking, timed, polling) and 16 tasks doing a
//! lock-protected read-modify-write, next to the same loop in raw SQL.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use sqlx::Row;
use sqlx::postgres::{PgConnection, PgPool};
use sqlx_advisory::prelude::*;

use crate::report::{Figure, percentile};
use crate::sqlx_paths::{LOCK, TRY, UNLOCK, k, pool};
use crate::{Opts, ops, ops_fig, order};

#[derive(Clone, Copy, PartialEq)]
enum How {
    Blocking,
    Timeout,
    Polling,
}

/// Holder releases; how long until the waiting task holds the lock.
pub(crate) async fn handoffs(
    _url: &str,
    p: &PgPool,
    holder: &mut PgConnection,
    o: Opts,
) -> Vec<Figure> {
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
pub(crate) async fn contention(url: &str, o: Opts) -> Vec<Figure> {
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
