//! The same key string means the same lock in diesel-advisory and sqlx: `Key::name(s)` on both
//! sides. (The sqlx side uses raw SQL so this test does not depend on sqlx-advisory's API.)

use advisory_common::Key;
use advisory_tests::{assert_no_locks, db, granted, unique_name};
use diesel::prelude::*;
use diesel_advisory::prelude::*;
use std::time::Duration;

async fn sqlx_try(conn: &mut sqlx::PgConnection, name: &str) -> bool {
    let Key::BigInt(k) = Key::name(name) else {
        unreachable!("Key::name is in the bigint space")
    };
    sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
        .bind(k)
        .fetch_one(conn)
        .await
        .unwrap()
}

async fn sqlx_unlock(conn: &mut sqlx::PgConnection, name: &str) {
    let Key::BigInt(k) = Key::name(name) else {
        unreachable!()
    };
    assert!(
        sqlx::query_scalar::<_, bool>("SELECT pg_advisory_unlock($1)")
            .bind(k)
            .fetch_one(conn)
            .await
            .unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diesel_lock_is_seen_by_sqlx_and_vice_versa() {
    use sqlx::Connection;
    let name = unique_name("cross");
    let mut sq = sqlx::PgConnection::connect(db().url()).await.unwrap();

    // diesel sync holds -> sqlx cannot take it
    let mut d = PgConnection::establish(db().url()).unwrap();
    let g = d.advisory_lock(name.as_str()).unwrap();
    assert_eq!(granted(Key::name(&name)).len(), 1);
    assert!(!sqlx_try(&mut sq, &name).await);
    g.release().unwrap();
    // sqlx holds -> diesel (sync and async) cannot take it
    assert!(sqlx_try(&mut sq, &name).await);
    assert!(d.try_advisory_lock(name.as_str()).unwrap().is_none());
    let mut a =
        <diesel_async::AsyncPgConnection as diesel_async::AsyncConnection>::establish(db().url())
            .await
            .unwrap();
    assert!(a.try_advisory_lock(&name).await.unwrap().is_none());
    sqlx_unlock(&mut sq, &name).await;
    // diesel-async holds -> sqlx cannot take it
    let g = a.advisory_lock(name.clone()).await.unwrap();
    assert!(!sqlx_try(&mut sq, &name).await);
    g.release().await.unwrap();
    assert_no_locks(&[Key::name(&name)], Duration::from_secs(5));
}
