//! The README's sqlx example, run as written: `cargo run -p sqlx-advisory --example sqlx_quickstart`.
//! Uses `DATABASE_URL` when set (it creates nothing there), else a throwaway PostgreSQL.

// README:begin
use std::time::Duration;

use sqlx_advisory::prelude::*;

async fn quickstart(database_url: &str) -> Result<(), sqlx_advisory::Error> {
    let pool = sqlx::PgPool::connect(database_url).await?;

    // Session lock: the guard owns a pooled connection; drop or release() unlocks.
    let guard = pool.advisory_lock("orders:42").await?;
    assert!(pool.try_advisory_lock("orders:42").await?.is_none()); // taken
    guard.release().await?;

    // Wait at most 5 s (server-side lock_timeout); Err(Error::Timeout { .. }) otherwise.
    let _guard = pool
        .advisory_lock_timeout(42_i64, Duration::from_secs(5))
        .await?;

    // Transaction lock: released by COMMIT / ROLLBACK.
    let mut tx = pool.begin().await?;
    tx.xact_lock((7, 42)).await?;
    tx.commit().await?;
    Ok(())
}
// README:end

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = tokio::task::spawn_blocking(advisory_harness::example_url).await?;
    quickstart(&url).await?;
    println!("sqlx_quickstart: OK");
    Ok(())
}
