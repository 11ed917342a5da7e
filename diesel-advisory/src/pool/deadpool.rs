//! The deadpool pool guard: [`DeadpoolLockGuard`].

use std::time::Duration;

use advisory_common::protocol::Request;
use advisory_common::sql::{Mode, Wait};
use advisory_common::{Key, LockInfo};
use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::deadpool::{Object, Pool};

use super::checkout::{AsyncPoolLockGuard, Checkout, acquire};
use crate::r#async::driver::{locks, mark_broken};
use crate::r#async::inspect::AsyncAdvisoryLocksExt;
use crate::r#async::session::AsyncLockExt;
use crate::error::Error;

type DeadpoolConn = Object<AsyncPgConnection>;

impl Checkout for DeadpoolConn {
    /// deadpool only checks `is_broken()` when a connection is checked out *again* (`recycle`),
    /// so a broken connection would sit idle in the pool, session and locks included, until then.
    /// `Object::take` detaches it from the pool instead, and dropping it closes the session now.
    fn discard(self) {
        let mut conn = Object::take(self);
        mark_broken(&mut conn);
        drop(conn);
    }
}

/// A session lock held on a connection checked out of a diesel-async deadpool pool, from
/// [`AsyncLockExt`] on `&deadpool::Pool<AsyncPgConnection>`.
///
/// The guard owns the `Object` (`'static`, `Send`) and derefs to the connection.
///
/// # Release
///
/// * [`DeadpoolLockGuard::release`] unlocks and returns the connection to the pool.
/// * **Drop** spawns a task (on the runtime it is dropped on, else the one the lock was taken
///   on) that unlocks and then returns the connection; the checkout is armed before it is handed
///   to that task: if the unlock fails, or the task is dropped unfinished or never runs (that
///   runtime has shut down), the connection is detached from the pool (`Object::take`) and
///   closed, which releases the lock. Outside any runtime (and with the lock's runtime gone) it
///   is detached and closed at once.
/// * A connection left inside a transaction (or marked broken) goes back to the pool and is
///   discarded by deadpool's `recycle` at the next checkout (it checks `is_broken()`), never
///   handed out; until then its session lives on, holding whatever that open transaction holds.
///
/// ```
/// use diesel_async::AsyncPgConnection;
/// use diesel_async::pooled_connection::AsyncDieselConnectionManager;
/// use diesel_async::pooled_connection::deadpool::Pool;
/// use diesel_advisory::prelude::*;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let url = advisory_harness::db().url();
/// let pool = Pool::builder(AsyncDieselConnectionManager::<AsyncPgConnection>::new(url))
///     .max_size(2)
///     .build()?;
///
/// let guard = pool.advisory_lock_shared("reports").await?;
/// assert!(guard.is_shared());
/// guard.release().await?;
/// # Ok(())
/// # }
/// ```
pub type DeadpoolLockGuard = AsyncPoolLockGuard<DeadpoolConn>;

impl AsyncAdvisoryLocksExt for &Pool<AsyncPgConnection> {
    async fn advisory_locks(self) -> Result<Vec<LockInfo>, Error> {
        let mut conn = self.get().await.map_err(Error::pool)?;
        locks(&mut conn).await
    }
}

impl AsyncLockExt for &Pool<AsyncPgConnection> {
    type Guard = DeadpoolLockGuard;

    advisory_common::__lock_methods!(async acquire_deadpool, Error);
}

async fn acquire_deadpool(
    pool: &Pool<AsyncPgConnection>,
    key: Key,
    mode: Mode,
    wait: Wait,
    timeout: Option<Duration>,
) -> Result<Option<DeadpoolLockGuard>, Error> {
    let req = Request::new(key, mode, wait, timeout)?;
    let conn = pool.get().await.map_err(Error::pool)?;
    acquire(conn, req).await
}

const _: () = {
    const fn is_send<T: Send + 'static>() {}
    is_send::<DeadpoolLockGuard>();
};
