//! Session-scope locks for diesel's sync `PgConnection`: [`LockExt`].

use std::time::Duration;

use advisory_common::Key;
use advisory_common::protocol::Request;
use advisory_common::sql::{Mode, Scope, Wait};
use diesel::PgConnection;

use super::driver::{lock, mark_broken, session_allowed, unlock};
use super::guard::LockGuard;
use crate::error::{Error, Failed};

/// Session-scope advisory locks for diesel's sync API.
///
/// Implemented for `&mut PgConnection` (the guard, [`LockGuard`], borrows the connection and
/// derefs to it) and, with the `r2d2` feature, for `&r2d2::Pool<ConnectionManager<PgConnection>>`
/// (the guard, [`R2d2LockGuard`](crate::R2d2LockGuard), owns its pooled connection). Method-call
/// autoref makes `conn.advisory_lock(k)` and `pool.advisory_lock(k)` both work.
///
/// A session lock is held until the guard releases it ([`LockGuard::release`] or drop) or the
/// session ends; a transaction's COMMIT or ROLLBACK does not release it (a guard can be kept
/// across a transaction opened on its connection, rolled back or not). PostgreSQL's advisory locks
/// are re-entrant: a session that takes the same key twice holds it twice and needs two releases
/// (two guards).
///
/// Session locks are taken **outside transactions only**. Called while diesel has a transaction
/// open on the connection, every method returns [`Error::AlreadyInTransaction`] without sending
/// anything: inside a transaction that then aborts, the guard could not release its lock
/// (PostgreSQL refuses every statement there). Use [`XactLockExt`](crate::XactLockExt) inside
/// transactions.
///
/// A timed acquire that times out is checked against `pg_locks` (PostgreSQL can grant the lock
/// in the instant it raises the timeout; the guard is then returned). If that check itself fails,
/// the acquire's outcome is unknown: on a borrowed connection the lock is unlocked again (or the
/// connection marked broken if that fails too), an r2d2 checkout is discarded; either way the
/// check's error is returned.
///
/// # Cancel safety
///
/// The sync calls cannot be cancelled half-way. A panic inside a guard's scope drops the guard,
/// whose `Drop` releases the lock synchronously before the unwind continues.
///
/// ```
/// use diesel::prelude::*;
/// use diesel_advisory::prelude::*;
/// # let mut conn = PgConnection::establish(advisory_harness::db().url()).unwrap();
///
/// let guard = conn.advisory_lock("orders:42")?;       // waits until granted
/// // ... the guard derefs to the connection: use it for queries ...
/// guard.release()?;                                     // or just drop it
///
/// if let Some(guard) = conn.try_advisory_lock_shared(42_i64)? {
///     assert!(guard.is_shared());
/// }
/// # Ok::<(), diesel_advisory::Error>(())
/// ```
pub trait LockExt: Sized + crate::sealed::Sealed {
    /// The guard that holds the lock.
    type Guard;

    advisory_common::__lock_methods! { decl sync Error;
        /// Take `key` exclusively, waiting as long as it takes.
        ///
        /// One prepared, cached statement (`pg_advisory_lock`); the lock is released by the guard
        /// (release or drop) or when the session ends.
        ///
        /// # Cancel safety
        ///
        /// Sync: nothing to cancel. Drop of the guard releases the lock synchronously; see
        /// [`LockGuard`] for what happens if that unlock fails.
        ///
        /// ```
        /// # use diesel::prelude::*;
        /// # use diesel_advisory::prelude::*;
        /// # let mut conn = PgConnection::establish(advisory_harness::db().url()).unwrap();
        /// let guard = conn.advisory_lock((7, 9))?;
        /// assert_eq!(guard.key(), diesel_advisory::Key::Pair(7, 9));
        /// # Ok::<(), diesel_advisory::Error>(())
        /// ```
        advisory_lock;

        /// Take `key` in shared mode (conflicts only with exclusive holders), waiting as long as it
        /// takes. Released like [`LockExt::advisory_lock`].
        ///
        /// # Cancel safety
        ///
        /// Sync: nothing to cancel; the guard's drop releases synchronously.
        ///
        /// ```
        /// # use diesel::prelude::*;
        /// # use diesel_advisory::prelude::*;
        /// # let mut conn = PgConnection::establish(advisory_harness::db().url()).unwrap();
        /// let guard = conn.advisory_lock_shared("config")?;
        /// assert!(guard.is_shared());
        /// # Ok::<(), diesel_advisory::Error>(())
        /// ```
        advisory_lock_shared;

        /// Try to take `key` exclusively without waiting: `None` if another session holds it.
        ///
        /// # Cancel safety
        ///
        /// Sync: nothing to cancel; the guard's drop releases synchronously.
        ///
        /// ```
        /// # use diesel::prelude::*;
        /// # use diesel_advisory::prelude::*;
        /// # let mut conn = PgConnection::establish(advisory_harness::db().url()).unwrap();
        /// match conn.try_advisory_lock("nightly-report")? {
        ///     Some(guard) => guard.release()?,
        ///     None => println!("someone else is running it"),
        /// }
        /// # Ok::<(), diesel_advisory::Error>(())
        /// ```
        try_advisory_lock;

        /// Try to take `key` in shared mode without waiting: `None` if an exclusive holder exists.
        ///
        /// # Cancel safety
        ///
        /// Sync: nothing to cancel; the guard's drop releases synchronously.
        ///
        /// ```
        /// # use diesel::prelude::*;
        /// # use diesel_advisory::prelude::*;
        /// # let mut conn = PgConnection::establish(advisory_harness::db().url()).unwrap();
        /// assert!(conn.try_advisory_lock_shared(1_i64)?.is_some());
        /// # Ok::<(), diesel_advisory::Error>(())
        /// ```
        try_advisory_lock_shared;

        /// Take `key` exclusively, waiting at most `timeout` ([`Error::Timeout`] after that).
        ///
        /// The wait is enforced by the server (`lock_timeout`, one round trip) and the session's
        /// `lock_timeout` is unchanged afterwards.
        ///
        /// # Cancel safety
        ///
        /// Sync: nothing to cancel; the guard's drop releases synchronously.
        ///
        /// ```
        /// # use std::time::Duration;
        /// # use diesel::prelude::*;
        /// # use diesel_advisory::prelude::*;
        /// # let mut conn = PgConnection::establish(advisory_harness::db().url()).unwrap();
        /// let guard = conn.advisory_lock_timeout("orders:42", Duration::from_secs(5))?;
        /// # drop(guard);
        /// # Ok::<(), diesel_advisory::Error>(())
        /// ```
        advisory_lock_timeout;

        /// Take `key` in shared mode, waiting at most `timeout`; see
        /// [`LockExt::advisory_lock_timeout`].
        ///
        /// # Cancel safety
        ///
        /// Sync: nothing to cancel; the guard's drop releases synchronously.
        ///
        /// ```
        /// # use std::time::Duration;
        /// # use diesel::prelude::*;
        /// # use diesel_advisory::prelude::*;
        /// # let mut conn = PgConnection::establish(advisory_harness::db().url()).unwrap();
        /// let guard = conn.advisory_lock_shared_timeout(5_i64, Duration::from_millis(200))?;
        /// # drop(guard);
        /// # Ok::<(), diesel_advisory::Error>(())
        /// ```
        advisory_lock_shared_timeout;
    }
}

impl<'c> LockExt for &'c mut PgConnection {
    type Guard = LockGuard<'c>;

    advisory_common::__lock_methods!(sync acquire_borrowed, Error);
}

fn acquire_borrowed(
    conn: &mut PgConnection,
    key: Key,
    mode: Mode,
    wait: Wait,
    timeout: Option<Duration>,
) -> Result<Option<LockGuard<'_>>, Error> {
    session_allowed(conn, key)?;
    let req = Request::new(key, mode, wait, timeout)?;
    match lock(conn, Scope::Session, &req) {
        Ok(locked) => Ok(locked.then(|| LockGuard::new(conn, key, mode))),
        Err(Failed {
            error,
            maybe_held: true,
        }) => {
            // A timed acquire that timed out never already held the key in that mode (a
            // re-entrant request is granted at once), so this unlock can only release the grant
            // of the instant of the timeout, never another guard's hold.
            if let Err(e) = unlock(conn, key, mode) {
                tracing::warn!(key = %key, error = %e, "could not undo a timed acquire of unknown outcome; marking the connection broken");
                mark_broken(conn);
            }
            Err(error)
        }
        Err(failed) => Err(failed.error),
    }
}
