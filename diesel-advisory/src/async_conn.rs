//! Session-scope locks for diesel-async's `AsyncPgConnection`: [`AsyncLockExt`].

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use advisory_common::sql::{self, Mode, SAVEPOINT_ROLLBACK, Scope};
use advisory_common::{Key, LockInfo};
use diesel_async::{
    AnsiTransactionManager, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection,
    TransactionManager,
};

use crate::Error;
use crate::async_guard::AsyncLockGuard;
use crate::request::{How, Request, async_lock_methods, granted, held_stmt, unlock_stmt};
use crate::stmt::{LocksRow, decode_locks, locks_stmt};

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
/// do not release it.
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
///   if it was not granted, the unlock finds nothing to release (PostgreSQL only fails or refuses
///   an acquire of a key this session does not already hold in that mode, so the queued unlock
///   never takes away another hold). The connection stays usable; for a waiting
///   `advisory_lock`, your next query on it runs after that wait ends. Limitation: a future
///   dropped during the very first use of that statement text on this connection (while diesel is
///   still preparing it) never sent the lock; if the session already holds the same key in the
///   same mode through another guard, the queued unlock releases one of those holds early.
///
/// ```
/// use diesel_async::{AsyncConnection, AsyncPgConnection};
/// use diesel_advisory::prelude::*;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut conn = AsyncPgConnection::establish(advisory_tests::db().url()).await?;
///
/// let guard = conn.advisory_lock("orders:42").await?;
/// guard.release().await?;
/// # Ok(())
/// # }
/// ```
pub trait AsyncLockExt: Sized {
    /// The guard that holds the lock.
    type Guard;

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
    /// # let mut conn = AsyncPgConnection::establish(advisory_tests::db().url()).await?;
    /// let guard = conn.advisory_lock((7, 9)).await?;
    /// assert_eq!(guard.key(), diesel_advisory::Key::Pair(7, 9));
    /// # Ok(())
    /// # }
    /// ```
    fn advisory_lock(
        self,
        key: impl Into<Key>,
    ) -> impl Future<Output = Result<Self::Guard, Error>> + Send;

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
    /// # let mut conn = AsyncPgConnection::establish(advisory_tests::db().url()).await?;
    /// assert!(conn.advisory_lock_shared("config").await?.is_shared());
    /// # Ok(())
    /// # }
    /// ```
    fn advisory_lock_shared(
        self,
        key: impl Into<Key>,
    ) -> impl Future<Output = Result<Self::Guard, Error>> + Send;

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
    /// # let mut conn = AsyncPgConnection::establish(advisory_tests::db().url()).await?;
    /// if let Some(guard) = conn.try_advisory_lock("nightly-report").await? {
    ///     guard.release().await?;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    fn try_advisory_lock(
        self,
        key: impl Into<Key>,
    ) -> impl Future<Output = Result<Option<Self::Guard>, Error>> + Send;

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
    /// # let mut conn = AsyncPgConnection::establish(advisory_tests::db().url()).await?;
    /// assert!(conn.try_advisory_lock_shared(1_i64).await?.is_some());
    /// # Ok(())
    /// # }
    /// ```
    fn try_advisory_lock_shared(
        self,
        key: impl Into<Key>,
    ) -> impl Future<Output = Result<Option<Self::Guard>, Error>> + Send;

    /// Take `key` exclusively, waiting at most `timeout` (server-side `lock_timeout`, one round
    /// trip; [`Error::Timeout`] after that; `lock_timeout` unchanged afterwards; inside a diesel
    /// transaction the attempt runs in a savepoint so a timeout does not abort it).
    ///
    /// # Cancel safety
    ///
    /// As [`AsyncLockExt::advisory_lock`]. Inside a transaction, a future dropped after sending
    /// may leave the transaction aborted (if the attempt timed out with nobody left to roll back
    /// its savepoint): roll the transaction back.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use diesel_async::{AsyncConnection, AsyncPgConnection};
    /// # use diesel_advisory::prelude::*;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let mut conn = AsyncPgConnection::establish(advisory_tests::db().url()).await?;
    /// let guard = conn.advisory_lock_timeout("orders:42", Duration::from_secs(5)).await?;
    /// # drop(guard);
    /// # Ok(())
    /// # }
    /// ```
    fn advisory_lock_timeout(
        self,
        key: impl Into<Key>,
        timeout: Duration,
    ) -> impl Future<Output = Result<Self::Guard, Error>> + Send;

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
    /// # let mut conn = AsyncPgConnection::establish(advisory_tests::db().url()).await?;
    /// let guard = conn.advisory_lock_shared_timeout(5_i64, Duration::from_millis(200)).await?;
    /// # drop(guard);
    /// # Ok(())
    /// # }
    /// ```
    fn advisory_lock_shared_timeout(
        self,
        key: impl Into<Key>,
        timeout: Duration,
    ) -> impl Future<Output = Result<Self::Guard, Error>> + Send;

    /// Every advisory lock in the current database (held or awaited, by any session).
    ///
    /// ```
    /// # use diesel_async::{AsyncConnection, AsyncPgConnection};
    /// # use diesel_advisory::prelude::*;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let mut conn = AsyncPgConnection::establish(advisory_tests::db().url()).await?;
    /// let mut guard = conn.advisory_lock(-78_i64).await?;
    /// let key = guard.key();
    /// assert!(guard.advisory_locks().await?.iter().any(|l| l.key == key));
    /// # Ok(())
    /// # }
    /// ```
    fn advisory_locks(self) -> impl Future<Output = Result<Vec<LockInfo>, Error>> + Send;
}

impl<'c> AsyncLockExt for &'c mut AsyncPgConnection {
    type Guard = AsyncLockGuard<'c>;

    async_lock_methods!(acquire_borrowed);

    fn advisory_locks(self) -> impl Future<Output = Result<Vec<LockInfo>, Error>> + Send {
        locks(self)
    }
}

/// Queues the unlock behind a lock statement whose future was dropped (see the trait's
/// `# Cancel safety`).
struct QueueUnlockOnDrop<'c> {
    conn: Option<&'c mut AsyncPgConnection>,
    req: Request,
}

impl Drop for QueueUnlockOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            tracing::warn!(key = %self.req.key, "advisory lock acquire cancelled after sending; queueing the matching unlock behind it");
            queue(conn, &sql::unlock_literal(self.req.mode, self.req.key));
        }
    }
}

async fn acquire_borrowed(
    conn: &mut AsyncPgConnection,
    req: Request,
) -> Result<Option<AsyncLockGuard<'_>>, Error> {
    req.millis()?;
    let mut pending = QueueUnlockOnDrop {
        conn: Some(conn),
        req,
    };
    let result = lock(
        pending.conn.as_deref_mut().expect("armed"),
        Scope::Session,
        &req,
    )
    .await;
    let conn = pending.conn.take().expect("armed");
    Ok(result?.then(|| AsyncLockGuard::new(conn, req.key, req.mode)))
}

/// diesel-async's own bookkeeping: how deep is the open transaction? No round trip.
pub(crate) fn transaction_depth(conn: &mut AsyncPgConnection) -> Result<u32, Error> {
    AnsiTransactionManager::transaction_manager_status_mut(conn)
        .transaction_depth()
        .map(|d| d.map_or(0, |d| d.get()))
        .map_err(Error::Database)
}

/// Send one acquire; `Ok(true)` when granted.
pub(crate) async fn lock(
    conn: &mut AsyncPgConnection,
    scope: Scope,
    req: &Request,
) -> Result<bool, Error> {
    let ms = req.millis()?;
    let result = match (req.how, ms) {
        (How::Timeout(_), Some(ms)) if transaction_depth(conn)? > 0 => {
            lock_in_savepoint(conn, scope, req, ms).await
        }
        _ => req
            .lock_stmt(scope, ms)
            .get_async(conn)
            .await
            .map_err(|e| req.classify(e)),
    };
    // 55P03 can come with the lock granted in the same instant; see `crate::conn::lock`.
    let locked = match result {
        Err(Error::Timeout { .. })
            if scope == Scope::Session && held(conn, req.key, req.mode).await? =>
        {
            tracing::debug!(key = %req.key, "lock_timeout fired as the lock was granted; keeping it");
            true
        }
        other => other?,
    };
    tracing::debug!(key = %req.key, mode = req.mode.as_str(), ?scope, locked, "advisory lock");
    Ok(locked)
}

async fn lock_in_savepoint(
    conn: &mut AsyncPgConnection,
    scope: Scope,
    req: &Request,
    ms: i32,
) -> Result<bool, Error> {
    match conn.batch_execute(&req.savepoint_batch(scope, ms)).await {
        Ok(()) => {
            tracing::debug!(key = %req.key, ?scope, "advisory lock (in savepoint)");
            Ok(true)
        }
        Err(err) => {
            if let Err(rollback) = conn.batch_execute(SAVEPOINT_ROLLBACK).await {
                tracing::warn!(key = %req.key, error = %rollback, "could not roll back the lock attempt's savepoint; the transaction stays aborted");
                return Err(Error::Database(err));
            }
            Err(req.classify(err))
        }
    }
}

/// Release one session-level hold: `Ok(false)` if the server says it was not held.
pub(crate) async fn unlock(
    conn: &mut AsyncPgConnection,
    key: Key,
    mode: Mode,
) -> Result<bool, Error> {
    let unlocked = unlock_stmt(key, mode)
        .get_async(conn)
        .await
        .map_err(|e| crate::error::classify(e, key, None))?;
    tracing::debug!(key = %key, mode = mode.as_str(), unlocked, "advisory unlock");
    Ok(unlocked)
}

pub(crate) async fn held(
    conn: &mut AsyncPgConnection,
    key: Key,
    mode: Mode,
) -> Result<bool, Error> {
    held_stmt(key, mode)
        .get_async(conn)
        .await
        .map_err(|e| crate::error::classify(e, key, None))
}

pub(crate) async fn locks(conn: &mut AsyncPgConnection) -> Result<Vec<LockInfo>, Error> {
    Ok(decode_locks(locks_stmt().load::<LocksRow>(conn).await?))
}

/// Mark the connection broken for diesel-async and its pools (`is_broken()` → bb8's
/// `has_broken`, deadpool's `recycle`), and make `transaction()` fail with
/// `BrokenTransactionManager`.
pub(crate) fn mark_broken(conn: &mut AsyncPgConnection) {
    AnsiTransactionManager::transaction_manager_status_mut(conn).set_in_error();
}

/// Hand a simple-protocol statement to the connection without waiting for its answer.
///
/// The first poll of diesel-async's `batch_execute` runs tokio-postgres's
/// `simple_query::batch_execute` up to `InnerClient::send`, an `unbounded_send` into the channel
/// of the connection's background task; nothing before it awaits. Dropping the future then only
/// drops the response receiver: the background task still writes the request, and discards the
/// answer (`Connection::poll_read` keeps paging through responses whose receiver hung up). So the
/// statement runs, in order after everything sent before it, as long as the connection lives.
pub(crate) fn queue(conn: &AsyncPgConnection, sql: &str) {
    let mut shared = conn;
    let fut = pin!(SimpleAsyncConnection::batch_execute(&mut shared, sql));
    match fut.poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(Err(e)) => {
            tracing::warn!(error = %e, sql, "could not queue statement; the connection is closed (its session and locks are gone)");
        }
        Poll::Ready(Ok(())) | Poll::Pending => {}
    }
}
