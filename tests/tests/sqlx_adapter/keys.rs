//! Issue 8: hostile key strings are only hashed (never spliced into SQL), and every key form
//! reaches `pg_locks` as the key the caller meant.

use advisory_common::Key;
use advisory_tests::{unique_i32, unique_name};
use sqlx::postgres::PgAdvisoryLock;
use sqlx_advisory::prelude::*;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_key_strings_are_just_hashed() {
    let p = pool(2).await;
    let salt = unique_name("hostile");
    let hostile = [
        "'".to_owned(),
        "'); SELECT pg_advisory_unlock_all(); --".to_owned(),
        "\"; DROP TABLE advisory_test_counters; --".to_owned(),
        "$1 $2 %s {} \\x00".to_owned(),
        "ключ 🔒 鍵 \u{FEFF}\u{10FFFF}".to_owned(),
        "x".repeat(1 << 20),
    ];
    for s in hostile {
        let s = format!("{s}{salt}"); // unique per test run
        let key = Key::name(&s);
        let mut g = p.advisory_lock(s.as_str()).await.unwrap();
        assert_eq!(g.key(), key);
        let rows = granted(key).await;
        assert_eq!(rows.len(), 1, "pg_locks shows the hashed key");
        assert!(p.try_advisory_lock(&s).await.unwrap().is_none());
        let mut c = conn().await;
        let t = c.try_advisory_lock_shared(s.clone()).await.unwrap();
        assert!(t.is_none());
        assert!(g.is_held().await.unwrap());
        g.release().await.unwrap();
        assert_no_locks(&[key], SOON).await;
    }
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM advisory_test_counters")
        .fetch_one(&p)
        .await
        .expect("the table is still there");
    assert!(n >= 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_form_reaches_pg_locks_and_sqlx_keys_interoperate() {
    let p = pool(2).await;
    let (a, b) = (unique_i32(), unique_i32());
    for key in [
        Key::BigInt(i64::MIN),
        Key::BigInt(i64::MAX),
        Key::Pair(a, b),
        Key::Pair(i32::MIN, b),
    ] {
        let g = p.advisory_lock(key).await.unwrap();
        assert_eq!(granted(key).await.len(), 1, "{key}");
        g.release().await.unwrap();
    }
    // Key::BigInt(1) and Key::Pair(0, 1) are different locks
    let g1 = p.advisory_lock(Key::Pair(a, 1)).await.unwrap();
    let g2 = p.try_advisory_lock(((a as i64) << 32) | 1).await.unwrap();
    assert!(g2.is_some());
    drop((g1, g2));

    // a lock taken with sqlx's own PgAdvisoryLock excludes ours under Key::sqlx
    let name = unique_name("sqlx-interop");
    let mut c = conn().await;
    let theirs = PgAdvisoryLock::new(&name).acquire(&mut c).await.unwrap();
    assert!(
        p.try_advisory_lock(Key::sqlx(&name))
            .await
            .unwrap()
            .is_none()
    );
    theirs.release_now().await.unwrap();
    let ours = p.try_advisory_lock(Key::sqlx(&name)).await.unwrap();
    assert!(ours.is_some());
}

/// Primary-key integer types are keys in the bigint space (`id: i32` locks what `id as i64`
/// locks), and every type a user meets is reachable from the adapter crates themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integer_ids_are_keys_and_user_facing_types_are_reexported() {
    let p = pool(2).await;
    let id: i32 = rand::random::<i32>();
    let g = p.advisory_lock(id).await.unwrap();
    assert_eq!(g.key(), sqlx_advisory::Key::BigInt(i64::from(id)));
    assert!(
        p.try_advisory_lock(i64::from(id)).await.unwrap().is_none(),
        "the i32 id and the same i64 are one lock"
    );
    g.release().await.unwrap();
    let small: u16 = 7;
    assert_eq!(
        sqlx_advisory::Key::from(small),
        sqlx_advisory::Key::BigInt(7)
    );
    assert_eq!(
        sqlx_advisory::Key::name(String::from("orders:42")),
        sqlx_advisory::Key::name("orders:42")
    );
    let kind: Option<sqlx_advisory::ErrorKind> = sqlx_advisory::Error::NotHeld {
        key: sqlx_advisory::Key::BigInt(1),
    }
    .kind();
    assert_eq!(kind, Some(sqlx_advisory::ErrorKind::NotHeld));
    assert_eq!(
        sqlx_advisory::Key::BigInt(1).space(),
        sqlx_advisory::KeySpace::BigInt
    );
    assert_eq!(
        diesel_advisory::Key::Pair(1, 2).space(),
        diesel_advisory::KeySpace::Pair
    );
    let _: Option<sqlx_advisory::TimeoutOutOfRange> = None;
    let _: Option<diesel_advisory::TimeoutOutOfRange> = None;
    let _: Option<diesel_advisory::ErrorKind> = None;
}
