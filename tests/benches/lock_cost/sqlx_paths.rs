//! sqlx paths, uncontended: pool guard, connection guard, try on a key held elsewhere, transaction
//! lock and the one-round-trip `begin_with_xact_lock`; next to the raw SQL floors on the same kind of
//! connection and sqlx's own `PgAdvisoryLock`. (Contention: `sqlx_contended`; round trips: `trips`.)

use std::time::{Duration, Instant};

use advisory_common::Key;
use sqlx::Connection;
use sqlx::postgres::{PgAdvisoryLock, PgConnection, PgPool, PgPoolOptions};
use sqlx_advisory::prelude::*;

use crate::report::Figure;
use crate::{Opts, ops, ops_fig, order};

pub(crate) const LOCK: &str = "SELECT pg_advisory_lock($1)";
pub(crate) const UNLOCK: &str = "SELECT pg_advisory_unlock($1)";
pub(crate) const TRY: &str = "SELECT pg_try_advisory_lock($1)";
pub(crate) const XACT: &str = "SELECT pg_advisory_xact_lock($1)";

pub(crate) fn k(key: Key) -> i64 {
    match key.value() {
        advisory_common::KeyValue::BigInt(k) => k,
        advisory_common::KeyValue::Pair(..) => unreachable!(),
    }
}

pub(crate) async fn pool(url: &str, size: u32) -> PgPool {
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
        // [xact_lock in begin(), raw, begin_with_xact_lock on the connection] rotated among
        // themselves, then [begin_with_xact_lock on the pool, raw on the pool] rotated among
        // themselves: rotating all five together put `xact_lock in begin()` right after a pool
        // workload (whose returned checkouts sqlx tidies up in background tasks) in 4 of 5
        // repetitions and its raw baseline never, which measured 0.88-0.91 for a path that costs
        // what the raw SQL costs.
        for v in order(rep, 3).chain(order(rep, 2).map(|i| i + 3)) {
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
    // [conn ours, conn floor, pool ours, pool floor]; each pair runs back to back, rotated on its
    // own (rotating all four together put the connection path right after a pool path, whose
    // returned checkouts sqlx tidies up in background tasks, in 3 of 4 repetitions)
    let mut tv: [Vec<f64>; 4] = Default::default();
    for rep in 0..o.reps {
        for v in [0, 2]
            .into_iter()
            .flat_map(|pair| order(rep, 2).map(move |i| pair + i))
        {
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

    figs.extend(crate::sqlx_contended::handoffs(url, &p, &mut holder, o).await);
    figs.extend(crate::sqlx_contended::contention(url, o).await);
    figs
}

pub(crate) async fn pool_floor(p: &PgPool, key: Key, n: usize) -> Duration {
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

pub(crate) async fn conn_floor(c: &mut PgConnection, key: Key, n: usize) -> Duration {
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
