//! The race advisory locks exist for: N tasks each doing read-then-INSERT-or-UPDATE on one primary
//! key. Without a lock, concurrent "no row yet" reads both INSERT (duplicate-key errors) and
//! concurrent reads of the same value both write value + 1 (lost updates). With
//! `pool.advisory_lock(key)` around each read-modify-write, neither happens.
//!
//! ```sh
//! cargo run -p sqlx-advisory --example sqlx_insert_update_race
//! ```
//!
//! Uses `DATABASE_URL` if set (any database the role can create a table in; the example creates
//! `advisory_example_counters` if it is missing, and drops it again if it created it), otherwise a
//! throwaway PostgreSQL from the installed server binaries. Exits non-zero if the locked run shows
//! any anomaly.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use sqlx::{PgConnection, PgPool};
use sqlx_advisory::prelude::*;

const TASKS: usize = 16;
/// Each round starts with no row for a fresh primary key, so every round has an INSERT race.
const ROUNDS: usize = 6;
const INCREMENTS: usize = 4;

#[derive(Default, Debug)]
struct Outcome {
    written: u64,
    duplicate_key: u64,
    other_errors: u64,
}

/// One read-modify-write: read the counter, INSERT 1 if there is no row, else UPDATE to read + 1.
/// The short pause stands for the application's work between the read and the write.
async fn read_then_write(conn: &mut PgConnection, id: &str) -> Result<(), sqlx::Error> {
    let current: Option<i64> =
        sqlx::query_scalar("SELECT value FROM advisory_example_counters WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
    tokio::time::sleep(Duration::from_micros(500)).await;
    match current {
        None => {
            sqlx::query("INSERT INTO advisory_example_counters (id, value) VALUES ($1, 1)")
                .bind(id)
                .execute(&mut *conn)
                .await?;
        }
        Some(v) => {
            sqlx::query("UPDATE advisory_example_counters SET value = $2 WHERE id = $1")
                .bind(id)
                .bind(v + 1)
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}

/// One round: every task starts at once (barrier), each does `INCREMENTS` read-modify-writes of
/// the row `id`. Returns the outcome and the row's final value.
async fn round(pool: &PgPool, id: &str, locked: bool) -> Result<(Outcome, i64), sqlx::Error> {
    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (pool, id, barrier) = (pool.clone(), id.to_owned(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Outcome::default();
            barrier.wait().await;
            for _ in 0..INCREMENTS {
                let res = if locked {
                    // the lock's key is the row's primary key, hashed (Key::name)
                    let mut guard = pool.advisory_lock(id.as_str()).await?;
                    let res = read_then_write(&mut guard, &id).await;
                    guard.release().await?;
                    res
                } else {
                    let mut conn = pool.acquire().await?;
                    read_then_write(&mut conn, &id).await
                };
                match res {
                    Ok(()) => out.written += 1,
                    Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                        out.duplicate_key += 1
                    }
                    Err(e) => {
                        eprintln!("  unexpected error: {e}");
                        out.other_errors += 1
                    }
                }
            }
            Ok::<_, sqlx_advisory::Error>(out)
        }));
    }
    let mut total = Outcome::default();
    for t in tasks {
        let o = t.await.expect("task panicked").map_err(sqlx::Error::from)?;
        total.written += o.written;
        total.duplicate_key += o.duplicate_key;
        total.other_errors += o.other_errors;
    }
    let value: i64 =
        sqlx::query_scalar("SELECT value FROM advisory_example_counters WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?
            .unwrap_or(0);
    sqlx::query("DELETE FROM advisory_example_counters WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    Ok((total, value))
}

/// `ROUNDS` rounds, each on a fresh primary key; outcomes and final values summed.
async fn run(pool: &PgPool, label: &str, locked: bool) -> Result<(Outcome, i64), sqlx::Error> {
    let mut total = Outcome::default();
    let mut value = 0;
    for round_no in 0..ROUNDS {
        let id = format!("{label}-{}-{round_no}", std::process::id());
        let (o, v) = round(pool, &id, locked).await?;
        total.written += o.written;
        total.duplicate_key += o.duplicate_key;
        total.other_errors += o.other_errors;
        value += v;
    }
    Ok((total, value))
}

fn report(label: &str, o: &Outcome, value: i64, took: Duration) -> bool {
    let attempts = (ROUNDS * TASKS * INCREMENTS) as u64;
    let lost = o.written as i64 - value;
    println!("{label} ({took:.2?}):");
    println!("  attempts                         {attempts}");
    println!("  duplicate-key errors (23505)     {}", o.duplicate_key);
    println!("  writes that reported success     {}", o.written);
    println!("  sum of the final counter values  {value}");
    println!("  lost updates (success - value)   {lost}");
    if o.other_errors > 0 {
        println!("  other errors                     {}", o.other_errors);
    }
    o.duplicate_key == 0 && lost == 0 && o.other_errors == 0 && value == attempts as i64
}

/// The example's table, created when missing. Returns whether this run created it (and so must
/// drop it at the end, leaving the database as it found it).
async fn create_table(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let exists: bool =
        sqlx::query_scalar("SELECT to_regclass('advisory_example_counters') IS NOT NULL")
            .fetch_one(pool)
            .await?;
    if !exists {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS advisory_example_counters (id text PRIMARY KEY, value bigint NOT NULL)",
        )
        .execute(pool)
        .await?;
    }
    Ok(!exists)
}

async fn demo(pool: &PgPool) -> Result<bool, Box<dyn std::error::Error>> {
    println!(
        "{ROUNDS} rounds; per round {TASKS} tasks x {INCREMENTS} read-then-INSERT-or-UPDATE on one new primary key\n"
    );
    let started = Instant::now();
    let (o, v) = run(pool, "race-unlocked", false).await?;
    let clean = report("without a lock", &o, v, started.elapsed());
    if clean {
        println!("  (no anomaly this time: the race is timing-dependent; run it again)");
    }
    let started = Instant::now();
    let (o, v) = run(pool, "race-locked", true).await?;
    Ok(report(
        "\nwith pool.advisory_lock(key)",
        &o,
        v,
        started.elapsed(),
    ))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // DATABASE_URL, or a throwaway cluster (blocking: it runs initdb)
    let url = tokio::task::spawn_blocking(advisory_harness::example_url).await?;
    let pool = PgPoolOptions::new()
        .max_connections(TASKS as u32 + 2)
        .connect(&url)
        .await?;
    let created = create_table(&pool).await?;
    let outcome = demo(&pool).await;
    if created {
        sqlx::query("DROP TABLE advisory_example_counters")
            .execute(&pool)
            .await?;
    }
    if !outcome? {
        eprintln!("\nFAIL: the locked run showed an anomaly");
        std::process::exit(1);
    }
    println!("\nOK: with the advisory lock every increment counted, no duplicate-key error");
    Ok(())
}
