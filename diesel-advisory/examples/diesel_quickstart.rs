//! The README's diesel example, run as written:
//! `cargo run -p diesel-advisory --features r2d2 --example diesel_quickstart`.
//! Uses `DATABASE_URL` when set (it creates nothing there), else a throwaway PostgreSQL.

// README:begin
use std::time::Duration;

use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};
use diesel_advisory::prelude::*;

fn quickstart(database_url: &str) -> Result<(), Box<dyn std::error::Error>> {
    let mut conn = PgConnection::establish(database_url)?;

    // Session lock: the guard borrows the connection; drop or release() unlocks.
    let guard = conn.advisory_lock_timeout("orders:42", Duration::from_secs(5))?;
    guard.release()?;

    // Transaction lock inside diesel's transaction: released by COMMIT / ROLLBACK.
    conn.transaction(|conn| {
        conn.xact_lock((7, 42))?;
        // ... read-modify-write ...
        Ok::<_, diesel_advisory::Error>(())
    })?;

    // r2d2: the guard owns the checkout and returns it unlocked.
    let pool = Pool::builder().build(ConnectionManager::<PgConnection>::new(database_url))?;
    let guard = pool.advisory_lock(42_i64)?;
    assert!(pool.try_advisory_lock(42_i64)?.is_none()); // taken
    drop(guard);
    Ok(())
}
// README:end

fn main() -> Result<(), Box<dyn std::error::Error>> {
    quickstart(&advisory_harness::example_url())?;
    println!("diesel_quickstart: OK");
    Ok(())
}
