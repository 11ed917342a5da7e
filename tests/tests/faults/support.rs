//! Shared pieces of the fault suite: raw SQL on an independent session, summary lines.

use std::io::Write as _;
use std::time::{Duration, Instant};

use advisory_common::Key;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Int4};

/// One line of figures per scenario and path, written straight to stderr so `cargo test` shows it.
pub fn summary(scenario: &str, path: &str, figures: std::fmt::Arguments<'_>) {
    let figures = figures.to_string().replace(['\n', '\t'], " ");
    let line = format!("SUMMARY {scenario:<22} {path:<26} {}\n", figures.trim());
    let _ = std::io::stderr().write_all(line.as_bytes());
}

#[derive(QueryableByName)]
struct B {
    #[diesel(sql_type = Bool)]
    b: bool,
}

/// An independent sync session for raw SQL (killing backends, waiting on keys).
pub fn raw() -> PgConnection {
    PgConnection::establish(advisory_tests::db().url()).expect("raw session")
}

/// `pg_terminate_backend(pid)` from an independent session.
pub fn terminate(pid: i32) {
    let r: B = diesel::sql_query("SELECT pg_terminate_backend($1) AS b")
        .bind::<Int4, _>(pid)
        .get_result(&mut raw())
        .unwrap();
    assert!(r.b, "pg_terminate_backend({pid}) failed");
}

/// The pid of the one session holding `key`.
pub fn holder_pid(key: Key) -> i32 {
    let rows = advisory_tests::wait_until(&[key], Duration::from_secs(5), "a holder", |r| {
        r.iter().any(|l| l.granted)
    });
    rows.iter().find(|l| l.granted).unwrap().pid
}

fn big(key: Key) -> i64 {
    match key.value() {
        advisory_common::KeyValue::BigInt(k) => k,
        advisory_common::KeyValue::Pair(..) => panic!("bigint keys only here"),
    }
}

/// Start a raw waiter for `key` on its own thread; returns a handle yielding how long it waited
/// after `started` was signalled. The waiter releases the lock right away.
pub fn spawn_waiter(key: Key) -> std::thread::JoinHandle<Instant> {
    let mut c = raw();
    let h = std::thread::spawn(move || {
        diesel::sql_query("SELECT pg_advisory_lock($1)")
            .bind::<BigInt, _>(big(key))
            .execute(&mut c)
            .unwrap();
        let at = Instant::now();
        diesel::sql_query("SELECT pg_advisory_unlock($1)")
            .bind::<BigInt, _>(big(key))
            .execute(&mut c)
            .unwrap();
        at
    });
    advisory_tests::wait_until(&[key], Duration::from_secs(5), "the waiter queued", |r| {
        r.iter().any(|l| !l.granted)
    });
    h
}

/// Kill the backend holding `key` while a raw waiter queues for it; returns how long the waiter
/// needed to get the lock after the kill (asserted under 1 s).
pub fn kill_holder(path: &str, key: Key) -> Duration {
    let pid = holder_pid(key);
    let waiter = spawn_waiter(key);
    let t0 = Instant::now();
    terminate(pid);
    let got = waiter.join().unwrap();
    let waited = got.saturating_duration_since(t0);
    assert!(
        waited < Duration::from_secs(1),
        "{path}: waiter got the lock only after {waited:?}"
    );
    waited
}

/// Writers keep `a = b` with two separate statements; readers check it. Returns (reads, writes).
pub const RW_WRITE_A: &str = "UPDATE advisory_test_counters SET a = a + 1 WHERE id = $1";
/// Second half of a write.
pub const RW_WRITE_B: &str = "UPDATE advisory_test_counters SET b = b + 1 WHERE id = $1";
/// A reader's check.
pub const RW_READ: &str = "SELECT a, b FROM advisory_test_counters WHERE id = $1";
/// Read-modify-write: read.
pub const RMW_READ: &str = "SELECT value FROM advisory_test_counters WHERE id = $1";
/// Read-modify-write: write.
pub const RMW_WRITE: &str = "UPDATE advisory_test_counters SET value = $2 WHERE id = $1";
/// A fresh counter row.
pub const NEW_ROW: &str = "INSERT INTO advisory_test_counters (id, value) VALUES ($1, 0)";
