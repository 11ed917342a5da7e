//! The README's diesel-async example, run as written:
//! `cargo run -p diesel-advisory --no-default-features --features bb8 --example diesel_async_quickstart`.
//! Uses `DATABASE_URL` when set (it creates nothing there), else a throwaway PostgreSQL.

// README:begin
use diesel_advisory::prelude::*;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::bb8::Pool;
use diesel_async::{AsyncConnection, AsyncPgConnection};

async fn quickstart(database_url: &str) -> Result<(), Box<dyn std::error::Error>> {
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(database_url);
    let pool = Pool::builder().build(manager).await?;

    // bb8: the guard owns the checkout ('static + Send); drop or release() unlocks.
    let guard = pool.advisory_lock("orders:42").await?;
    assert!(pool.try_advisory_lock("orders:42").await?.is_none()); // taken
    guard.release().await?;

    // Transaction lock inside diesel-async's transaction: released by COMMIT / ROLLBACK.
    let mut conn = pool.get().await?;
    conn.transaction::<_, diesel_advisory::Error, _>(async |conn| {
        conn.xact_lock((7, 42)).await?;
        // ... read-modify-write ...
        Ok(())
    })
    .await?;
    Ok(())
}
// README:end

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = tokio::task::spawn_blocking(advisory_harness::example_url).await?;
    quickstart(&url).await?;
    println!("diesel_async_quickstart: OK");
    Ok(())
}
