//! The lock service: many session locks held on one dedicated connection, acquired and released
//! in batches, waited for server-side without polling, and lost-lock notification.
//!
//! The decisions are made by the driver-independent engine in `advisory_common::locker`, and the
//! session task, [`Lease`] and the lock methods are its tokio shell (`advisory_common::shell`,
//! written once for both adapters); this module is only the sqlx I/O ([`task`]) and the
//! constructors.

mod task;

use std::ops::Deref;

use advisory_common::shell;
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;

pub use shell::LockerOptions;
use task::SqlxDriver;

use crate::error::Error;

/// A session lock held through a [`Locker`]: owned, `'static + Send`. Drop releases it (no
/// runtime needed); `release().await` releases it and waits for the unlock; `lost()` resolves
/// when the locker's session is lost.
pub type Lease = shell::Lease<Error>;

/// This process leads on a key: [`Locker::campaign`](shell::Locker::campaign). Drop or
/// `resign().await` to step down; `lost()` resolves when leadership can no longer be trusted.
pub type Leadership = shell::Leadership<Error>;

/// A lock service: thousands of session locks of this process held on one dedicated PostgreSQL
/// session, each as an owned, `'static + Send` [`Lease`].
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
///   one needs it any more: `pg_cancel_backend`).
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
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let url = advisory_harness::db().url();
/// use sqlx_advisory::Locker;
///
/// let pool = sqlx::PgPool::connect(url).await?;
/// let locker = Locker::new(&pool);
/// let lease = locker.lock("tenant:7").await?;
/// assert!(locker.try_lock("tenant:7").await?.is_none()); // excluded locally, no round trip
/// tokio::select! {
///     _ = lease.lost() => { /* stop working for tenant 7 */ }
///     _ = async { /* work */ } => {}
/// }
/// lease.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Locker(shell::Locker<SqlxDriver>);

impl Deref for Locker {
    type Target = shell::Locker<SqlxDriver>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Locker {
    /// A locker whose connections are opened with `pool`'s connect options (never taken from the
    /// pool: the pool's connections stay free for your queries).
    pub fn new(pool: &PgPool) -> Locker {
        Locker::with_options((*pool.connect_options()).clone(), LockerOptions::default())
    }

    /// A locker connecting to `url`.
    pub fn connect(url: &str) -> Result<Locker, Error> {
        let opts: PgConnectOptions = url.parse().map_err(Error::Database)?;
        Ok(Locker::with_options(opts, LockerOptions::default()))
    }

    /// A locker with explicit connect options and [`LockerOptions`]. The session connects at
    /// the first request.
    pub fn with_options(connect: PgConnectOptions, options: LockerOptions) -> Locker {
        Locker(shell::Locker::new(SqlxDriver::new(connect), options))
    }
}
