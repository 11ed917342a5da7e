//! diesel paths, uncontended: sync PgConnection and r2d2; diesel-async bare, bb8 and deadpool; the
//! transaction lock and the one-round-trip `transaction_with_xact_lock`; raw SQL floors as cached
//! prepared statements on the same connection kind. (Contention: `diesel_contended`; round trips:
//! `trips`.)

use std::time::{Duration, Instant};

use advisory_common::Key;
use diesel::r2d2::{ConnectionManager, Pool as R2d2Pool};
use diesel::sql_types::BigInt;
use diesel::{Connection, PgConnection};
use diesel_advisory::prelude::*;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::{AsyncConnection, AsyncPgConnection};

use crate::report::Figure;
use crate::{Opts, ops, ops_fig, order};

#[derive(diesel::sql_types::SqlType, diesel::query_builder::QueryId)]
#[diesel(postgres_type(name = "void"))]
pub struct Void;

diesel::define_sql_function! { fn pg_advisory_lock(key: BigInt) -> Void; }
diesel::define_sql_function! { fn pg_advisory_unlock(key: BigInt) -> Bool; }
diesel::define_sql_function! { fn pg_try_advisory_lock(key: BigInt) -> Bool; }

pub(crate) type Bb8 = diesel_async::pooled_connection::bb8::Pool<AsyncPgConnection>;
type Deadpool = diesel_async::pooled_connection::deadpool::Pool<AsyncPgConnection>;

pub(crate) fn k(key: Key) -> i64 {
    match key.value() {
        advisory_common::KeyValue::BigInt(k) => k,
        advisory_common::KeyValue::Pair(..) => unreachable!(),
    }
}

pub(crate) fn floor_sync(c: &mut PgConnection, key: Key, n: usize) -> Duration {
    use diesel::RunQueryDsl;
    let t = Instant::now();
    for _ in 0..n {
        diesel::select(pg_advisory_lock(k(key))).execute(c).unwrap();
        assert!(
            diesel::select(pg_advisory_unlock(k(key)))
                .get_result::<bool>(c)
                .unwrap()
        );
    }
    t.elapsed()
}

pub(crate) async fn floor_async(c: &mut AsyncPgConnection, key: Key, n: usize) -> Duration {
    use diesel_async::RunQueryDsl;
    let t = Instant::now();
    for _ in 0..n {
        diesel::select(pg_advisory_lock(k(key)))
            .execute(c)
            .await
            .unwrap();
        assert!(
            diesel::select(pg_advisory_unlock(k(key)))
                .get_result::<bool>(c)
                .await
                .unwrap()
        );
    }
    t.elapsed()
}

pub fn run_sync(url: &str, o: Opts) -> Vec<Figure> {
    use diesel::RunQueryDsl;
    let key = advisory_tests::unique_key();
    let mut c = PgConnection::establish(url).unwrap();
    let pool = R2d2Pool::builder()
        .max_size(2)
        .build(ConnectionManager::<PgConnection>::new(url))
        .unwrap();
    for _ in 0..3 {
        c.advisory_lock(key).unwrap().release().unwrap();
        floor_sync(&mut c, key, 1);
        pool.advisory_lock(key).unwrap().release().unwrap();
        floor_sync(&mut pool.get().unwrap(), key, 1);
    }
    // per group [ours, floor]: one push each per repetition, so index i = repetition i
    let (mut cv, mut pv) = ([vec![], vec![]], [vec![], vec![]]);
    // [transaction + xact_lock, raw, transaction_with_xact_lock]
    let mut xv: [Vec<f64>; 3] = Default::default();
    for rep in 0..o.reps {
        for v in order(rep, 2) {
            let t = Instant::now();
            if v == 0 {
                for _ in 0..o.iters {
                    c.advisory_lock(key).unwrap().release().unwrap();
                }
            } else {
                floor_sync(&mut c, key, o.iters);
            }
            cv[v].push(ops(o.iters, t.elapsed()));
        }
        for v in order(rep, 2) {
            let t = Instant::now();
            for _ in 0..o.iters {
                if v == 0 {
                    pool.advisory_lock(key).unwrap().release().unwrap();
                } else {
                    floor_sync(&mut pool.get().unwrap(), key, 1);
                }
            }
            pv[v].push(ops(o.iters, t.elapsed()));
        }
        for v in order(rep, 3) {
            let t = Instant::now();
            for _ in 0..o.iters {
                match v {
                    0 => c
                        .transaction::<_, diesel_advisory::Error, _>(|c| c.xact_lock(key))
                        .unwrap(),
                    1 => c
                        .transaction::<_, diesel::result::Error, _>(|c| {
                            diesel::select(pg_advisory_xact_lock(k(key)))
                                .execute(c)
                                .map(|_| ())
                        })
                        .unwrap(),
                    _ => c
                        .transaction_with_xact_lock::<_, diesel_advisory::Error, _>(key, |_| Ok(()))
                        .unwrap(),
                }
            }
            xv[v].push(ops(o.iters, t.elapsed()));
        }
    }
    let ([ours, floor], [ours_p, floor_p], [ours_x, floor_x, fast_x]) = (cv, pv, xv);
    let mut figs = vec![
        ops_fig(
            "uncontended",
            "diesel sync PgConnection guard",
            ours,
            "raw prepared on PgConnection",
            floor,
        ),
        ops_fig(
            "uncontended",
            "diesel r2d2 pool guard",
            ours_p,
            "raw prepared on r2d2 checkout",
            floor_p,
        ),
        ops_fig(
            "transaction scope",
            "diesel sync transaction+xact_lock",
            ours_x,
            "raw transaction+lock",
            floor_x.clone(),
        ),
        ops_fig(
            "transaction scope",
            "diesel sync transaction_with_xact_lock",
            fast_x,
            "raw transaction+lock",
            floor_x,
        ),
    ];
    // try, held elsewhere
    let mut holder = PgConnection::establish(url).unwrap();
    diesel::select(pg_advisory_lock(k(key)))
        .execute(&mut holder)
        .unwrap();
    let mut tv: [Vec<f64>; 2] = Default::default();
    for rep in 0..o.reps {
        for v in order(rep, 2) {
            let t = Instant::now();
            for _ in 0..o.iters {
                let got = if v == 0 {
                    c.try_advisory_lock(key).unwrap().is_some()
                } else {
                    diesel::select(pg_try_advisory_lock(k(key)))
                        .get_result::<bool>(&mut c)
                        .unwrap()
                };
                assert!(!got);
            }
            tv[v].push(ops(o.iters, t.elapsed()));
        }
    }
    let [ours_t, floor_t] = tv;
    diesel::select(pg_advisory_unlock(k(key)))
        .get_result::<bool>(&mut holder)
        .unwrap();
    figs.push(ops_fig(
        "try (held elsewhere)",
        "diesel sync PgConnection try",
        ours_t,
        "raw prepared try",
        floor_t,
    ));
    figs
}

diesel::define_sql_function! { fn pg_advisory_xact_lock(key: BigInt) -> Void; }

pub async fn run_async(url: &str, o: Opts) -> Vec<Figure> {
    let key = advisory_tests::unique_key();
    let mut c = AsyncPgConnection::establish(url).await.unwrap();
    let bb8: Bb8 = bb8::Pool::builder()
        .max_size(2)
        .build(AsyncDieselConnectionManager::new(url))
        .await
        .unwrap();
    let dp: Deadpool = Deadpool::builder(AsyncDieselConnectionManager::new(url))
        .max_size(2)
        .build()
        .unwrap();
    for _ in 0..3 {
        c.advisory_lock(key).await.unwrap().release().await.unwrap();
        floor_async(&mut c, key, 1).await;
        bb8.advisory_lock(key)
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
        floor_async(&mut bb8.get().await.unwrap(), key, 1).await;
        dp.advisory_lock(key)
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
        floor_async(&mut dp.get().await.unwrap(), key, 1).await;
    }
    // [bare ours, bare floor, bb8 ours, bb8 floor, deadpool ours, deadpool floor]; each pair is
    // rotated on its own, and index i of every vector is repetition i
    let mut v: [Vec<f64>; 6] = Default::default();
    // [transaction + xact_lock, raw, transaction_with_xact_lock] on the bare connection
    let mut xv: [Vec<f64>; 3] = Default::default();
    for rep in 0..o.reps {
        for i in order(rep, 3) {
            let t = Instant::now();
            for _ in 0..o.iters {
                match i {
                    0 => c
                        .transaction::<_, diesel_advisory::Error, _>(async |c| {
                            c.xact_lock(key).await
                        })
                        .await
                        .unwrap(),
                    1 => c
                        .transaction::<_, diesel::result::Error, _>(async |c| {
                            use diesel_async::RunQueryDsl;
                            diesel::select(pg_advisory_xact_lock(k(key)))
                                .execute(c)
                                .await
                                .map(|_| ())
                        })
                        .await
                        .unwrap(),
                    _ => c
                        .transaction_with_xact_lock::<_, diesel_advisory::Error, _>(
                            key,
                            async |_| Ok(()),
                        )
                        .await
                        .unwrap(),
                }
            }
            xv[i].push(ops(o.iters, t.elapsed()));
        }
        for i in order(rep, 2) {
            let t = Instant::now();
            if i == 0 {
                for _ in 0..o.iters {
                    c.advisory_lock(key).await.unwrap().release().await.unwrap();
                }
            } else {
                floor_async(&mut c, key, o.iters).await;
            }
            v[i].push(ops(o.iters, t.elapsed()));
        }
        for i in order(rep, 2) {
            let t = Instant::now();
            for _ in 0..o.iters {
                if i == 0 {
                    let g = bb8.advisory_lock(key).await.unwrap();
                    g.release().await.unwrap();
                } else {
                    floor_async(&mut bb8.get().await.unwrap(), key, 1).await;
                }
            }
            v[2 + i].push(ops(o.iters, t.elapsed()));
        }
        for i in order(rep, 2) {
            let t = Instant::now();
            for _ in 0..o.iters {
                if i == 0 {
                    let g = dp.advisory_lock(key).await.unwrap();
                    g.release().await.unwrap();
                } else {
                    floor_async(&mut dp.get().await.unwrap(), key, 1).await;
                }
            }
            v[4 + i].push(ops(o.iters, t.elapsed()));
        }
    }
    let [a, b, c2, d, e, f] = v;
    let mut figs = vec![
        ops_fig(
            "uncontended",
            "diesel-async AsyncPgConnection guard",
            a,
            "raw prepared on AsyncPgConnection",
            b,
        ),
        ops_fig(
            "uncontended",
            "diesel-async bb8 pool guard",
            c2,
            "raw prepared on bb8 checkout",
            d,
        ),
        ops_fig(
            "uncontended",
            "diesel-async deadpool pool guard",
            e,
            "raw prepared on deadpool checkout",
            f,
        ),
    ];
    let [ours_x, floor_x, fast_x] = xv;
    figs.push(ops_fig(
        "transaction scope",
        "diesel-async transaction+xact_lock",
        ours_x,
        "raw transaction+lock",
        floor_x.clone(),
    ));
    figs.push(ops_fig(
        "transaction scope",
        "diesel-async transaction_with_xact_lock",
        fast_x,
        "raw transaction+lock",
        floor_x,
    ));
    figs.extend(crate::diesel_contended::contention_bb8(url, o).await);
    figs
}
