//! The same key string means the same lock in diesel-advisory and sqlx: `Key::name(s)` on both
//! sides. (The sqlx side uses raw SQL so this test does not depend on sqlx-advisory's API.)

use advisory_common::Key;
use advisory_tests::{assert_no_locks, db, granted, unique_name};
use diesel::prelude::*;
use diesel_advisory::prelude::*;
use std::time::Duration;

async fn sqlx_try(conn: &mut sqlx::PgConnection, name: &str) -> bool {
    let advisory_common::KeyValue::BigInt(k) = Key::name(name).value() else {
        unreachable!("Key::name is in the bigint space")
    };
    sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
        .bind(k)
        .fetch_one(conn)
        .await
        .unwrap()
}

async fn sqlx_unlock(conn: &mut sqlx::PgConnection, name: &str) {
    let advisory_common::KeyValue::BigInt(k) = Key::name(name).value() else {
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

/// An error about a key derived from a name shows the name (and the number PostgreSQL sees), in
/// both adapters, whether the name came as `&str`, `Key::name` or a preset; a key given as a number
/// shows the number only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_show_the_name_a_key_came_from() {
    use sqlx::Connection;
    use sqlx_advisory::prelude::*;
    let name = unique_name("labelled");
    let number = Key::name(&name).unlabeled();
    let mut holder = sqlx::PgConnection::connect(db().url()).await.unwrap();
    let held = holder.advisory_lock(name.as_str()).await.unwrap();

    let mut sq = sqlx::PgConnection::connect(db().url()).await.unwrap();
    let short = Duration::from_millis(20);
    let e = sq
        .advisory_lock_timeout(name.as_str(), short)
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains(&format!("\"{name}\"")) && text.contains(&number.to_string()),
        "{text}"
    );
    let e = sq.advisory_lock_timeout(number, short).await.unwrap_err();
    assert!(!e.to_string().contains(&name), "{e}");
    let preset = advisory_common::Preset::Default.key(&name);
    let e = sq.advisory_lock_timeout(preset, short).await.unwrap_err();
    assert!(e.to_string().contains(&name), "{e}");

    let url = db().url().to_owned();
    let (name2, number2) = (name.clone(), number);
    let text = tokio::task::spawn_blocking(move || {
        let mut c = PgConnection::establish(&url).unwrap();
        let named = c
            .advisory_lock_timeout(Key::name(&name2), short)
            .unwrap_err()
            .to_string();
        let plain = c
            .advisory_lock_timeout(number2, short)
            .unwrap_err()
            .to_string();
        (named, plain)
    })
    .await
    .unwrap();
    assert!(
        text.0.contains(&format!("\"{name}\"")) && text.0.contains(&number.to_string()),
        "{}",
        text.0
    );
    assert!(!text.1.contains(&name), "{}", text.1);
    held.release().await.unwrap();
    assert_no_locks(&[number], Duration::from_secs(5));
}

/// The same server answer is the same `Error` variant with the same `kind()` in every adapter (one
/// enum definition in common): a waiting acquire stopped by a `lock_timeout` the application set
/// itself is `Database` (not the typed `Timeout`, which only the `_timeout` calls return) whose
/// `kind()` is `Timeout`; an error that is not a lock failure has no kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_server_answer_is_the_same_error_in_every_adapter() {
    use advisory_common::ErrorKind;
    use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
    use sqlx::Connection;
    use sqlx_advisory::prelude::*;
    let key = Key::name(unique_name("same-answer"));
    let mut holder = sqlx::PgConnection::connect(db().url()).await.unwrap();
    let held = holder.advisory_lock(key).await.unwrap();
    const SET: &str = "SET lock_timeout = '30ms'";

    let mut sq = sqlx::PgConnection::connect(db().url()).await.unwrap();
    sqlx::raw_sql(SET).execute(&mut sq).await.unwrap();
    let e = sq.advisory_lock(key).await.unwrap_err();
    assert!(matches!(e, sqlx_advisory::Error::Database(_)), "{e:?}");
    assert_eq!(e.kind(), Some(ErrorKind::Timeout), "sqlx: {e:?}");

    let mut da = AsyncPgConnection::establish(db().url()).await.unwrap();
    da.batch_execute(SET).await.unwrap();
    let e = da.advisory_lock(key).await.unwrap_err();
    assert!(matches!(e, diesel_advisory::Error::Database(_)), "{e:?}");
    assert_eq!(e.kind(), Some(ErrorKind::Timeout), "diesel-async: {e:?}");

    let url = db().url().to_owned();
    let (e, other) = tokio::task::spawn_blocking(move || {
        let mut c = PgConnection::establish(&url).unwrap();
        diesel::connection::SimpleConnection::batch_execute(&mut c, SET).unwrap();
        let e = c.advisory_lock(key).unwrap_err();
        let other = diesel_advisory::Error::from(
            diesel::sql_query("SELECT 1/0").execute(&mut c).unwrap_err(),
        );
        (e, other)
    })
    .await
    .unwrap();
    assert!(matches!(e, diesel_advisory::Error::Database(_)), "{e:?}");
    assert_eq!(e.kind(), Some(ErrorKind::Timeout), "diesel: {e:?}");
    assert!(
        matches!(other, diesel_advisory::Error::Database(_)),
        "{other:?}"
    );
    assert_eq!(other.kind(), None, "division by zero is no lock failure");
    let other = sqlx_advisory::Error::from(
        sqlx::query("SELECT 1/0")
            .execute(&mut sq)
            .await
            .unwrap_err(),
    );
    assert_eq!(other.kind(), None);

    held.release().await.unwrap();
    assert_no_locks(&[key], Duration::from_secs(5));
}
