//! diesel-async under contention: 16 tasks doing a lock-protected read-modify-write through a bb8
//! pool, next to the same loop in raw SQL.

use std::time::Instant;

use diesel::QueryableByName;
use diesel::sql_types::BigInt;
use diesel_advisory::prelude::*;
use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;

use crate::diesel_paths::{Bb8, k, pg_advisory_lock, pg_advisory_unlock};

use crate::report::Figure;
use crate::{Opts, ops, ops_fig, order};

pub(crate) async fn contention_bb8(url: &str, o: Opts) -> Vec<Figure> {
    use diesel::sql_types::Text;
    use diesel_async::RunQueryDsl;
    #[derive(QueryableByName)]
    struct V {
        #[diesel(sql_type = BigInt)]
        value: i64,
    }
    async fn rmw(c: &mut AsyncPgConnection, id: &str) {
        let v: V = diesel::sql_query("SELECT value FROM advisory_test_counters WHERE id = $1")
            .bind::<Text, _>(id)
            .get_result(c)
            .await
            .unwrap();
        diesel::sql_query("UPDATE advisory_test_counters SET value = $2 WHERE id = $1")
            .bind::<Text, _>(id)
            .bind::<BigInt, _>(v.value + 1)
            .execute(c)
            .await
            .unwrap();
    }
    let pool: Bb8 = bb8::Pool::builder()
        .max_size(o.tasks as u32 + 1)
        .build(AsyncDieselConnectionManager::new(url))
        .await
        .unwrap();
    let (mut ours, mut raw) = (vec![], vec![]);
    for rep in 0..o.reps {
        for use_ours in order(rep, 2).map(|v| v == 0) {
            let key = advisory_tests::unique_key();
            let id = advisory_tests::unique_name("bench-bb8");
            diesel::sql_query("INSERT INTO advisory_test_counters (id, value) VALUES ($1, 0)")
                .bind::<Text, _>(&id)
                .execute(&mut pool.get().await.unwrap())
                .await
                .unwrap();
            let t = Instant::now();
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..o.tasks {
                let (pool, id) = (pool.clone(), id.clone());
                set.spawn(async move {
                    for _ in 0..o.per_task {
                        if use_ours {
                            let mut g = pool.advisory_lock(key).await.unwrap();
                            rmw(&mut g, &id).await;
                            g.release().await.unwrap();
                        } else {
                            let mut c = pool.get().await.unwrap();
                            diesel::select(pg_advisory_lock(k(key)))
                                .execute(&mut *c)
                                .await
                                .unwrap();
                            rmw(&mut c, &id).await;
                            diesel::select(pg_advisory_unlock(k(key)))
                                .get_result::<bool>(&mut *c)
                                .await
                                .unwrap();
                        }
                    }
                });
            }
            set.join_all().await;
            let el = t.elapsed();
            let v: V = diesel::sql_query("SELECT value FROM advisory_test_counters WHERE id = $1")
                .bind::<Text, _>(&id)
                .get_result(&mut pool.get().await.unwrap())
                .await
                .unwrap();
            assert_eq!(
                v.value as usize,
                o.tasks * o.per_task,
                "lost update under the lock"
            );
            let r = ops(o.tasks * o.per_task, el);
            if use_ours { ours.push(r) } else { raw.push(r) }
        }
    }
    let mut f = ops_fig("contention", "", ours, "raw SQL, same loop", raw);
    f.path = format!("diesel-async bb8 guard ({} tasks, rmw)", o.tasks);
    f.note = "final value checked".into();
    vec![f]
}
