//! The diesel side of the README: concurrent read-then-INSERT-or-UPDATE on one primary key of
//! `advisory_test_counters`, serialized by an advisory lock.
//!
//! Each worker thread runs `conn.transaction(..)` and, inside it, takes a transaction-scope lock
//! (`xact_lock`) on the counter's id, reads the row, and INSERTs it (first time) or UPDATEs it
//! (`value + 1`). Without the lock two workers can both read "no row" and both INSERT (duplicate
//! key), or both read N and both write N + 1 (lost update). With it, the final value equals the
//! number of increments. Half of the workers use an r2d2 pool guard (session lock held across the
//! transaction) instead, to show both styles.
//!
//! `cargo run -p advisory-tests --example diesel_race` (uses `DATABASE_URL` if set, else a
//! throwaway server). Exits non-zero on any anomaly.

use std::process::ExitCode;

use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};
use diesel::sql_types::{BigInt, Text};
use diesel_advisory::prelude::*;

const WORKERS: usize = 8;
const INCREMENTS: usize = 50;

#[derive(QueryableByName)]
struct Value {
    #[diesel(sql_type = BigInt)]
    value: i64,
}

fn increment(conn: &mut PgConnection, id: &str) -> QueryResult<()> {
    let current = diesel::sql_query("SELECT value FROM advisory_test_counters WHERE id = $1")
        .bind::<Text, _>(id)
        .get_result::<Value>(conn)
        .optional()?;
    match current {
        None => diesel::sql_query("INSERT INTO advisory_test_counters (id, value) VALUES ($1, 1)")
            .bind::<Text, _>(id)
            .execute(conn)?,
        Some(v) => diesel::sql_query("UPDATE advisory_test_counters SET value = $2 WHERE id = $1")
            .bind::<Text, _>(id)
            .bind::<BigInt, _>(v.value + 1)
            .execute(conn)?,
    };
    Ok(())
}

fn main() -> ExitCode {
    let url = std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| advisory_tests::db().url().to_owned());
    let pool = Pool::builder()
        .max_size(WORKERS as u32)
        .build(ConnectionManager::<PgConnection>::new(url))
        .expect("pool");
    let id = format!("diesel-race-{}", std::process::id());

    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (pool, id) = (pool.clone(), id.clone());
            std::thread::spawn(move || -> Result<(), diesel_advisory::Error> {
                for _ in 0..INCREMENTS {
                    if w % 2 == 0 {
                        // transaction-scope lock, released by COMMIT
                        let mut conn = pool
                            .get()
                            .map_err(|e| diesel_advisory::Error::Pool(Box::new(e)))?;
                        conn.transaction::<_, diesel::result::Error, _>(|conn| {
                            conn.xact_lock(id.as_str())?;
                            increment(conn, &id)
                        })?;
                    } else {
                        // session lock owned by an r2d2 guard, held across the transaction
                        let mut guard = pool.advisory_lock(id.as_str())?;
                        guard.transaction(|conn| increment(conn, &id))?;
                        guard.release()?;
                    }
                }
                Ok(())
            })
        })
        .collect();
    let mut failed = false;
    for w in workers {
        if let Err(e) = w.join().expect("worker panicked") {
            eprintln!("worker failed: {e}");
            failed = true;
        }
    }
    let mut conn = pool.get().expect("checkout");
    let value = diesel::sql_query("SELECT value FROM advisory_test_counters WHERE id = $1")
        .bind::<Text, _>(&id)
        .get_result::<Value>(&mut conn)
        .map(|v| v.value)
        .unwrap_or(-1);
    let expected = (WORKERS * INCREMENTS) as i64;
    println!(
        "{WORKERS} workers x {INCREMENTS} read-then-INSERT-or-UPDATE under an advisory lock: value = {value}, expected {expected}"
    );
    if failed || value != expected {
        eprintln!("ANOMALY: lost updates or failed workers");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
