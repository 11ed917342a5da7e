//! `advisory-common` against a real server: every statement runs, the SQL key function equals the
//! Rust derivation, pg_locks decoding round-trips, a held lock shows up in the `advisory_locks` view.

use std::time::Duration;

use advisory_common::{Key, KeySpace, KeyValue, LockMode, sql};
use advisory_tests::{db, granted, unique_i32, unique_key, wait_until};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Int4, Integer, Nullable, Text};

fn conn() -> PgConnection {
    PgConnection::establish(db().url()).expect("connect")
}

#[derive(QueryableByName, Debug)]
struct Locked {
    #[diesel(sql_type = Bool)]
    locked: bool,
}

#[derive(QueryableByName, Debug)]
struct KeyRow {
    #[diesel(sql_type = BigInt)]
    k: i64,
}

fn strings() -> Vec<String> {
    let mut v: Vec<String> = vec![
        String::new(),
        "a".into(),
        "orders:42".into(),
        "ключ 🔒 鍵".into(),
        "'; DROP TABLE advisory_test_counters; --".into(),
        "x".repeat(1 << 20),
        "\u{10FFFF}\u{FEFF}tab\tnewline\n".into(),
    ];
    for i in 0..1000 {
        let len = (i * 7919) % 97;
        let s: String = (0..len)
            .map(|j| char::from_u32(((i * 31 + j * 17) % 0xD7FF + 1) as u32).unwrap())
            .collect();
        v.push(s);
    }
    v
}

#[test]
fn advisory_key_sql_function_equals_key_name() {
    let mut c = conn();
    let inputs = strings();
    assert!(inputs.len() >= 1000);
    for chunk in inputs.chunks(200) {
        // one round trip per chunk: unnest an array of texts, keep the order
        let rows: Vec<KeyRow> = diesel::sql_query(
            "SELECT advisory_key(t) AS k FROM unnest($1::text[]) WITH ORDINALITY AS u(t, n) ORDER BY n",
        )
        .bind::<diesel::sql_types::Array<Text>, _>(chunk)
        .load(&mut c)
        .unwrap();
        assert_eq!(rows.len(), chunk.len());
        for (s, r) in chunk.iter().zip(rows) {
            assert_eq!(
                Key::BigInt(r.k),
                Key::name(s),
                "advisory_key({:?})",
                &s[..s.len().min(40)]
            );
        }
    }
}

#[test]
fn published_test_vectors() {
    // Vectors computed outside Rust: python3 hashlib (sha256 / sha1, first 8 bytes, big-endian signed).
    for (s, name, pgl) in [
        ("abc", -5010229573455851542_i64, -6225876607022235286_i64),
        ("", -2039914840885289964, -2721964255587120371),
        ("orders:42", -8476019149258318077, 1127154695574559308),
        ("ключ 🔒", -5906219821523576194, -8466344130044337816),
    ] {
        assert_eq!(Key::name(s), Key::BigInt(name), "{s:?}");
        assert_eq!(Key::postgresql_lock(s), Key::BigInt(pgl), "{s:?}");
    }
}

#[test]
fn sqlx_preset_equals_sqlx_itself() {
    for s in ["", "my-lock", "orders:42", "ключ 🔒", &"y".repeat(10_000)] {
        let theirs = sqlx::postgres::PgAdvisoryLock::new(s);
        let ours = match theirs.key() {
            sqlx::postgres::PgAdvisoryLockKey::BigInt(k) => Key::BigInt(*k),
            sqlx::postgres::PgAdvisoryLockKey::IntPair(a, b) => Key::Pair(*a, *b),
            other => panic!("unexpected sqlx key {other:?}"),
        };
        println!("Key::sqlx({:?}) = {ours:?}", &s[..s.len().min(20)]);
        assert_eq!(Key::sqlx(s), ours, "{s:?}");
    }
}

/// Bind the key (and timeout) to a statement by parameter count.
fn run_statement(c: &mut PgConnection, text: &str, nparams: usize, key: Key) -> QueryResult<usize> {
    let q = diesel::sql_query(text);
    match (key.value(), nparams) {
        (_, 0) => q.execute(c),
        (KeyValue::BigInt(k), 1) => q.bind::<BigInt, _>(k).execute(c),
        (KeyValue::BigInt(k), 2) => q.bind::<BigInt, _>(k).bind::<Integer, _>(500).execute(c),
        (KeyValue::Pair(a, b), 2) => q.bind::<Integer, _>(a).bind::<Integer, _>(b).execute(c),
        (KeyValue::Pair(a, b), 3) => q
            .bind::<Integer, _>(a)
            .bind::<Integer, _>(b)
            .bind::<Integer, _>(500)
            .execute(c),
        other => panic!("unexpected parameter count {other:?} for {text}"),
    }
}

#[test]
fn every_builder_statement_executes() {
    let mut c = conn();
    let big = unique_key();
    let pair = Key::Pair(unique_i32(), unique_i32());
    for (text, n) in sql::all_statements() {
        let key = if text.contains("$2") && !text.contains("$3") && !text.contains("lock_timeout")
            || text.contains("$3")
        {
            pair
        } else {
            big
        };
        // transaction-scope statements run inside a transaction, like the adapters use them
        let r = c.transaction(|c| run_statement(c, &text, n, key));
        assert!(r.is_ok(), "{text}: {r:?}");
    }
    for scope in sql::SCOPES {
        for mode in sql::MODES {
            let b = sql::savepoint_batch(scope, mode, pair, 100);
            c.transaction(|c| c.batch_execute(&b))
                .unwrap_or_else(|e| panic!("{b}: {e}"));
        }
    }
    c.batch_execute(sql::UNLOCK_ALL).unwrap();
    // SAVEPOINT_ROLLBACK is valid after a failed attempt
    c.transaction::<_, diesel::result::Error, _>(|c| {
        c.batch_execute("SAVEPOINT advisory_lock_attempt; SELECT 1/0")
            .unwrap_err();
        c.batch_execute(sql::SAVEPOINT_ROLLBACK)?;
        c.batch_execute("SELECT 1")
    })
    .unwrap();
}

#[test]
fn pg_locks_decoding_round_trips() {
    let mut c = conn();
    let keys = [
        Key::BigInt(i64::MIN),
        Key::BigInt(i64::MAX),
        Key::BigInt(-1),
        Key::BigInt(0),
        unique_key(),
        Key::BigInt(-(rand::random::<i64>().abs() / 2) - 1),
        Key::Pair(i32::MIN, i32::MAX),
        Key::Pair(-1, 0),
        Key::Pair(unique_i32(), unique_i32()),
    ];
    let pid: i32 = diesel::select(diesel::dsl::sql::<Int4>("pg_backend_pid()"))
        .get_result(&mut c)
        .unwrap();
    for key in keys {
        let (text, n) = (
            sql::lock_sql(
                sql::Scope::Session,
                sql::Mode::Shared,
                sql::Wait::Try,
                key.space(),
            ),
            0,
        );
        let _ = n;
        let r: Locked = match key.value() {
            KeyValue::BigInt(k) => diesel::sql_query(text)
                .bind::<BigInt, _>(k)
                .get_result(&mut c),
            KeyValue::Pair(a, b) => diesel::sql_query(text)
                .bind::<Integer, _>(a)
                .bind::<Integer, _>(b)
                .get_result(&mut c),
        }
        .unwrap();
        assert!(r.locked);
        let held = granted(key);
        assert!(
            held.iter()
                .any(|l| l.pid == pid && l.mode == LockMode::Shared),
            "{key} not decoded from pg_locks: {held:?}"
        );
    }
    c.batch_execute(sql::UNLOCK_ALL).unwrap();
    wait_until(&keys, Duration::from_secs(5), "all released", |rows| {
        rows.iter().all(|l| l.pid != pid)
    });
}

#[derive(QueryableByName, Debug)]
struct ViewRow {
    #[diesel(sql_type = Nullable<BigInt>)]
    key_bigint: Option<i64>,
    #[diesel(sql_type = Nullable<Int4>)]
    key1: Option<i32>,
    #[diesel(sql_type = Nullable<Int4>)]
    key2: Option<i32>,
    #[diesel(sql_type = Text)]
    mode: String,
    #[diesel(sql_type = Bool)]
    granted: bool,
}

#[test]
fn held_lock_shows_in_advisory_locks_view() {
    let mut holder = conn();
    let mut viewer = conn();
    let name = advisory_tests::unique_name("view");
    let pair = (i32::MIN + 3, -17);
    diesel::sql_query("SELECT pg_advisory_lock(advisory_key($1))")
        .bind::<Text, _>(&name)
        .execute(&mut holder)
        .unwrap();
    diesel::sql_query("SELECT pg_advisory_lock_shared($1, $2)")
        .bind::<Integer, _>(pair.0)
        .bind::<Integer, _>(pair.1)
        .execute(&mut holder)
        .unwrap();
    let KeyValue::BigInt(k) = Key::name(&name).value() else {
        unreachable!()
    };
    let rows: Vec<ViewRow> = diesel::sql_query(
        "SELECT key_bigint, key1, key2, mode, granted FROM advisory_locks WHERE pid = $1",
    )
    .bind::<Int4, _>(backend_pid(&mut holder))
    .load(&mut viewer)
    .unwrap();
    assert!(
        rows.iter()
            .any(|r| r.key_bigint == Some(k) && r.mode == "exclusive" && r.granted),
        "{rows:?}"
    );
    assert!(
        rows.iter()
            .any(|r| r.key1 == Some(pair.0) && r.key2 == Some(pair.1) && r.mode == "shared"),
        "{rows:?}"
    );
    assert_eq!(KeySpace::BigInt, Key::name(&name).space());
}

fn backend_pid(c: &mut PgConnection) -> i32 {
    diesel::select(diesel::dsl::sql::<Int4>("pg_backend_pid()"))
        .get_result(c)
        .unwrap()
}

#[test]
fn timed_statement_times_out_and_restores_lock_timeout() {
    #[derive(QueryableByName)]
    struct Lt {
        #[diesel(sql_type = Text)]
        lock_timeout: String,
    }
    let mut holder = conn();
    let mut waiter = conn();
    let key = unique_key();
    let KeyValue::BigInt(k) = key.value() else {
        unreachable!()
    };
    diesel::sql_query("SELECT pg_advisory_lock($1)")
        .bind::<BigInt, _>(k)
        .execute(&mut holder)
        .unwrap();
    waiter.batch_execute("SET lock_timeout = '7s'").unwrap();
    let text = sql::lock_sql(
        sql::Scope::Session,
        sql::Mode::Exclusive,
        sql::Wait::Timeout,
        KeySpace::BigInt,
    );
    let t0 = std::time::Instant::now();
    let err = diesel::sql_query(text)
        .bind::<BigInt, _>(k)
        .bind::<Integer, _>(150)
        .execute(&mut waiter)
        .unwrap_err();
    let waited = t0.elapsed();
    let code = match &err {
        diesel::result::Error::DatabaseError(_, info) => info.message().to_owned(),
        e => e.to_string(),
    };
    assert!(code.contains("lock timeout"), "{err:?}");
    assert!(
        waited >= Duration::from_millis(140) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    let lt: Lt = diesel::sql_query(sql::SHOW_LOCK_TIMEOUT)
        .get_result(&mut waiter)
        .unwrap();
    assert_eq!(lt.lock_timeout, "7s");
    // inside a transaction, on success, the previous (transaction-local) value is back
    diesel::sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<BigInt, _>(k)
        .execute(&mut holder)
        .unwrap();
    waiter
        .transaction::<_, diesel::result::Error, _>(|w| {
            w.batch_execute("SET LOCAL lock_timeout = '3s'")?;
            diesel::sql_query(text)
                .bind::<BigInt, _>(k)
                .bind::<Integer, _>(150)
                .execute(w)?;
            let lt: Lt = diesel::sql_query(sql::SHOW_LOCK_TIMEOUT).get_result(w)?;
            assert_eq!(lt.lock_timeout, "3s");
            Ok(())
        })
        .unwrap();
    let lt: Lt = diesel::sql_query(sql::SHOW_LOCK_TIMEOUT)
        .get_result(&mut waiter)
        .unwrap();
    assert_eq!(lt.lock_timeout, "7s");
}

/// The undo of a cancelled acquire releases exactly one hold when the session holds the key in
/// that mode (re-entrant holds: one of two goes), and nothing (no WARNING) when it does not.
#[test]
fn unlock_if_held_releases_one_hold_or_nothing() {
    let mut c = conn();
    for key in [
        unique_key(),
        Key::BigInt(-(unique_i32().unsigned_abs() as i64) * 1_000_003),
        Key::Pair(unique_i32(), unique_i32()),
    ] {
        for mode in [sql::Mode::Exclusive, sql::Mode::Shared] {
            let lock = match (mode, key.value()) {
                (sql::Mode::Exclusive, KeyValue::BigInt(k)) => {
                    format!("SELECT pg_advisory_lock({k})")
                }
                (sql::Mode::Shared, KeyValue::BigInt(k)) => {
                    format!("SELECT pg_advisory_lock_shared({k})")
                }
                (sql::Mode::Exclusive, KeyValue::Pair(a, b)) => {
                    format!("SELECT pg_advisory_lock({a}, {b})")
                }
                (sql::Mode::Shared, KeyValue::Pair(a, b)) => {
                    format!("SELECT pg_advisory_lock_shared({a}, {b})")
                }
            };
            let undo = sql::unlock_if_held_literal(mode, key);
            c.batch_execute(&undo).unwrap(); // not held: nothing
            assert!(granted(key).is_empty());
            c.batch_execute(&lock).unwrap();
            c.batch_execute(&lock).unwrap();
            c.batch_execute(&undo).unwrap();
            assert_eq!(granted(key).len(), 1, "{mode:?} {key}: one hold left");
            c.batch_execute(&undo).unwrap();
            assert!(granted(key).is_empty(), "{mode:?} {key}: released");
        }
    }
}
