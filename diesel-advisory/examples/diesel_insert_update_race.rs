//! The race advisory locks exist for, with diesel: worker threads each doing read-then-INSERT-or-
//! UPDATE on one primary key. Without a lock, concurrent "no row yet" reads both INSERT
//! (duplicate-key errors) and concurrent reads of the same value both write value + 1 (lost
//! updates). With a lock on the row's key around each read-modify-write, neither happens.
//!
//! ```sh
//! cargo run -p diesel-advisory --features r2d2 --example diesel_insert_update_race
//! ```
//!
//! The locked run shows both styles: half of the workers take a transaction-scope lock
//! (`conn.xact_lock(key)` inside `conn.transaction(..)`, released by COMMIT), the other half hold a
//! session lock owned by an r2d2 guard (`pool.advisory_lock(key)`) across their transaction.
//!
//! Uses `DATABASE_URL` if set (any database the role can create a table in; the example creates
//! `advisory_example_counters` if it is missing, and drops it again if it created it), otherwise a
//! throwaway PostgreSQL from the installed server binaries. Exits non-zero if the locked run shows
//! any anomaly.

use std::process::ExitCode;
use std::sync::{Arc, Barrier};

use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};
use diesel::sql_types::{BigInt, Bool, Text};
use diesel_advisory::prelude::*;

type PgPool = Pool<ConnectionManager<PgConnection>>;

const WORKERS: usize = 8;
const ROUNDS: usize = 6;
const INCREMENTS: usize = 4;

#[derive(QueryableByName)]
struct Value {
    #[diesel(sql_type = BigInt)]
    value: i64,
}

#[derive(QueryableByName)]
struct Exists {
    #[diesel(sql_type = Bool)]
    exists: bool,
}

/// One read-modify-write: read the counter, INSERT 1 if there is no row, else UPDATE to read + 1.
/// The short pause stands for the application's work between the read and the write.
fn increment(conn: &mut PgConnection, id: &str) -> QueryResult<()> {
    let current = diesel::sql_query("SELECT value FROM advisory_example_counters WHERE id = $1")
        .bind::<Text, _>(id)
        .get_result::<Value>(conn)
        .optional()?;
    std::thread::sleep(std::time::Duration::from_micros(500));
    match current {
        None => {
            diesel::sql_query("INSERT INTO advisory_example_counters (id, value) VALUES ($1, 1)")
                .bind::<Text, _>(id)
                .execute(conn)?
        }
        Some(v) => {
            diesel::sql_query("UPDATE advisory_example_counters SET value = $2 WHERE id = $1")
                .bind::<Text, _>(id)
                .bind::<BigInt, _>(v.value + 1)
                .execute(conn)?
        }
    };
    Ok(())
}

/// One worker's increments. `Ok(true)`: written; `Ok(false)`: a duplicate-key error.
fn attempt(
    pool: &PgPool,
    id: &str,
    worker: usize,
    locked: bool,
) -> Result<bool, diesel_advisory::Error> {
    let res = if !locked {
        let mut conn = pool.get()?; // r2d2's error converts with `?`
        conn.transaction(|conn| increment(conn, id))
    } else if worker % 2 == 0 {
        // transaction-scope lock, released by COMMIT / ROLLBACK
        let mut conn = pool.get()?;
        conn.transaction(|conn| {
            conn.xact_lock(id)?; // diesel_advisory::Error converts into diesel's with `?`
            increment(conn, id)
        })
    } else {
        // session lock owned by an r2d2 guard, held across the transaction
        let mut guard = pool.advisory_lock(id)?;
        let res = guard.transaction(|conn| increment(conn, id));
        guard.release()?;
        res
    };
    match res {
        Ok(()) => Ok(true),
        Err(diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            _,
        )) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// `ROUNDS` rounds, each on a fresh primary key, all workers starting at once (barrier).
/// Returns (writes that succeeded, duplicate-key errors, sum of the final values).
fn run(
    pool: &PgPool,
    label: &str,
    locked: bool,
) -> Result<(u64, u64, i64), diesel_advisory::Error> {
    let (mut written, mut duplicates, mut value) = (0, 0, 0);
    for round in 0..ROUNDS {
        let id = format!("{label}-{}-{round}", std::process::id());
        let barrier = Arc::new(Barrier::new(WORKERS));
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                let (pool, id, barrier) = (pool.clone(), id.clone(), barrier.clone());
                std::thread::spawn(move || -> Result<(u64, u64), diesel_advisory::Error> {
                    barrier.wait();
                    let (mut ok, mut dup) = (0, 0);
                    for _ in 0..INCREMENTS {
                        if attempt(&pool, &id, w, locked)? {
                            ok += 1
                        } else {
                            dup += 1
                        }
                    }
                    Ok((ok, dup))
                })
            })
            .collect();
        for w in workers {
            let (ok, dup) = w.join().expect("worker panicked")?;
            written += ok;
            duplicates += dup;
        }
        let mut conn = pool.get()?;
        value += diesel::sql_query("SELECT value FROM advisory_example_counters WHERE id = $1")
            .bind::<Text, _>(&id)
            .get_result::<Value>(&mut conn)
            .optional()?
            .map_or(0, |v| v.value);
        diesel::sql_query("DELETE FROM advisory_example_counters WHERE id = $1")
            .bind::<Text, _>(&id)
            .execute(&mut conn)?;
    }
    Ok((written, duplicates, value))
}

fn report(label: &str, (written, duplicates, value): (u64, u64, i64)) -> bool {
    let attempts = (ROUNDS * WORKERS * INCREMENTS) as u64;
    println!("{label}:");
    println!("  attempts                         {attempts}");
    println!("  duplicate-key errors (23505)     {duplicates}");
    println!("  writes that reported success     {written}");
    println!("  sum of the final counter values  {value}");
    println!(
        "  lost updates (success - value)   {}",
        written as i64 - value
    );
    duplicates == 0 && written as i64 == value && value == attempts as i64
}

/// The example's table, created when missing. Returns whether this run created it (and so must
/// drop it at the end, leaving the database as it found it).
fn create_table(pool: &PgPool) -> Result<bool, diesel_advisory::Error> {
    let mut conn = pool.get()?;
    let exists =
        diesel::sql_query("SELECT to_regclass('advisory_example_counters') IS NOT NULL AS exists")
            .get_result::<Exists>(&mut conn)?
            .exists;
    if !exists {
        diesel::sql_query(
            "CREATE TABLE IF NOT EXISTS advisory_example_counters (id text PRIMARY KEY, value bigint NOT NULL)",
        )
        .execute(&mut conn)?;
    }
    Ok(!exists)
}

fn demo(pool: &PgPool) -> Result<bool, diesel_advisory::Error> {
    println!(
        "{ROUNDS} rounds; per round {WORKERS} threads x {INCREMENTS} read-then-INSERT-or-UPDATE on one new primary key\n"
    );
    if report("without a lock", run(pool, "race-unlocked", false)?) {
        println!("  (no anomaly this time: the race is timing-dependent; run it again)");
    }
    Ok(report(
        "\nwith an advisory lock on the key",
        run(pool, "race-locked", true)?,
    ))
}

fn main() -> Result<ExitCode, Box<dyn std::error::Error>> {
    // DATABASE_URL, or a throwaway cluster
    let url = advisory_harness::example_url();
    let pool = Pool::builder()
        .max_size(WORKERS as u32 + 1)
        .build(ConnectionManager::<PgConnection>::new(url))?;
    let created = create_table(&pool)?;
    let outcome = demo(&pool);
    if created {
        diesel::sql_query("DROP TABLE advisory_example_counters").execute(&mut pool.get()?)?;
    }
    if !outcome? {
        eprintln!("\nFAIL: the locked run showed an anomaly");
        return Ok(ExitCode::FAILURE);
    }
    println!("\nOK: with the advisory lock every increment counted, no duplicate-key error");
    Ok(ExitCode::SUCCESS)
}
