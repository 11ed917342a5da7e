//! The lock service: many session locks held on one dedicated connection, acquired and released
//! in batches, waited for server-side without polling, and lost-lock notification.
//!
//! The decisions are made by the driver-independent engine in `advisory_common::locker`, and the
//! session task, [`Lease`] and the lock methods are its tokio shell (`advisory_common::shell`,
//! written once for both adapters); this module is only the I/O on diesel-async's transport
//! (`tokio-postgres`, [`task`]) and the constructors.

mod task;

use std::ops::Deref;

use advisory_common::shell;
use tokio_postgres::Config;

pub use shell::LockerOptions;
use task::TokioPostgresDriver;

use crate::error::Error;

/// A session lock held through a [`Locker`]: owned, `'static + Send`. Drop releases it (no
/// runtime needed); `release().await` releases it and waits for the unlock; `lost()` resolves
/// when the locker's session is lost.
pub type Lease = shell::Lease<Error>;

/// This process leads on a key: [`Locker::campaign`](shell::Locker::campaign). Drop or
/// `resign().await` to step down; `lost()` resolves when leadership can no longer be trusted.
pub type Leadership = shell::Leadership<Error>;

/// A lock service for diesel-async users: thousands of session locks of this process held on one
/// dedicated PostgreSQL session, each as an owned, `'static + Send` [`Lease`].
///
/// * **Multiplexing.** Every lease lives on the locker's one session connection (plus one short
///   lived *waiter* connection per key currently contended by another process). Tasks of this
///   process are excluded from each other per key and mode by the locker itself, FIFO, without a
///   round trip; processes exclude each other through PostgreSQL.
/// * **Batching.** A lone caller's request goes out at once; requests arriving while a round trip
///   is on the wire ride the next one together: one statement over an array of keys.
/// * **Waiting without polling.** A key held by another process is waited for by one waiter
///   connection blocked in `pg_advisory_lock` (at most one per key, however many local tasks
///   wait), which lets it go the moment it is granted; the session takes it in its next batch.
///   Timeouts are local timers that withdraw the request (and cancel the server wait when no
///   one needs it any more: the protocol's cancel request).
/// * **Lost-lock notification.** [`Lease::lost`](shell::Lease::lost) resolves when the session's
///   connection closes or fails, its backend is terminated, or the keepalive fails.
///
/// The lock methods (`lock`, `lock_shared`, `try_lock`, `try_lock_shared`, `lock_timeout`,
/// `lock_shared_timeout`, `lock_all`, `lock_all_timeout`, `campaign`, `lead`) are the shell's,
/// reached through `Deref`; they return this crate's [`Error`].
///
/// A `Locker` is a cheap handle (`Clone`); the session task lives while any handle or lease does.
/// Create it inside a tokio runtime.
///
/// ```
/// # #[cfg(feature = "locker")]
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let url = advisory_harness::db().url();
/// use diesel_advisory::Locker;
///
/// // the URL your AsyncDieselConnectionManager (bb8 / deadpool) was built with
/// let locker = Locker::connect(url)?;
/// let lease = locker.lock("tenant:7").await?;
/// assert!(locker.try_lock("tenant:7").await?.is_none()); // excluded locally, no round trip
/// tokio::select! {
///     _ = lease.lost() => { /* stop working for tenant 7 */ }
///     _ = async { /* work */ } => {}
/// }
/// lease.release().await?;
/// # Ok(()) }
/// # #[cfg(not(feature = "locker"))] fn main() {}
/// ```
#[derive(Clone, Debug)]
pub struct Locker(shell::Locker<TokioPostgresDriver>);

impl Deref for Locker {
    type Target = shell::Locker<TokioPostgresDriver>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Locker {
    /// A locker connecting to `url` (a `postgres://` URL, as given to diesel-async's
    /// `AsyncPgConnection::establish` or `AsyncDieselConnectionManager::new`; no TLS, like those).
    /// Its connections are its own: a bb8 / deadpool pool built on the same URL stays free for
    /// your queries.
    pub fn connect(url: &str) -> Result<Locker, Error> {
        let config: Config = url.parse().map_err(|e: tokio_postgres::Error| {
            Error::Database(diesel::result::Error::QueryBuilderError(e.into()))
        })?;
        Ok(Locker::with_config(config, LockerOptions::default()))
    }

    /// A locker with an explicit `tokio-postgres` configuration and [`LockerOptions`]. The
    /// session connects at the first request.
    pub fn with_config(config: Config, options: LockerOptions) -> Locker {
        Locker(shell::Locker::new(
            TokioPostgresDriver::new(config),
            options,
        ))
    }
}
