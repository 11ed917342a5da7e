//! [`MigrationLock::run_pending_async`]: the diesel-async runner.

use advisory_common::protocol::Request;
use advisory_common::sql::{Mode, Scope, Wait};
use diesel::migration::{MigrationSource, MigrationVersion};
use diesel::pg::Pg;
use diesel_async::{AsyncMigrationHarness, AsyncPgConnection};
use diesel_migrations::MigrationHarness;
use tokio::runtime::{Handle, RuntimeFlavor};

use super::{MigrationError, MigrationLock, owned};
use crate::r#async::driver::{lock, session_allowed, unlock};
use crate::error::Error;

impl MigrationLock {
    /// [`MigrationLock::run_pending`] for diesel-async: take the lock on `conn` (session scope),
    /// run the pending migrations on that same session through diesel-async's
    /// `AsyncMigrationHarness`, release the lock, and hand the connection back with the versions
    /// this call applied (empty when another runner already applied them).
    ///
    /// The connection is taken by value because diesel-async's harness owns the connection it runs
    /// on. **On any error, and if this future is dropped, the connection is dropped, which closes
    /// the session and so releases the lock**: a failed or cancelled run never leaves the lock
    /// held on a live connection.
    ///
    /// diesel's harness is synchronous; diesel-async runs it in `tokio::task::block_in_place`,
    /// which needs tokio's multi-threaded runtime: on any other, nothing is sent and the result is
    /// [`MigrationError::CurrentThreadRuntime`].
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "multi_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use diesel_async::{AsyncConnection, AsyncPgConnection};
    /// use diesel_advisory::MigrationLock;
    /// use diesel_migrations::{EmbeddedMigrations, embed_migrations};
    ///
    /// const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations");
    ///
    /// let conn = AsyncPgConnection::establish("postgres://localhost/app").await?;
    /// let (conn, applied) = MigrationLock::new().run_pending_async(conn, MIGRATIONS).await?;
    /// # drop((conn, applied));
    /// # Ok(()) }
    /// ```
    pub async fn run_pending_async<S: MigrationSource<Pg>>(
        &self,
        mut conn: AsyncPgConnection,
        source: S,
    ) -> Result<(AsyncPgConnection, Vec<MigrationVersion<'static>>), MigrationError> {
        let flavor = Handle::try_current().map(|h| h.runtime_flavor());
        if !matches!(flavor, Ok(RuntimeFlavor::MultiThread)) {
            return Err(MigrationError::CurrentThreadRuntime);
        }
        let req = Request::new(self.key, Mode::Exclusive, Wait::Timeout, self.timeout)
            .map_err(|e| MigrationError::Lock(e.into()))?;
        session_allowed(&mut conn, self.key).map_err(MigrationError::Lock)?;
        // no guard: the connection is owned here, and dropping it (error, cancellation) ends the
        // session, which releases whatever it holds
        match lock(&mut conn, Scope::Session, &req).await {
            Ok(true) => {}
            Ok(false) => {
                return Err(MigrationError::Lock(Error::Timeout {
                    key: self.key,
                    timeout: self.timeout.unwrap_or_default(),
                }));
            }
            Err(failed) => return Err(MigrationError::Lock(failed.error)),
        }
        let mut harness = AsyncMigrationHarness::new(conn);
        let applied = harness
            .run_pending_migrations(source)
            .map(owned)
            .map_err(MigrationError::Migration)?;
        let mut conn = harness.into_inner();
        match unlock(&mut conn, self.key, Mode::Exclusive).await {
            Ok(true) => Ok((conn, applied)),
            Ok(false) => Err(MigrationError::Release(Error::NotHeld { key: self.key })),
            Err(e) => Err(MigrationError::Release(e)),
        }
    }
}
