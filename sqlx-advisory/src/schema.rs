//! The SQL this project ships to users, installed from Rust: `advisory_key(text)` (the SQL twin
//! of [`Key::name`](crate::Key::name)) and the `advisory_locks` view. The text is
//! [`INSTALL`] / [`UNINSTALL`] (also `migrations/` in the repository, for sqlx-cli or psql).
//!
//! ```
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let database_url = advisory_harness::db().url();
//! let pool = sqlx::PgPool::connect(database_url).await?;
//! sqlx_advisory::schema::install(&pool).await?;
//! let key: i64 = sqlx::query_scalar("SELECT advisory_key('orders:42')").fetch_one(&pool).await?;
//! assert_eq!(sqlx_advisory::Key::BigInt(key), sqlx_advisory::Key::name("orders:42"));
//! # Ok(()) }
//! ```

pub use advisory_common::schema::{INSTALL, UNINSTALL};

use crate::error::Error;

/// Creates (or replaces) `advisory_key(text)` and the view `advisory_locks` in the first schema
/// of the session's `search_path`: [`INSTALL`] as one simple-protocol batch. Idempotent.
pub async fn install<'e>(executor: impl sqlx::PgExecutor<'e>) -> Result<(), Error> {
    sqlx::raw_sql(INSTALL).execute(executor).await?;
    Ok(())
}

/// Drops what [`install`] created, if present: [`UNINSTALL`] as one simple-protocol batch.
pub async fn uninstall<'e>(executor: impl sqlx::PgExecutor<'e>) -> Result<(), Error> {
    sqlx::raw_sql(UNINSTALL).execute(executor).await?;
    Ok(())
}
