//! Transactions that start out holding a transaction-level lock, in one round trip, for
//! diesel-async's `AsyncPgConnection`: [`AsyncBeginXactLockExt`].

use std::future::Future;
use std::time::Duration;

use advisory_common::Key;
use advisory_common::protocol::{self, Request};
use advisory_common::sql::{Mode, ROLLBACK, Wait};
use diesel::result::Error as DieselError;
use diesel_async::{AnsiTransactionManager, AsyncPgConnection, TransactionManager};

use super::driver::{mark_broken, queue, transaction_depth};
use crate::error::{Error, classify};

/// The closure bound of diesel-async's `AsyncConnection::transaction`, restated: an async
/// closure taking the connection whose future is `Send`.
///
/// It cannot be named outside this crate and is implemented for every such closure; it exists
/// only because the future of an `AsyncFnOnce` cannot be bounded by `Send` directly on stable
/// Rust (diesel-async uses the same helper, `transaction_manager::AsyncFunc`, which it does not
/// export). Write `async |conn| { ... }` as for `conn.transaction(..)`.
pub trait AsyncFunc<T, R>:
    AsyncFnOnce(T) -> R + FnOnce(T) -> <Self as AsyncFunc<T, R>>::Fut
{
    /// The closure's future.
    type Fut: Future<Output = R>;
}

impl<F, T, Fut, R> AsyncFunc<T, R> for F
where
    F: AsyncFnOnce(T) -> R + FnOnce(T) -> Fut,
    Fut: Future<Output = R>,
{
    type Fut = Fut;
}

/// The four methods, declared (`decl`, with their docs) and implemented (`impl`, forwarding to
/// [`run`] with the key converted before the future is built): the signature is written once, in
/// `@sig`. The async twin of `crate::sync::begin`'s `begin_methods!`.
macro_rules! begin_methods {
    // One signature, then `;` (a declaration) or the body; `self`, `key` and `f` come from the
    // arm that writes the body (macro hygiene).
    (@sig [$self:ident $key:ident $f:ident] [$(#[$doc:meta])*]
        $name:ident($($timeout:ident)?) $end:tt) => {
        $(#[$doc])*
        fn $name<R, E, F>(
            $self,
            $key: impl Into<Key>,
            $($timeout: Duration,)?
            $f: F,
        ) -> impl Future<Output = Result<R, E>> + Send
        where
            for<'r> F: AsyncFnOnce(&'r mut AsyncPgConnection) -> Result<R, E>
                + AsyncFunc<&'r mut AsyncPgConnection, Result<R, E>, Fut: Send>
                + Send,
            E: From<Error> + From<DieselError> + Send,
            R: Send,
        $end
    };
    (decl $($(#[$doc:meta])* $name:ident($mode:ident $(, $timeout:ident)?);)*) => {$(
        begin_methods!(@sig [self key f] [$(#[$doc])*] $name($($timeout)?) ;);
    )*};
    (impl $($name:ident($mode:ident $(, $timeout:ident)?);)*) => {$(
        begin_methods!(@sig [self key f] [] $name($($timeout)?) {
            let (wait, timeout) = begin_methods!(@wait $($timeout)?);
            run(self, key.into(), Mode::$mode, wait, timeout, f)
        });
    )*};
    (@wait) => { (Wait::Block, None) };
    (@wait $timeout:ident) => { (Wait::Timeout, Some($timeout)) };
}

/// diesel-async's `conn.transaction(..)` that starts out holding a transaction-level advisory
/// lock, with the lock and the `BEGIN` in **one round trip**: the one-call form of
/// `conn.transaction(async |c| { c.xact_lock(k).await?; ... })`, which costs a round trip more.
/// The mirror of `sqlx-advisory`'s `begin_with_xact_lock`.
///
/// Implemented for `&mut AsyncPgConnection`, and so reached from bb8 and deadpool checkouts by deref.
/// `Ok` from the closure commits, `Err` rolls back; either releases the lock.
///
/// * The statement sent instead of `BEGIN` is `SELECT pg_advisory_xact_lock(<key>); BEGIN`, one
///   simple query (see [`advisory_common::sql::lock_then_begin`]). If the lock fails
///   ([`Error::Timeout`], [`Error::Deadlock`], [`Error::LockTableFull`]), the closure does not
///   run and the connection is left idle, outside any transaction, holding nothing, its
///   `lock_timeout` unchanged.
/// * With a transaction already open (diesel-async's depth), [`Error::AlreadyInTransaction`]
///   **without sending anything**.
/// * `E` can be `diesel::result::Error` or this crate's [`Error`].
///
/// ```
/// use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
/// use diesel_advisory::prelude::*;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut conn = AsyncPgConnection::establish(advisory_harness::db().url()).await?;
///
/// conn.transaction_with_xact_lock::<_, diesel::result::Error, _>("orders:42", async |conn| {
///     diesel::sql_query("SELECT 1").execute(conn).await?; // ... read, then INSERT or UPDATE ...
///     Ok(())
/// })
/// .await?;
/// # Ok(())
/// # }
/// ```
///
/// # Cancel safety
///
/// Dropped before its first poll, the future has sent nothing. Its first poll sends the batch (or
/// returns `AlreadyInTransaction` / `InvalidTimeout` having sent nothing). Dropped after that and
/// before the transaction has been committed or rolled back (while waiting for the lock, inside
/// the closure, during COMMIT), it:
///
/// 1. **queues a `ROLLBACK`** on the connection right behind whatever is in flight (handed to
///    tokio-postgres's connection task without waiting for the answer, like the queued unlock of
///    [`AsyncLockExt`](crate::AsyncLockExt#cancel-safety)). The server runs it as soon as the
///    in-flight statement ends: a transaction that was opened, even by a lock granted later, is
///    rolled back at once and the lock released; otherwise it is a no-op (a warning).
/// 2. **marks the connection broken** for diesel-async (its transaction manager goes `InError`,
///    so `is_broken()` is true), because diesel-async's bookkeeping no longer matches the server.
///
/// What that means:
///
/// * **bb8 / deadpool checkouts** are never handed out again: bb8 closes the connection when it
///   comes back, deadpool at its next recycle (`has_broken` / `recycle` check `is_broken()`). The
///   next user gets a different connection, outside any transaction. Until a deadpool
///   connection is recycled its session lives on, but the queued `ROLLBACK` ends its transaction
///   the moment the lock is granted, so it never sits holding the lock.
/// * **A bare `AsyncPgConnection`** stays open: a statement you send next runs after the
///   in-flight one (for a waiting lock: after it is granted or times out) and after the
///   `ROLLBACK`, on a session that is outside any transaction and holds nothing. diesel-async's
///   transaction API refuses it from then on (`transaction()` and these methods fail with
///   `BrokenTransactionManager`); establish a new connection for transactions.
/// * No cancel request is sent (on a borrowed connection it could hit a later statement). A
///   backend waiting for the lock therefore keeps its place in the server's lock queue until the
///   lock is granted (then rolls back at once, or exits if its connection was closed) or its
///   `lock_timeout` fires: use the `_timeout` methods to bound that wait.
///
/// A panic inside the closure unwinds through the future and gets the same cleanup.
///
/// For comparison, diesel-async 0.9 on its own (`transaction()` dropped half-way) only makes pools
/// discard the connection: an interrupted BEGIN / COMMIT / ROLLBACK leaves its `is_broken` flag
/// set (`AnsiTransactionManager::critical_transaction_block`), an interrupted closure leaves the
/// transaction depth raised. Nothing ends the server-side transaction, which stays open, holding
/// its locks, on a bare connection, and on a deadpool connection until its next recycle.
pub trait AsyncBeginXactLockExt: Sized + crate::sealed::Sealed {
    begin_methods! { decl
        /// Run `f` in a transaction that holds `key` exclusively from its start, waiting as long as
        /// it takes for the lock; COMMIT on `Ok`, ROLLBACK on `Err`.
        ///
        /// ```
        /// # use diesel_async::{AsyncConnection, AsyncPgConnection};
        /// # use diesel_advisory::prelude::*;
        /// # #[tokio::main(flavor = "current_thread")]
        /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// # let mut conn = AsyncPgConnection::establish(advisory_harness::db().url()).await?;
        /// let got = conn
        ///     .transaction_with_xact_lock(7_i64, async |conn| conn.try_xact_lock(7_i64).await)
        ///     .await?;
        /// assert!(got, "re-entrant: the transaction already holds 7");
        /// # Ok(())
        /// # }
        /// ```
        transaction_with_xact_lock(Exclusive);

        /// Run `f` in a transaction that holds `key` in shared mode from its start, waiting as long
        /// as it takes.
        ///
        /// ```
        /// # use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
        /// # use diesel_advisory::prelude::*;
        /// # #[tokio::main(flavor = "current_thread")]
        /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// # let mut conn = AsyncPgConnection::establish(advisory_harness::db().url()).await?;
        /// conn.transaction_with_xact_lock_shared::<_, diesel::result::Error, _>("config", async |conn| {
        ///     diesel::sql_query("SELECT 1").execute(conn).await?; // readers do not exclude each other
        ///     Ok(())
        /// })
        /// .await?;
        /// # Ok(())
        /// # }
        /// ```
        transaction_with_xact_lock_shared(Shared);

        /// Run `f` in a transaction that holds `key` exclusively from its start, waiting at most
        /// `timeout` for the lock (server-side `lock_timeout`, still one round trip). After that,
        /// `E::from(`[`Error::Timeout`]`)`: the closure did not run and the connection is outside
        /// any transaction, holding nothing, its `lock_timeout` unchanged.
        ///
        /// ```
        /// # use std::time::Duration;
        /// # use diesel_async::{AsyncConnection, AsyncPgConnection};
        /// # use diesel_advisory::prelude::*;
        /// # #[tokio::main(flavor = "current_thread")]
        /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// # let mut conn = AsyncPgConnection::establish(advisory_harness::db().url()).await?;
        /// # let mut other = AsyncPgConnection::establish(advisory_harness::db().url()).await?;
        /// let _held = other.advisory_lock((4, 2)).await?; // another session holds (4, 2)
        /// let r = conn
        ///     .transaction_with_xact_lock_timeout((4, 2), Duration::from_millis(50), async |_| Ok(()))
        ///     .await;
        /// assert!(matches!(r, Err(diesel_advisory::Error::Timeout { .. })));
        /// # Ok(())
        /// # }
        /// ```
        transaction_with_xact_lock_timeout(Exclusive, timeout);

        /// Run `f` in a transaction that holds `key` in shared mode from its start, waiting at most
        /// `timeout`; see [`AsyncBeginXactLockExt::transaction_with_xact_lock_timeout`].
        ///
        /// ```
        /// # use std::time::Duration;
        /// # use diesel_async::{AsyncConnection, AsyncPgConnection};
        /// # use diesel_advisory::prelude::*;
        /// # #[tokio::main(flavor = "current_thread")]
        /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// # let mut conn = AsyncPgConnection::establish(advisory_harness::db().url()).await?;
        /// let n = conn
        ///     .transaction_with_xact_lock_shared_timeout("config", Duration::from_secs(1), async |_| {
        ///         Ok::<_, diesel_advisory::Error>(42)
        ///     })
        ///     .await?;
        /// assert_eq!(n, 42);
        /// # Ok(())
        /// # }
        /// ```
        transaction_with_xact_lock_shared_timeout(Shared, timeout);
    }
}

impl AsyncBeginXactLockExt for &mut AsyncPgConnection {
    begin_methods! { impl
        transaction_with_xact_lock(Exclusive);
        transaction_with_xact_lock_shared(Shared);
        transaction_with_xact_lock_timeout(Exclusive, timeout);
        transaction_with_xact_lock_shared_timeout(Shared, timeout);
    }
}

/// Armed from the moment the batch may be on its way until the transaction has ended; dropped
/// while armed, it cleans up as the trait's `# Cancel safety` describes.
struct RollbackOnDrop<'c> {
    conn: Option<&'c mut AsyncPgConnection>,
    key: Key,
}

impl RollbackOnDrop<'_> {
    fn conn(&mut self) -> &mut AsyncPgConnection {
        self.conn.as_deref_mut().expect("armed")
    }

    fn disarm(&mut self) {
        self.conn = None;
    }
}

impl Drop for RollbackOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            tracing::warn!(key = %self.key, "transaction_with_xact_lock cancelled after sending; queueing a ROLLBACK and marking the connection broken");
            queue(conn, ROLLBACK);
            mark_broken(conn);
        }
    }
}

/// diesel-async's `TransactionManager::transaction` (transaction_manager.rs) with the
/// lock-then-`BEGIN` batch as the begin statement (`begin_transaction_sql`, as diesel-async's
/// `TransactionBuilder::run` does), plus [`RollbackOnDrop`].
async fn run<R, E, F>(
    conn: &mut AsyncPgConnection,
    key: Key,
    mode: Mode,
    wait: Wait,
    timeout: Option<Duration>,
    f: F,
) -> Result<R, E>
where
    for<'r> F: AsyncFnOnce(&'r mut AsyncPgConnection) -> Result<R, E>
        + AsyncFunc<&'r mut AsyncPgConnection, Result<R, E>, Fut: Send>
        + Send,
    E: From<Error> + From<DieselError> + Send,
    R: Send,
{
    if transaction_depth(conn)? > 0 {
        return Err(Error::AlreadyInTransaction { key }.into());
    }
    let req = Request::new(key, mode, wait, timeout).map_err(Error::from)?;
    let sql = protocol::begin_statement(&req);
    let mut armed = RollbackOnDrop {
        conn: Some(conn),
        key,
    };
    if let Err(e) = AnsiTransactionManager::begin_transaction_sql(armed.conn(), &sql).await {
        // The batch was answered: the server rolled its implicit block back and diesel-async's
        // depth was not raised, so both agree the connection is idle.
        armed.disarm();
        return Err(classify(e, key, timeout).into());
    }
    tracing::debug!(%key, mode = mode.as_str(), "transaction begun holding the advisory lock");
    let result = match f(armed.conn()).await {
        Ok(value) => match AnsiTransactionManager::commit_transaction(armed.conn()).await {
            Ok(()) => Ok(value),
            Err(commit_error) => Err(commit_error.into()),
        },
        Err(user_error) => match AnsiTransactionManager::rollback_transaction(armed.conn()).await {
            Ok(()) => Err(user_error),
            // as diesel-async's own `transaction`: the original error is the more interesting one
            Err(DieselError::BrokenTransactionManager) => Err(user_error),
            Err(rollback_error) => Err(rollback_error.into()),
        },
    };
    armed.disarm();
    result
}
