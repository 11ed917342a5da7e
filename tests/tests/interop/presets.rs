//! The presets against the server: their SQL twins, and sqlx's own `PgAdvisoryLock`.

use std::time::Duration;

use advisory_common::{Key, KeySpace, Namespace, Preset};
use advisory_tests::{db, granted, unique_name, wait_until};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer};

use crate::schema::admin;

#[derive(QueryableByName)]
struct Big {
    #[diesel(sql_type = BigInt)]
    key: i64,
}

#[derive(QueryableByName)]
struct Pair {
    #[diesel(sql_type = Integer)]
    key1: i32,
    #[diesel(sql_type = Integer)]
    key2: i32,
}

fn run(conn: &mut PgConnection, sql: &str, space: KeySpace) -> Key {
    match space {
        KeySpace::BigInt => {
            Key::BigInt(diesel::sql_query(sql).get_result::<Big>(conn).unwrap().key)
        }
        KeySpace::Pair => {
            let p = diesel::sql_query(sql).get_result::<Pair>(conn).unwrap();
            Key::Pair(p.key1, p.key2)
        }
    }
}

const NAMES: &[&str] = &[
    "",
    "orders:42",
    "42",
    "it's",
    "a''b'",
    "back\\slash",
    "héllo wörld ✓",
    "test-lock",
    "0000002a,ffffffff",
];

/// Every SQL twin, run on the server, yields exactly the key Rust derives (names with quotes,
/// backslashes and non-ASCII included); at least the five plain-SQL presets have one.
#[test]
fn sql_twins_compute_the_same_keys_on_the_server() {
    let mut conn = admin();
    let mut with_sql = Vec::new();
    for preset in Preset::ALL {
        for name in NAMES {
            let want = preset.key(name);
            if let Some(sql) = preset.sql(name) {
                assert_eq!(
                    run(&mut conn, &sql, want.space()),
                    want,
                    "{preset} {name:?}: {sql}"
                );
                if !with_sql.contains(preset) {
                    with_sql.push(*preset);
                }
            }
        }
    }
    for p in [
        Preset::Default,
        Preset::Sqlx,
        Preset::DjangoPglock,
        Preset::NodeAdvisoryLock,
        Preset::NodeAdvisoryLock1_0,
    ] {
        assert!(with_sql.contains(&p), "{p} has no SQL twin");
    }
    for ns in ["", "billing", "o'brien", "ünï"] {
        let ns = Namespace::new(ns);
        for name in NAMES {
            let sql = ns.sql(name).unwrap();
            assert_eq!(
                run(&mut conn, &sql, KeySpace::BigInt),
                ns.key(name),
                "{sql}"
            );
        }
    }
}

/// sqlx's `PgAdvisoryLock::new(name)` holds exactly `Preset::Sqlx.key(name)`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlx_pg_advisory_lock_is_seen_under_the_sqlx_preset() {
    use sqlx::Connection;
    let name = unique_name("sqlx-native");
    let key = Preset::Sqlx.key(&name);
    let conn = sqlx::PgConnection::connect(db().url()).await.unwrap();
    let lock = sqlx::postgres::PgAdvisoryLock::new(name.clone());
    let guard = lock.acquire(conn).await.unwrap();
    let rows = tokio::task::spawn_blocking(move || {
        wait_until(&[key], Duration::from_secs(10), "sqlx's hold", |r| {
            r.iter().any(|l| l.granted)
        })
    })
    .await
    .unwrap();
    assert_eq!(rows.len(), 1);
    assert!(granted(Key::name(&name)).is_empty());
    guard.release_now().await.unwrap();
}
