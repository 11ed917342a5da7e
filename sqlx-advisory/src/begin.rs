//! Transactions that start out holding a transaction-level lock, in one round trip:
//! [`BeginXactLockExt`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use advisory_common::Key;
use advisory_common::protocol::{self, Request};
use advisory_common::sql::{self, Mode, Wait};
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool, Postgres, SqlSafeStr, Transaction};

use crate::error::{Error, classify, refused};

/// Open a transaction that already holds a transaction-level advisory lock, in **one round
/// trip**: the one-call form of `begin()` + [`xact_lock`](crate::XactLockExt::xact_lock)
/// (which costs two). The result is an ordinary sqlx `Transaction`; COMMIT or ROLLBACK (or
/// dropping it, which rolls back) releases the lock.
///
/// Implemented for **`&PgPool`** (→ `Transaction<'static, Postgres>`, owning a pooled connection)
/// and **`&mut PgConnection`** (→ `Transaction<'_, Postgres>`; also reached from a
/// `PoolConnection` by deref).
///
/// The statement sent is `SELECT pg_advisory_xact_lock(<key>); BEGIN` as one simple query (see
/// [`advisory_common::sql::lock_then_begin`] for why the lock comes first): if the lock fails
/// (timeout, deadlock, lock table full) PostgreSQL rolls the implicit transaction back and the
/// connection is left idle, outside any transaction, holding nothing. A connection that is
/// already inside a transaction gets [`Error::AlreadyInTransaction`] and nothing is sent (use
/// [`xact_lock`](crate::XactLockExt::xact_lock) inside it instead).
///
/// # Cancel safety
/// * **`&PgPool`: cancel safe.** Dropped while waiting for a connection, nothing was sent and
///   nothing happens. Dropped after the statement went out, a background task waits for the
///   server's answer, rolls the transaction back if it was opened, and only then returns the
///   connection to the pool: the next user never gets a connection inside a transaction or
///   holding the lock. Until the server answers (a blocking wait ends only when the lock is
///   granted), that connection stays out of the pool; bound waits with the `_timeout` methods.
/// * **`&mut PgConnection`: cancel safe until the statement is sent, not after.** If the future is
///   dropped while the server is still answering, the server completes it, and if the lock is
///   granted the connection is left **inside a transaction holding the lock** that sqlx does not
///   know about (sqlx's own `begin_with` behaves the same way). Close the connection after such a
///   cancellation, or use the pool method.
pub trait BeginXactLockExt: Sized + crate::sealed::Sealed {
    /// The transaction type: `Transaction<'static, Postgres>` for a pool,
    /// `Transaction<'c, Postgres>` for a borrowed connection.
    type Transaction;

    /// Open a transaction holding the exclusive transaction lock on `key`, waiting as long as it
    /// takes.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let pool = sqlx::PgPool::connect(advisory_harness::db().url()).await?;
    /// use sqlx_advisory::BeginXactLockExt;
    /// let mut tx = pool.begin_with_xact_lock("orders:42").await?;
    /// sqlx::query("SELECT 1").execute(&mut *tx).await?; // the read-modify-write of order 42
    /// tx.commit().await?; // releases the lock
    /// # Ok(()) }
    /// ```
    fn begin_with_xact_lock(
        self,
        key: impl Into<Key>,
    ) -> impl Future<Output = Result<Self::Transaction, Error>> + Send;

    /// Open a transaction holding the shared transaction lock on `key`, waiting as long as it
    /// takes.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let pool = sqlx::PgPool::connect(advisory_harness::db().url()).await?;
    /// use sqlx_advisory::BeginXactLockExt;
    /// let a = pool.begin_with_xact_lock_shared(8_i64).await?;
    /// let b = pool.begin_with_xact_lock_shared(8_i64).await?; // readers do not exclude each other
    /// a.rollback().await?;
    /// b.commit().await?;
    /// # Ok(()) }
    /// ```
    fn begin_with_xact_lock_shared(
        self,
        key: impl Into<Key>,
    ) -> impl Future<Output = Result<Self::Transaction, Error>> + Send;

    /// Open a transaction holding the exclusive transaction lock on `key`, waiting at most
    /// `timeout` (server-side `lock_timeout`, for the lock statement only), else
    /// [`Error::Timeout`]; after a failure the connection is outside any transaction, holds
    /// nothing, and its `lock_timeout` is unchanged.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let pool = sqlx::PgPool::connect(advisory_harness::db().url()).await?;
    /// use std::time::Duration;
    /// use sqlx_advisory::{BeginXactLockExt, Error};
    /// let held = pool.begin_with_xact_lock((4, 2)).await?;
    /// let err = pool
    ///     .begin_with_xact_lock_timeout((4, 2), Duration::from_millis(50))
    ///     .await
    ///     .unwrap_err();
    /// assert!(matches!(err, Error::Timeout { .. }));
    /// held.commit().await?;
    /// # Ok(()) }
    /// ```
    fn begin_with_xact_lock_timeout(
        self,
        key: impl Into<Key>,
        timeout: Duration,
    ) -> impl Future<Output = Result<Self::Transaction, Error>> + Send;

    /// Open a transaction holding the shared transaction lock on `key`, waiting at most
    /// `timeout`; as [`begin_with_xact_lock_timeout`](Self::begin_with_xact_lock_timeout).
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let pool = sqlx::PgPool::connect(advisory_harness::db().url()).await?;
    /// use std::time::Duration;
    /// use sqlx_advisory::BeginXactLockExt;
    /// let mut conn = pool.acquire().await?;
    /// let tx = conn.begin_with_xact_lock_shared_timeout("cfg", Duration::from_secs(1)).await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    fn begin_with_xact_lock_shared_timeout(
        self,
        key: impl Into<Key>,
        timeout: Duration,
    ) -> impl Future<Output = Result<Self::Transaction, Error>> + Send;
}

async fn begin_on(
    conn: &mut PgConnection,
    key: Key,
    mode: Mode,
    timeout: Option<Duration>,
) -> Result<Transaction<'_, Postgres>, Error> {
    protocol::begin_allowed(conn.is_in_transaction()).map_err(|r| refused(r, key))?;
    let req = Request::new(key, mode, Wait::Timeout, timeout)?;
    let statement = AssertSqlSafe(protocol::begin_statement(&req)).into_sql_str();
    let tx = conn
        .begin_with(statement)
        .await
        .map_err(|e| classify(e, key, timeout))?;
    tracing::debug!(%key, mode = mode.as_str(), "transaction opened holding the advisory lock");
    Ok(tx)
}

async fn begin_on_pool(
    pool: &PgPool,
    key: Key,
    mode: Mode,
    timeout: Option<Duration>,
) -> Result<Transaction<'static, Postgres>, Error> {
    let req = Request::new(key, mode, Wait::Timeout, timeout)?;
    // Tagged, so that a cancelled request's lock wait can be found and cancelled (see
    // `FinishOnDrop`).
    let tag = next_tag();
    let text = sql::request_tag(tag) + &protocol::begin_statement(&req);
    let statement = AssertSqlSafe(text).into_sql_str();
    let conn = pool.acquire().await.map_err(Error::Pool)?;
    // `Transaction::begin` is what `Pool::begin_with` runs after its checkout; called directly
    // so that a cancellation while waiting for the checkout (above) sends nothing.
    let begin = Transaction::begin(conn, Some(statement));
    let tx = FinishOnDrop {
        begin: Some(begin),
        key,
        cancel: Some((pool.clone(), tag)),
    }
    .await
    .map_err(|e| classify(e, key, timeout))?;
    tracing::debug!(%key, mode = mode.as_str(), "pooled transaction opened holding the advisory lock");
    Ok(tx)
}

type BeginFuture =
    Pin<Box<dyn Future<Output = Result<Transaction<'static, Postgres>, sqlx::Error>> + Send>>;

/// Drives the pooled `BEGIN`; if dropped before it finishes (the caller was cancelled), the rest
/// runs in a spawned task that rolls back whatever was opened, so the connection returns to the
/// pool outside any transaction and holding no lock.
///
/// Dropping the unfinished future itself would be wrong: sqlx's `Transaction::begin` counts the
/// transaction only once the server has answered, so its drop does not roll back, and the pooled
/// connection would be returned (after a ping that reads the pending answer) inside the
/// transaction, holding the lock.
///
/// So that a cancelled request does not keep its pooled connection while the server waits for
/// the lock (a burst of cancelled requests would starve the pool), the background task also
/// cancels that wait from a new session (`pg_cancel_backend` on the backend whose query carries
/// the request's tag, retried for up to 2 s until the wait is found or the request ends): the
/// request then fails, PostgreSQL rolls its implicit transaction back, and the connection returns
/// to the pool idle and holding nothing.
struct FinishOnDrop {
    begin: Option<BeginFuture>,
    key: Key,
    cancel: Option<(PgPool, u64)>,
}

/// A tag no other request of this process (or, with the random start, of another process) uses.
fn next_tag() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static START: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let start = *START.get_or_init(|| RandomState::new().hash_one(std::process::id()));
    start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Cancel the lock wait of the request tagged `tag` until it is found, the request is `done`, or
/// 2 s have passed.
async fn cancel_wait(pool: PgPool, tag: u64, key: Key, done: Arc<AtomicBool>) {
    let mut conn = match PgConnection::connect_with(&pool.connect_options()).await {
        Ok(conn) => conn,
        Err(error) => {
            tracing::warn!(%key, %error, "cancelled begin_with_xact_lock: cannot connect to cancel its lock wait; its connection returns when the wait ends");
            return;
        }
    };
    let prefix = sql::request_tag(tag);
    for _ in 0..100 {
        if done.load(Ordering::Acquire) {
            break;
        }
        match sqlx::query_scalar::<_, bool>(sql::CANCEL_TAGGED_WAIT)
            .bind(&prefix)
            .fetch_all(&mut conn)
            .await
        {
            Ok(signalled) if !signalled.is_empty() => {
                tracing::debug!(%key, "cancelled begin_with_xact_lock: its lock wait was cancelled");
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(error) => {
                tracing::warn!(%key, %error, "cancelled begin_with_xact_lock: cancelling its lock wait failed");
                break;
            }
        }
    }
    let _ = conn.close().await;
}

impl Future for FinishOnDrop {
    type Output = Result<Transaction<'static, Postgres>, sqlx::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let begin = self.begin.as_mut().expect("polled after completion");
        let out = std::task::ready!(begin.as_mut().poll(cx));
        self.begin = None;
        Poll::Ready(out)
    }
}

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        let Some(begin) = self.begin.take() else {
            return;
        };
        let key = self.key;
        let done = Arc::new(AtomicBool::new(false));
        let finished = done.clone();
        let finish = async move {
            match begin.await {
                Ok(tx) => match tx.rollback().await {
                    Ok(()) => {
                        tracing::debug!(%key, "cancelled begin_with_xact_lock: the transaction opened after all and was rolled back")
                    }
                    // The transaction's drop queues a rollback; the pool's release check
                    // then flushes it or closes the connection.
                    Err(error) => {
                        tracing::warn!(%key, %error, "cancelled begin_with_xact_lock: rolling back failed")
                    }
                },
                Err(error) => {
                    tracing::debug!(%key, %error, "cancelled begin_with_xact_lock: it failed on the server; nothing is held")
                }
            }
            finished.store(true, Ordering::Release);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                tracing::warn!(%key, "begin_with_xact_lock cancelled while its statement was in flight: finishing it in the background (rollback) before the connection returns to the pool");
                drop(rt.spawn(finish));
                if let Some((pool, tag)) = self.cancel.take() {
                    drop(rt.spawn(cancel_wait(pool, tag, key, done)));
                }
            }
            Err(_) => {
                // No runtime to finish it on (and sqlx's pooled-connection drop needs one): drop
                // it in a driverless runtime, where the connection is lost rather than returned.
                tracing::warn!(%key, "begin_with_xact_lock cancelled outside any runtime; dropping its connection");
                crate::driver::in_throwaway_runtime(|| drop(finish));
            }
        }
    }
}

/// The four methods of a [`BeginXactLockExt`] impl, forwarding to
/// `$begin(self, key, mode, timeout)` with the key converted before the future is built.
macro_rules! begin_methods {
    ($begin:path, $tx:ty) => {
        fn begin_with_xact_lock(
            self,
            key: impl Into<Key>,
        ) -> impl Future<Output = Result<$tx, Error>> + Send {
            $begin(self, key.into(), Mode::Exclusive, None)
        }

        fn begin_with_xact_lock_shared(
            self,
            key: impl Into<Key>,
        ) -> impl Future<Output = Result<$tx, Error>> + Send {
            $begin(self, key.into(), Mode::Shared, None)
        }

        fn begin_with_xact_lock_timeout(
            self,
            key: impl Into<Key>,
            timeout: Duration,
        ) -> impl Future<Output = Result<$tx, Error>> + Send {
            $begin(self, key.into(), Mode::Exclusive, Some(timeout))
        }

        fn begin_with_xact_lock_shared_timeout(
            self,
            key: impl Into<Key>,
            timeout: Duration,
        ) -> impl Future<Output = Result<$tx, Error>> + Send {
            $begin(self, key.into(), Mode::Shared, Some(timeout))
        }
    };
}

impl<'c> BeginXactLockExt for &'c mut PgConnection {
    type Transaction = Transaction<'c, Postgres>;

    begin_methods!(begin_on, Transaction<'c, Postgres>);
}

impl BeginXactLockExt for &PgPool {
    type Transaction = Transaction<'static, Postgres>;

    begin_methods!(begin_on_pool, Transaction<'static, Postgres>);
}
