//! The bb8 pool guard: [`Bb8LockGuard`].

use std::time::Duration;

use advisory_common::protocol::Request;
use advisory_common::sql::{Mode, Wait};
use advisory_common::{Key, LockInfo};
use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::bb8::Pool;

use super::checkout::{AsyncPoolLockGuard, Checkout, acquire};
use crate::r#async::driver::{locks, mark_broken};
use crate::r#async::inspect::AsyncAdvisoryLocksExt;
use crate::r#async::session::AsyncLockExt;
use crate::error::Error;

type Bb8Conn = bb8::PooledConnection<'static, AsyncDieselConnectionManager<AsyncPgConnection>>;

impl Checkout for Bb8Conn {
    /// `set_in_error` makes `AsyncPgConnection::is_broken()` true, so bb8's `put_back` (via
    /// `ManageConnection::has_broken`) drops it instead of returning it to the idle set.
    fn discard(mut self) {
        mark_broken(&mut self);
        drop(self);
    }
}

/// A session lock held on a connection checked out of a diesel-async bb8 pool, from
/// [`AsyncLockExt`] on `&bb8::Pool<AsyncPgConnection>`.
///
/// The guard owns the checkout (`get_owned`: `'static`, `Send`), derefs to the connection, and
/// can be kept for a whole workflow, across `.await`s and into `tokio::spawn`, while the pool
/// keeps serving everyone else.
///
/// # Release
///
/// * [`Bb8LockGuard::release`] unlocks and returns the connection to the pool.
/// * **Drop** spawns a task (on the runtime it is dropped on, else the one the lock was taken
///   on) that unlocks and then returns the connection. The checkout is armed before it is handed
///   to that task: if the unlock fails or answers "not held", or the task is dropped unfinished or
///   never runs at all (that runtime has shut down), the connection is marked broken and bb8
///   closes it instead of reusing it: closing the session releases the lock. So a guard that
///   outlives the runtime it was acquired on, while the pool lives on, never returns its
///   connection holding the lock. Outside any runtime (and with the lock's runtime gone) the
///   connection is discarded at once. (bb8 itself spawns a task when a discarded connection
///   takes the pool below `min_idle`; keep `min_idle` unset if you drop guards outside a
///   runtime.)
/// * If the connection is left inside a transaction (a `transaction(..)` future on the guard
///   was cancelled, say), bb8 discards it on its return: diesel-async reports it broken.
///
/// ```
/// use diesel_async::AsyncPgConnection;
/// use diesel_async::pooled_connection::AsyncDieselConnectionManager;
/// use diesel_async::pooled_connection::bb8::Pool;
/// use diesel_advisory::prelude::*;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let url = advisory_harness::db().url();
/// let pool = Pool::builder()
///     .max_size(2)
///     .build(AsyncDieselConnectionManager::<AsyncPgConnection>::new(url))
///     .await?;
///
/// let guard = pool.advisory_lock("orders:42").await?;
/// tokio::spawn(async move {
///     // ... a long workflow; other tasks keep using `pool` ...
///     guard.release().await
/// })
/// .await??;
/// # Ok(())
/// # }
/// ```
pub type Bb8LockGuard = AsyncPoolLockGuard<Bb8Conn>;

impl AsyncAdvisoryLocksExt for &Pool<AsyncPgConnection> {
    async fn advisory_locks(self) -> Result<Vec<LockInfo>, Error> {
        let mut conn = self.get().await.map_err(Error::pool)?;
        locks(&mut conn).await
    }
}

impl AsyncLockExt for &Pool<AsyncPgConnection> {
    type Guard = Bb8LockGuard;

    advisory_common::__lock_methods!(async acquire_bb8, Error);
}

async fn acquire_bb8(
    pool: &Pool<AsyncPgConnection>,
    key: Key,
    mode: Mode,
    wait: Wait,
    timeout: Option<Duration>,
) -> Result<Option<Bb8LockGuard>, Error> {
    let req = Request::new(key, mode, wait, timeout)?;
    let conn = pool.get_owned().await.map_err(Error::pool)?;
    acquire(conn, req).await
}

const _: () = {
    const fn is_send<T: Send + 'static>() {}
    is_send::<Bb8LockGuard>();
};
