//! Transaction-scope locks: the [`XactLockExt`] trait.

use std::time::Duration;

use advisory_common::Key;
use advisory_common::protocol::{self, Acquire, After, Request};
use advisory_common::sql::{Mode, Wait};
use sqlx::{Connection, PgConnection};

use crate::driver;
use crate::error::{Error, from_failure, refused};

/// Transaction-level advisory locks (`pg_advisory_xact_lock` and friends), released by the
/// transaction's COMMIT or ROLLBACK; there is no unlock and no guard.
///
/// Implemented for `&mut PgConnection`, so it works on a `Transaction<'_, Postgres>` (and on a
/// `PoolConnection` or `PgConnection` inside a transaction) through deref.
///
/// **Outside a transaction** every method returns [`Error::NotInTransaction`] without sending
/// anything: in autocommit PostgreSQL would release the lock the instant it was taken.
/// "Inside a transaction" is sqlx's own bookkeeping (`Connection::is_in_transaction`, i.e. a
/// `Transaction` opened through sqlx is alive on the connection); no round trip. A transaction
/// opened with a raw `BEGIN` through `execute` is not seen by sqlx, and so not by this check.
///
/// # Cancel safety
/// Cancel safe in the sense that matters: a lock granted after the future was dropped is a
/// transaction lock, so it ends with the transaction (a dropped sqlx `Transaction` rolls back).
/// Until then the connection still carries the in-flight request; sqlx reads its reply on the
/// connection's next use. A timed attempt cancelled mid-flight may leave its savepoint behind
/// (and, if it then timed out on the server, the transaction aborted); roll back in that case.
pub trait XactLockExt: Sized + crate::sealed::Sealed {
    advisory_common::__xact_methods! { decl async Error;
        /// Take the exclusive transaction lock on `key`, waiting as long as it takes.
        ///
        /// ```
        /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// # let pool = sqlx::PgPool::connect(advisory_harness::db().url()).await?;
        /// use sqlx_advisory::XactLockExt;
        /// let mut tx = pool.begin().await?;
        /// tx.xact_lock("orders:42").await?;
        /// tx.commit().await?; // releases it
        /// # Ok(()) }
        /// ```
        xact_lock;

        /// Take the shared transaction lock on `key`, waiting as long as it takes.
        ///
        /// ```
        /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// # let pool = sqlx::PgPool::connect(advisory_harness::db().url()).await?;
        /// use sqlx_advisory::{Error, XactLockExt};
        /// let mut conn = pool.acquire().await?;
        /// // not in a transaction: refused, nothing sent
        /// assert!(matches!(conn.xact_lock_shared(1_i64).await, Err(Error::NotInTransaction { .. })));
        /// let mut tx = pool.begin().await?;
        /// tx.xact_lock_shared(1_i64).await?;
        /// tx.rollback().await?; // also releases it
        /// # Ok(()) }
        /// ```
        xact_lock_shared;

        /// Take the exclusive transaction lock on `key` if it is free right now; `false` if not. Never
        /// waits, and a `false` leaves the transaction untouched.
        ///
        /// ```
        /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// # let pool = sqlx::PgPool::connect(advisory_harness::db().url()).await?;
        /// use sqlx_advisory::XactLockExt;
        /// let mut tx = pool.begin().await?;
        /// assert!(tx.try_xact_lock((5, 6)).await?);
        /// tx.commit().await?;
        /// # Ok(()) }
        /// ```
        try_xact_lock;

        /// Take the shared transaction lock on `key` if no exclusive holder has it right now.
        ///
        /// ```
        /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// # let pool = sqlx::PgPool::connect(advisory_harness::db().url()).await?;
        /// use sqlx_advisory::XactLockExt;
        /// let mut tx = pool.begin().await?;
        /// assert!(tx.try_xact_lock_shared("cfg").await?);
        /// # Ok(()) }
        /// ```
        try_xact_lock_shared;

        /// Take the exclusive transaction lock on `key`, waiting at most `timeout`, else
        /// [`Error::Timeout`]. The attempt runs in a savepoint (one round trip), so a timeout leaves
        /// the caller's transaction usable and its `lock_timeout` unchanged.
        ///
        /// ```
        /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// # let pool = sqlx::PgPool::connect(advisory_harness::db().url()).await?;
        /// use std::time::Duration;
        /// use sqlx_advisory::XactLockExt;
        /// let mut tx = pool.begin().await?;
        /// tx.xact_lock_timeout(11_i64, Duration::from_secs(2)).await?;
        /// tx.commit().await?;
        /// # Ok(()) }
        /// ```
        xact_lock_timeout;

        /// Take the shared transaction lock on `key`, waiting at most `timeout`; as
        /// [`xact_lock_timeout`](Self::xact_lock_timeout).
        ///
        /// ```
        /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// # let pool = sqlx::PgPool::connect(advisory_harness::db().url()).await?;
        /// use std::time::Duration;
        /// use sqlx_advisory::XactLockExt;
        /// let mut tx = pool.begin().await?;
        /// tx.xact_lock_shared_timeout(11_i64, Duration::from_secs(2)).await?;
        /// # Ok(()) }
        /// ```
        xact_lock_shared_timeout;
    }
}

async fn xact(
    conn: &mut PgConnection,
    key: Key,
    mode: Mode,
    wait: Wait,
    timeout: Option<Duration>,
) -> Result<bool, Error> {
    protocol::xact_allowed(conn.is_in_transaction()).map_err(|r| refused(r, key))?;
    let req = Request::new(key, mode, wait, timeout)?;
    let mut acquire = Acquire::xact(req);
    let first = acquire.start();
    let finish = driver::drive(conn, &mut acquire, first).await;
    if finish.after == After::TransactionAborted {
        tracing::warn!(%key, "could not roll back the advisory-lock savepoint; the transaction is aborted");
    }
    let locked = finish.outcome.map_err(|f| from_failure(f, &req))?;
    if locked {
        tracing::debug!(%key, mode = mode.as_str(), "transaction advisory lock acquired");
    }
    Ok(locked)
}

impl XactLockExt for &mut PgConnection {
    advisory_common::__xact_methods!(async xact, Error);
}
