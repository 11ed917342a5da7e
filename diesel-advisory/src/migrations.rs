//! Running diesel migrations while holding an advisory lock (feature `migrations`).
//!
//! diesel's `run_pending_migrations` takes no lock (diesel issue 4862): replicas that start at
//! the same time all read "migration X pending" and all run it, and all but one fail (duplicate
//! table, duplicate `__diesel_schema_migrations` row) or, for a migration that is not DDL, apply
//! it twice. [`MigrationLock`] takes a session-level advisory lock first, then runs diesel's own
//! harness on the same connection, then releases: the other replicas wait on the lock, and when
//! they get it they find nothing pending and return an empty list.
//!
//! sqlx needs none of this: its migrator already holds
//! [`migration_keys::sqlx`](advisory_common::migration_keys::sqlx) while it runs.

use std::time::Duration;

use advisory_common::{Key, migration_keys};
use diesel::migration::MigrationVersion;
#[cfg(feature = "sync")]
use diesel::{migration::MigrationSource, pg::Pg};

use crate::error::Error;

#[cfg(feature = "async")]
mod run_async;

/// Which key to lock while migrating, and for how long to wait for it.
///
/// ```no_run
/// # #[cfg(feature = "sync")] fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use diesel::prelude::*;
/// use diesel_advisory::MigrationLock;
/// use diesel_migrations::{EmbeddedMigrations, embed_migrations};
///
/// const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations");
///
/// let mut conn = PgConnection::establish("postgres://localhost/app")?;
/// // every replica runs this at start-up; one migrates, the others wait, then find nothing to do
/// let applied = MigrationLock::new()
///     .timeout(Duration::from_secs(300))
///     .run_pending(&mut conn, MIGRATIONS)?;
/// println!("applied {applied:?}");
/// # Ok(()) }
/// # #[cfg(not(feature = "sync"))] fn main() {}
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MigrationLock {
    key: Key,
    timeout: Option<Duration>,
}

impl Default for MigrationLock {
    fn default() -> MigrationLock {
        MigrationLock::new()
    }
}

/// Why a locked migration run failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrationError {
    /// The lock was not taken (nothing was migrated): [`Error::Timeout`] when another runner held
    /// it for longer than the timeout, or a connection / server error.
    #[error("the migration lock was not taken: {0}")]
    Lock(#[source] Error),
    /// diesel's harness failed (the lock was released afterwards). Migrations applied before the
    /// failing one stay applied, as with diesel's own `run_pending_migrations`.
    #[error("running the migrations failed: {0}")]
    Migration(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The migrations ran, but releasing the lock failed (the session ending releases it).
    #[error("the migrations ran, but releasing the migration lock failed: {0}")]
    Release(#[source] Error),
    /// [`MigrationLock::run_pending_async`] was called on tokio's current-thread runtime: diesel's
    /// migration harness is synchronous and runs in `tokio::task::block_in_place`, which needs the
    /// multi-threaded runtime. Nothing was sent.
    #[error(
        "running diesel migrations from async code needs tokio's multi-threaded runtime (block_in_place)"
    )]
    CurrentThreadRuntime,
}

impl MigrationLock {
    /// Lock [`migration_keys::diesel`] (`Key::name("diesel_migrations")`), waiting as long as it
    /// takes.
    ///
    /// ```
    /// use diesel_advisory::{Key, MigrationLock};
    /// assert_eq!(MigrationLock::new().lock_key(), Key::name("diesel_migrations"));
    /// ```
    pub fn new() -> MigrationLock {
        MigrationLock {
            key: migration_keys::diesel(),
            timeout: None,
        }
    }

    /// Lock `key` instead (for example one per schema, or [`migration_keys::sqlx`] of the
    /// database to also exclude sqlx's migrator).
    ///
    /// ```
    /// use diesel_advisory::{Key, MigrationLock};
    /// assert_eq!(MigrationLock::new().key(7_i64).lock_key(), Key::BigInt(7));
    /// ```
    pub fn key(self, key: impl Into<Key>) -> MigrationLock {
        MigrationLock {
            key: key.into(),
            ..self
        }
    }

    /// Wait at most `timeout` for the lock (server-side `lock_timeout`), then fail with
    /// [`MigrationError::Lock`]`(`[`Error::Timeout`]`)` having migrated nothing. The migrations
    /// themselves are not bounded.
    ///
    /// ```
    /// use std::time::Duration;
    /// use diesel_advisory::MigrationLock;
    /// let lock = MigrationLock::new().timeout(Duration::from_secs(60));
    /// assert_eq!(lock.lock_timeout(), Some(Duration::from_secs(60)));
    /// ```
    pub fn timeout(self, timeout: Duration) -> MigrationLock {
        MigrationLock {
            timeout: Some(timeout),
            ..self
        }
    }

    /// The key this runner locks.
    pub fn lock_key(&self) -> Key {
        self.key
    }

    /// The configured wait limit (`None`: wait as long as it takes).
    pub fn lock_timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Take the lock on `conn` (session scope), run diesel's `run_pending_migrations` on the same
    /// connection, release the lock; returns the versions this call applied (empty when another
    /// runner already applied them). `conn` must not be inside a transaction
    /// ([`Error::AlreadyInTransaction`]).
    ///
    /// ```no_run
    /// # #[cfg(feature = "sync")] fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use diesel::prelude::*;
    /// # use diesel_advisory::MigrationLock;
    /// # let mut conn = PgConnection::establish("postgres://localhost/app")?;
    /// # let migrations = diesel_migrations::FileBasedMigrations::from_path(
    /// #     concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations"))?;
    /// let applied = MigrationLock::new().run_pending(&mut conn, migrations)?;
    /// # let _ = applied;
    /// # Ok(()) }
    /// # #[cfg(not(feature = "sync"))] fn main() {}
    /// ```
    #[cfg(feature = "sync")]
    pub fn run_pending<S: MigrationSource<Pg>>(
        &self,
        conn: &mut diesel::PgConnection,
        source: S,
    ) -> Result<Vec<MigrationVersion<'static>>, MigrationError> {
        use crate::sync::session::LockExt;
        use diesel_migrations::MigrationHarness;

        let mut guard = match self.timeout {
            Some(t) => conn.advisory_lock_timeout(self.key, t),
            None => conn.advisory_lock(self.key),
        }
        .map_err(MigrationError::Lock)?;
        let applied = MigrationHarness::run_pending_migrations(&mut *guard, source).map(owned);
        finish(applied, guard.release())
    }
}

pub(crate) fn owned(v: Vec<MigrationVersion<'_>>) -> Vec<MigrationVersion<'static>> {
    v.iter().map(MigrationVersion::as_owned).collect()
}

#[cfg(feature = "sync")]
fn finish(
    applied: diesel::migration::Result<Vec<MigrationVersion<'static>>>,
    released: Result<(), Error>,
) -> Result<Vec<MigrationVersion<'static>>, MigrationError> {
    match (applied, released) {
        (Err(e), _) => Err(MigrationError::Migration(e)),
        (Ok(_), Err(e)) => Err(MigrationError::Release(e)),
        (Ok(v), Ok(())) => Ok(v),
    }
}
