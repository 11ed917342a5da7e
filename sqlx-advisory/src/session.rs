//! Session-scope locks: the [`LockExt`] trait and its implementation for `&mut PgConnection`.

use std::time::Duration;

use advisory_common::Key;
use advisory_common::protocol::{self, Acquire, After, Request, Statement};
use advisory_common::sql::{self, Mode, Wait};
use sqlx::{Connection, PgConnection};

use crate::driver::{self, Acquiring};
use crate::error::{Error, classify, from_failure, refused};
use crate::guard::LockGuard;

/// Session-level advisory locks (`pg_advisory_lock` and friends), held until the guard releases
/// them or the session ends.
///
/// Implemented for **`&PgPool`** (the guard, [`PoolLockGuard`](crate::PoolLockGuard), owns a
/// checked-out connection, is `'static + Send`) and for **`&mut PgConnection`** (the guard,
/// [`LockGuard`](crate::LockGuard), borrows the connection); method-call autoref makes
/// `pool.advisory_lock(k)` and `conn.advisory_lock(k)` work, also for `PoolConnection<Postgres>`
/// and `Transaction<'_, Postgres>` through deref.
///
/// Keys are anything `Into<Key>`: `42_i64`, `(1, 2)`, `"orders:42"`.
///
/// # Who releases the lock
/// The guard: `release().await`, or dropping it (see each guard's docs for exactly what drop does),
/// or the session ending (session locks are not transactional: PostgreSQL ties them to the
/// session, which is why they are refused inside a transaction, see below).
///
/// # Cancel safety
/// * **`&PgPool`: every method is cancel safe.** Dropped while waiting for a connection or before
///   the lock statement is sent, the connection goes back to the pool unchanged. Dropped after the
///   statement may have been sent (or during the check that follows a timeout, see
///   [`advisory_lock_timeout`](Self::advisory_lock_timeout)), the connection is closed instead of
///   reused, so whatever the server grants dies with the session; the same if that check fails.
///   (A backend blocked in the lock wait notices its client is gone only when the wait ends, unless
///   the server sets `client_connection_check_interval`; it then exits at once. Mutual exclusion
///   is never violated; the dead session just keeps its place in the queue until then.)
/// * **`&mut PgConnection`: cancel safe.** Dropped before the lock statement is written, nothing
///   was sent. Dropped after, the undo of the request (`unlock if held`: re-entrancy makes it
///   release exactly the hold the request added, if it was granted, and nothing else) is queued
///   behind it, so the lock is gone before the connection's next statement is answered. The same
///   if a timed acquire returns the error of its post-timeout check.
///
/// # Inside a transaction
/// On a connection inside a sqlx transaction (a `Transaction`, or `PoolConnection` /
/// `PgConnection` with one open) every method returns [`Error::AlreadyInTransaction`] and sends
/// nothing: if the transaction aborted, PostgreSQL would refuse the guard's unlock until it ended,
/// and the lock would outlive its guard. Use [`XactLockExt`](crate::XactLockExt) there.
pub trait LockExt: Sized + crate::sealed::Sealed {
    /// The guard that holds a lock taken through this type.
    type Guard;

    advisory_common::__lock_methods! { decl async Error;
        /// Take the exclusive lock on `key`, waiting as long as it takes.
        ///
        /// See the trait docs for who releases it and for cancel safety.
        ///
        /// ```
        /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// # let pool = sqlx::PgPool::connect(advisory_harness::db().url()).await?;
        /// use sqlx_advisory::LockExt;
        /// let guard = pool.advisory_lock("orders:42").await?;
        /// // ... the read-modify-write of order 42, on `guard` (a PgConnection) or any other ...
        /// guard.release().await?;
        /// # Ok(()) }
        /// ```
        advisory_lock;

        /// Take the shared lock on `key` (compatible with other shared holders, excludes exclusive
        /// ones), waiting as long as it takes.
        ///
        /// See the trait docs for who releases it and for cancel safety.
        ///
        /// ```
        /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// # let pool = sqlx::PgPool::connect(advisory_harness::db().url()).await?;
        /// use sqlx_advisory::LockExt;
        /// let a = pool.advisory_lock_shared(7_i64).await?;
        /// let b = pool.advisory_lock_shared(7_i64).await?; // readers do not exclude each other
        /// assert!(a.is_shared() && b.is_shared());
        /// # Ok(()) }
        /// ```
        advisory_lock_shared;

        /// Take the exclusive lock on `key` if it is free right now (`pg_try_advisory_lock`); `None`
        /// if another session holds it. Never waits for the lock.
        ///
        /// See the trait docs for who releases it and for cancel safety (a try is as much "in flight"
        /// as a waiting acquire once sent).
        ///
        /// ```
        /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// # let pool = sqlx::PgPool::connect(advisory_harness::db().url()).await?;
        /// use sqlx_advisory::LockExt;
        /// let held = pool.advisory_lock((1, 99)).await?;
        /// assert!(pool.try_advisory_lock((1, 99)).await?.is_none()); // another session
        /// drop(held);
        /// # Ok(()) }
        /// ```
        try_advisory_lock;

        /// Take the shared lock on `key` if no exclusive holder has it right now; never waits.
        ///
        /// See the trait docs for who releases it and for cancel safety.
        ///
        /// ```
        /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// # let pool = sqlx::PgPool::connect(advisory_harness::db().url()).await?;
        /// use sqlx_advisory::LockExt;
        /// let mut conn = pool.acquire().await?;
        /// let guard = conn.try_advisory_lock_shared("report").await?.expect("free");
        /// drop(guard); // the unlock goes out at once
        /// # Ok(()) }
        /// ```
        try_advisory_lock_shared;

        /// Take the exclusive lock on `key`, waiting at most `timeout`, else [`Error::Timeout`].
        ///
        /// The wait is bounded by the server (`lock_timeout`) in one round trip; the session's own
        /// `lock_timeout` is unchanged afterwards. Inside a transaction the attempt runs in a savepoint,
        /// so a timeout does not abort the caller's transaction.
        ///
        /// [`Error::Timeout`] means the session does not hold the lock. PostgreSQL can raise
        /// `lock_timeout` for a wait that was granted in the same instant and keep the lock (the
        /// failed statement or rolled-back savepoint does not release a session lock), so a timeout is
        /// followed by one more round trip asking `pg_locks` whether this session holds the key in
        /// that mode; if it does, the call returns the guard instead. If that check itself fails, its
        /// error is returned and the lock may be held (a pooled connection is closed instead).
        ///
        /// See the trait docs for who releases it and for cancel safety.
        ///
        /// ```
        /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// # let pool = sqlx::PgPool::connect(advisory_harness::db().url()).await?;
        /// use std::time::Duration;
        /// use sqlx_advisory::{Error, LockExt};
        /// let held = pool.advisory_lock(-5_i64).await?;
        /// let err = pool.advisory_lock_timeout(-5_i64, Duration::from_millis(50)).await.unwrap_err();
        /// assert!(matches!(err, Error::Timeout { .. }));
        /// # drop(held); Ok(()) }
        /// ```
        advisory_lock_timeout;

        /// Take the shared lock on `key`, waiting at most `timeout`, else [`Error::Timeout`]; as
        /// [`advisory_lock_timeout`](Self::advisory_lock_timeout).
        ///
        /// ```
        /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// # let pool = sqlx::PgPool::connect(advisory_harness::db().url()).await?;
        /// use std::time::Duration;
        /// use sqlx_advisory::LockExt;
        /// let g = pool.advisory_lock_shared_timeout("cfg", Duration::from_secs(1)).await?;
        /// g.release().await?;
        /// # Ok(()) }
        /// ```
        advisory_lock_shared_timeout;
    }
}

/// Run a session-scope acquire on `conn` from its `first` statement (see
/// [`advisory_common::protocol::Acquire`] for the conversation: the grant-at-timeout check is
/// decided there). `Ok(true)`: granted; `Ok(false)`: a try found it taken.
///
/// `armed` is set while the lock request is on its way or in flight, and left set if the outcome
/// leaves the session's locks unsettled (anything but a grant, a refused try, or a clean
/// refusal). The caller's drop handler reads it.
pub(crate) async fn lock_on(
    conn: &mut PgConnection,
    armed: &mut bool,
    mut acquire: Acquire<sqlx::Error>,
    first: Statement,
) -> Result<bool, Error> {
    let req = *acquire.request();
    let (key, mode) = (req.key(), req.mode());
    // Armed from here: the request may be on the wire once the statement is first polled (on a
    // checkout's first use, sqlx prepares it first; a cancellation then is treated the same).
    *armed = true;
    let finish = driver::drive(conn, &mut acquire, first).await;
    // Still armed while a post-timeout check runs: until it answers, the session may hold the
    // lock. If the check fails, it stays armed and its error is returned. A grant stays armed
    // until the caller hands the connection to its guard.
    *armed = finish.after.is_unsettled() || matches!(finish.outcome, Ok(true));
    if finish.kept_at_timeout {
        tracing::debug!(%key, mode = mode.as_str(), "lock_timeout fired as the lock was granted; keeping it");
    }
    match finish.outcome {
        Ok(true) => {
            prepare_unlock(conn, mode, key).await;
            Ok(true)
        }
        Ok(false) => Ok(false),
        Err(failure) => {
            if finish.after == After::MaybeHeld {
                tracing::warn!(%key, "lock_timeout fired, and checking whether the lock was granted in that instant failed: the session may hold it");
            }
            Err(from_failure(failure, &req))
        }
    }
}

/// Once granted, make sure the unlock statement is in the connection's statement cache, so that the
/// guard's `release()` puts nothing but the unlock on the wire (a cache hit after the first use on a
/// connection: no round trip, no await). A refused try never gets here, so it costs one statement
/// lookup, like the raw SQL. If preparing fails the guard is still returned: the lock is held, and
/// `release()` (or the guard's drop) deals with the connection.
async fn prepare_unlock(conn: &mut PgConnection, mode: Mode, key: Key) {
    if let Err(error) = driver::prepare(conn, sql::unlock_sql(mode, key.space())).await {
        tracing::debug!(%key, %error, "preparing the unlock statement failed; release() retries");
    }
}

async fn acquire(
    conn: &mut PgConnection,
    key: Key,
    mode: Mode,
    wait: Wait,
    timeout: Option<Duration>,
) -> Result<Option<LockGuard<'_>>, Error> {
    // A session lock inside a transaction could outlive its guard: if the transaction aborts,
    // PostgreSQL refuses the guard's unlock until the transaction ends, and nothing of sqlx's
    // public API runs a statement after that. Refused, nothing sent.
    protocol::session_allowed(conn.is_in_transaction()).map_err(|r| refused(r, key))?;
    let req = Request::new(key, mode, wait, timeout)?;
    let mut acquire = Acquire::session(req);
    let first = acquire.start();
    // Answers still owed (a failed or cancelled query) are read first, and the statement is made
    // ready in the cache (no I/O after the first use): then the lock statement's first poll puts
    // it in the write buffer at once, so `armed` means exactly "the request may be out".
    driver::drain(conn)
        .await
        .map_err(|e| classify(e, key, timeout))?;
    if let Some(lock) = first.as_prepared() {
        driver::prepare(conn, lock.sql())
            .await
            .map_err(|e| classify(e, key, timeout))?;
    }
    let mut acquiring = Acquiring::new(conn, key, mode);
    let (conn, armed) = acquiring.parts();
    let locked = lock_on(conn, armed, acquire, first).await;
    // A failed request is disarmed by `lock_on` when it cannot have left a hold (a refusal, a
    // timeout checked with `held`); otherwise dropping `acquiring` queues the undo.
    let locked = match locked {
        Ok(locked) => locked,
        Err(e) => {
            drop(acquiring);
            return Err(e);
        }
    };
    // Decided: from here on the guard, if any, is responsible.
    let conn = acquiring.finish();
    Ok(locked.then(|| LockGuard::new(conn, key, mode)))
}

impl<'c> LockExt for &'c mut PgConnection {
    type Guard = LockGuard<'c>;

    advisory_common::__lock_methods!(async acquire, Error);
}
