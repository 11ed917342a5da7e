//! Session-scope locks for diesel-async's `AsyncPgConnection`: [`AsyncLockExt`].

use std::time::Duration;

use advisory_common::Key;
use advisory_common::protocol::{Acquire, Request};
use advisory_common::sql::{Mode, Scope, Wait};
use diesel_async::AsyncPgConnection;

use super::driver::{QueueUnlockOnDrop, lock, run, session_allowed};
use super::guard::AsyncLockGuard;
use super::holds;
use crate::error::{Error, Failed};

/// Session-scope advisory locks for diesel-async.
///
/// Implemented for `&mut AsyncPgConnection` (guard: [`AsyncLockGuard`], borrows the connection)
/// and, with the `bb8` / `deadpool` features, for diesel-async's bb8 and deadpool pools (guards:
/// [`Bb8LockGuard`](crate::Bb8LockGuard), [`DeadpoolLockGuard`](crate::DeadpoolLockGuard), which
/// own a `'static` checkout, are `Send`, and can be held across `.await`s and moved into
/// `tokio::spawn`). Every method converts the key before building its future, and every future is
/// `Send`.
///
/// A session lock is held until its guard releases it or the session ends; COMMIT and ROLLBACK
/// do not release it. It is taken **outside transactions only**: called while diesel-async has a
/// transaction open on the connection (or cannot tell, after a cancelled `BEGIN` / `COMMIT`),
/// every method returns [`Error::AlreadyInTransaction`] (or `Error::Database(BrokenTransactionManager)`)
/// without sending anything, because a guard could not release its lock inside a transaction that
/// has aborted. Use [`AsyncXactLockExt`](crate::AsyncXactLockExt) inside transactions.
///
/// # Cancel safety
///
/// Dropping an acquire future before it was first polled, or while it waits for a pool checkout,
/// sends nothing. Once the lock statement may have been sent:
///
/// * **pool** (bb8, deadpool): the checkout is marked broken and discarded (never returned to the
///   pool, so nobody receives a connection holding the lock), and the connection's
///   `cancel_token().cancel_query(NoTls)` is fired in a spawned task so the server stops waiting;
///   closing the session releases anything that was granted.
/// * **`&mut AsyncPgConnection`**: the caller's connection cannot be discarded. Instead the
///   matching unlock is queued on the connection right behind the lock statement (handed to
///   tokio-postgres's connection task without waiting for an answer). The server runs them in
///   order: if the lock is granted — now, or later for a waiting acquire — it is released at once;
///   if it was not granted, the unlock finds nothing to release. The connection stays usable; for
///   a waiting `advisory_lock`, your next query on it runs after that wait ends.
///
///   The queued unlock never takes away another guard's hold (advisory locks are re-entrant: a
///   session holding a key twice holds it for two guards). PostgreSQL only refuses or times out
///   a request for a key the session does not hold in that mode, so an unlock behind a request
///   that reached the server is exact. A request that never left (dropped while diesel-async was
///   still preparing its statement) is only undone blindly when no other live guard of this
///   process holds that key in that mode, so the session holds it through no guard. When one
///   does, the acquire is sent as one simple-protocol statement, which is on its way to the server
///   from the first poll, and the unlock is armed only then (a `try_` acquire then costs one more
///   round trip, a `held` check). Locks taken with raw SQL on the same connection are not
///   tracked: do not mix them with guards on the same key.
///
/// ```
/// use diesel_async::{AsyncConnection, AsyncPgConnection};
/// use diesel_advisory::prelude::*;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut conn = AsyncPgConnection::establish(advisory_harness::db().url()).await?;
///
/// let guard = conn.advisory_lock("orders:42").await?;
/// guard.release().await?;
/// # Ok(())
/// # }
/// ```
pub trait AsyncLockExt: Sized + crate::sealed::Sealed {
    /// The guard that holds the lock.
    type Guard;

    advisory_common::__lock_methods! { decl async Error;
        /// Take `key` exclusively, waiting as long as it takes.
        ///
        /// # Cancel safety
        ///
        /// See the [trait docs](AsyncLockExt#cancel-safety): a dropped future never leaves a lock
        /// behind with its guard gone (pool: checkout discarded and the wait cancelled on the
        /// server; borrowed connection: the unlock is queued behind the lock).
        ///
        /// ```
        /// # use diesel_async::{AsyncConnection, AsyncPgConnection};
        /// # use diesel_advisory::prelude::*;
        /// # #[tokio::main(flavor = "current_thread")]
        /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// # let mut conn = AsyncPgConnection::establish(advisory_harness::db().url()).await?;
        /// let guard = conn.advisory_lock((7, 9)).await?;
        /// assert_eq!(guard.key(), diesel_advisory::Key::Pair(7, 9));
        /// # Ok(())
        /// # }
        /// ```
        advisory_lock;

        /// Take `key` in shared mode, waiting as long as it takes.
        ///
        /// # Cancel safety
        ///
        /// As [`AsyncLockExt::advisory_lock`].
        ///
        /// ```
        /// # use diesel_async::{AsyncConnection, AsyncPgConnection};
        /// # use diesel_advisory::prelude::*;
        /// # #[tokio::main(flavor = "current_thread")]
        /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// # let mut conn = AsyncPgConnection::establish(advisory_harness::db().url()).await?;
        /// assert!(conn.advisory_lock_shared("config").await?.is_shared());
        /// # Ok(())
        /// # }
        /// ```
        advisory_lock_shared;

        /// Try to take `key` exclusively without waiting: `None` if another session holds it.
        ///
        /// # Cancel safety
        ///
        /// As [`AsyncLockExt::advisory_lock`] (the statement never waits, so a borrowed connection is
        /// free again as soon as the queued unlock ran).
        ///
        /// ```
        /// # use diesel_async::{AsyncConnection, AsyncPgConnection};
        /// # use diesel_advisory::prelude::*;
        /// # #[tokio::main(flavor = "current_thread")]
        /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// # let mut conn = AsyncPgConnection::establish(advisory_harness::db().url()).await?;
        /// if let Some(guard) = conn.try_advisory_lock("nightly-report").await? {
        ///     guard.release().await?;
        /// }
        /// # Ok(())
        /// # }
        /// ```
        try_advisory_lock;

        /// Try to take `key` in shared mode without waiting.
        ///
        /// # Cancel safety
        ///
        /// As [`AsyncLockExt::try_advisory_lock`].
        ///
        /// ```
        /// # use diesel_async::{AsyncConnection, AsyncPgConnection};
        /// # use diesel_advisory::prelude::*;
        /// # #[tokio::main(flavor = "current_thread")]
        /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// # let mut conn = AsyncPgConnection::establish(advisory_harness::db().url()).await?;
        /// assert!(conn.try_advisory_lock_shared(1_i64).await?.is_some());
        /// # Ok(())
        /// # }
        /// ```
        try_advisory_lock_shared;

        /// Take `key` exclusively, waiting at most `timeout` (server-side `lock_timeout`, one round
        /// trip; [`Error::Timeout`] after that; `lock_timeout` unchanged afterwards).
        ///
        /// A timeout is checked against `pg_locks` (PostgreSQL can grant the lock in the instant it
        /// raises the timeout: the guard is then returned). If that check fails, the outcome is
        /// unknown and the check's error is returned: a pool checkout is discarded, on a borrowed
        /// connection the unlock is queued.
        ///
        /// # Cancel safety
        ///
        /// As [`AsyncLockExt::advisory_lock`].
        ///
        /// ```
        /// # use std::time::Duration;
        /// # use diesel_async::{AsyncConnection, AsyncPgConnection};
        /// # use diesel_advisory::prelude::*;
        /// # #[tokio::main(flavor = "current_thread")]
        /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// # let mut conn = AsyncPgConnection::establish(advisory_harness::db().url()).await?;
        /// let guard = conn.advisory_lock_timeout("orders:42", Duration::from_secs(5)).await?;
        /// # drop(guard);
        /// # Ok(())
        /// # }
        /// ```
        advisory_lock_timeout;

        /// Take `key` in shared mode, waiting at most `timeout`; see
        /// [`AsyncLockExt::advisory_lock_timeout`].
        ///
        /// # Cancel safety
        ///
        /// As [`AsyncLockExt::advisory_lock_timeout`].
        ///
        /// ```
        /// # use std::time::Duration;
        /// # use diesel_async::{AsyncConnection, AsyncPgConnection};
        /// # use diesel_advisory::prelude::*;
        /// # #[tokio::main(flavor = "current_thread")]
        /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// # let mut conn = AsyncPgConnection::establish(advisory_harness::db().url()).await?;
        /// let guard = conn.advisory_lock_shared_timeout(5_i64, Duration::from_millis(200)).await?;
        /// # drop(guard);
        /// # Ok(())
        /// # }
        /// ```
        advisory_lock_shared_timeout;
    }
}

impl<'c> AsyncLockExt for &'c mut AsyncPgConnection {
    type Guard = AsyncLockGuard<'c>;

    advisory_common::__lock_methods!(async acquire_borrowed, Error);
}

async fn acquire_borrowed(
    conn: &mut AsyncPgConnection,
    key: Key,
    mode: Mode,
    wait: Wait,
    timeout: Option<Duration>,
) -> Result<Option<AsyncLockGuard<'_>>, Error> {
    let req = Request::new(key, mode, wait, timeout)?;
    session_allowed(conn, key)?;
    let locked = if holds::holders(key, mode) == 0 {
        lock_armed_early(conn, &req).await?
    } else {
        lock_armed_on_the_wire(conn, &req).await?
    };
    Ok(locked.then(|| AsyncLockGuard::new(conn, key, mode)))
}

/// No other live guard of the process holds the key in this mode, so the session holds it
/// through none: the prepared statement, with the unlock armed before it may be sent (an unlock
/// behind a request that never left finds nothing a guard owns).
async fn lock_armed_early(conn: &mut AsyncPgConnection, req: &Request) -> Result<bool, Error> {
    let mut pending = QueueUnlockOnDrop::new(conn, req.key(), req.mode(), true);
    match lock(pending.conn(), Scope::Session, req).await {
        // unknown outcome: `pending` queues the unlock (exact: see `Failed::maybe_held`)
        Err(Failed {
            error,
            maybe_held: true,
        }) => Err(error),
        result => {
            pending.finish();
            result.map_err(|f| f.error)
        }
    }
}

/// Another guard may hold the key in this mode on this very connection: one simple-protocol
/// statement ([`Acquire::session_literal`]), with the unlock armed only once its first poll has
/// put it on its way.
async fn lock_armed_on_the_wire(
    conn: &mut AsyncPgConnection,
    req: &Request,
) -> Result<bool, Error> {
    let acquire = Acquire::session_literal(*req);
    let mut pending = QueueUnlockOnDrop::new(conn, req.key(), req.mode(), false);
    let outcome = {
        let QueueUnlockOnDrop { conn, armed, .. } = &mut pending;
        let conn = conn.as_deref_mut().expect("present until dropped");
        run(conn, acquire, || *armed = true).await
    };
    match outcome {
        // unknown outcome: `pending` queues the unlock
        Err(Failed {
            error,
            maybe_held: true,
        }) => Err(error),
        outcome => {
            pending.finish();
            outcome.map_err(|f| f.error)
        }
    }
}
