//! The SQL this project ships to users, installed from Rust: `advisory_key(text)` (the SQL twin
//! of [`Key::name`](crate::Key::name)) and the `advisory_locks` view. The text is
//! [`INSTALL`] / [`UNINSTALL`]; the repository's `migrations/` folder holds the same text as a
//! diesel migration (copy it into yours, or call [`install`] from an embedded migration's setup).
//!
//! ```
//! # #[cfg(feature = "sync")] fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use diesel::prelude::*;
//! # let database_url = advisory_harness::db().url();
//! let mut conn = PgConnection::establish(database_url)?;
//! diesel_advisory::schema::install(&mut conn)?;
//! # Ok(()) }
//! # #[cfg(not(feature = "sync"))] fn main() {}
//! ```

pub use advisory_common::schema::{INSTALL, UNINSTALL};

#[cfg(any(feature = "sync", feature = "async"))]
use crate::error::Error;

/// Creates (or replaces) `advisory_key(text)` and the view `advisory_locks` in the first schema
/// of the session's `search_path`: [`INSTALL`] as one `batch_execute`. Idempotent.
#[cfg(feature = "sync")]
pub fn install(conn: &mut diesel::PgConnection) -> Result<(), Error> {
    diesel::connection::SimpleConnection::batch_execute(conn, INSTALL)?;
    Ok(())
}

/// Drops what [`install`] created, if present: [`UNINSTALL`] as one `batch_execute`.
#[cfg(feature = "sync")]
pub fn uninstall(conn: &mut diesel::PgConnection) -> Result<(), Error> {
    diesel::connection::SimpleConnection::batch_execute(conn, UNINSTALL)?;
    Ok(())
}

/// [`install`] for diesel-async.
#[cfg(feature = "async")]
pub async fn install_async(conn: &mut diesel_async::AsyncPgConnection) -> Result<(), Error> {
    diesel_async::SimpleAsyncConnection::batch_execute(conn, INSTALL).await?;
    Ok(())
}

/// [`uninstall`] for diesel-async.
#[cfg(feature = "async")]
pub async fn uninstall_async(conn: &mut diesel_async::AsyncPgConnection) -> Result<(), Error> {
    diesel_async::SimpleAsyncConnection::batch_execute(conn, UNINSTALL).await?;
    Ok(())
}
