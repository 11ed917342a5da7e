//! The r2d2 pool guard: [`R2d2LockGuard`].

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use advisory_common::protocol::Request;
use advisory_common::sql::{Mode, Scope, Wait};
use advisory_common::{Key, LockInfo, LockMode};
use diesel::PgConnection;
use diesel::r2d2::{ConnectionManager, Pool, PooledConnection};

use crate::error::Error;
use crate::sync::driver::{lock, locks, mark_broken, session_allowed};
use crate::sync::guard::Held;
use crate::sync::inspect::AdvisoryLocksExt;
use crate::sync::session::LockExt;

type R2d2Conn = PooledConnection<ConnectionManager<PgConnection>>;

/// A session lock held on a connection checked out of an r2d2 pool, from
/// [`LockExt`] on `&r2d2::Pool<ConnectionManager<PgConnection>>`.
///
/// The guard **owns** the pooled connection (it is `'static` and `Send`) and derefs to it, so the
/// lock can be held for a whole workflow, across threads, while the pool serves everyone else.
///
/// # Release
///
/// * [`R2d2LockGuard::release`] unlocks, then returns the connection to the pool.
/// * **Drop** unlocks synchronously, then returns the connection. If the unlock fails, the
///   connection is marked broken first (`set_in_error` on its transaction manager) and r2d2's
///   `has_broken` check discards it at check-in: closing the session releases the lock, and the
///   next checkout never receives a connection holding it.
/// * During a panic, r2d2 discards every connection returned while the thread is panicking
///   (`ConnectionManager::has_broken` checks `std::thread::panicking()`).
///
/// ```
/// use diesel::prelude::*;
/// use diesel::r2d2::{ConnectionManager, Pool};
/// use diesel_advisory::prelude::*;
/// # let url = advisory_harness::db().url();
///
/// let pool = Pool::builder().max_size(2).build(ConnectionManager::<PgConnection>::new(url))?;
/// let guard = pool.advisory_lock("orders:42")?;
/// std::thread::spawn(move || {
///     // the lock travels with its connection
///     guard.release()
/// }).join().unwrap()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "the lock is released when the guard is dropped"]
#[derive(Debug)]
pub struct R2d2LockGuard(Held<R2d2Conn>);

impl R2d2LockGuard {
    /// The locked key.
    pub fn key(&self) -> Key {
        self.0.key()
    }

    /// Exclusive or shared.
    pub fn mode(&self) -> LockMode {
        self.0.mode()
    }

    /// `true` for a shared lock, `false` for an exclusive one.
    pub fn is_shared(&self) -> bool {
        self.0.is_shared()
    }

    /// Does the session still hold the lock? Asks `pg_locks`.
    pub fn is_held(&mut self) -> Result<bool, Error> {
        self.0.is_held()
    }

    /// Unlock now, report the server's answer ([`Error::NotHeld`]), and return the connection to
    /// the pool (discarded instead if the unlock failed).
    pub fn release(self) -> Result<(), Error> {
        self.0.release()
    }
}

impl Deref for R2d2LockGuard {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        self.0.conn()
    }
}

impl DerefMut for R2d2LockGuard {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.0.conn_mut()
    }
}

impl AdvisoryLocksExt for &Pool<ConnectionManager<PgConnection>> {
    fn advisory_locks(self) -> Result<Vec<LockInfo>, Error> {
        let mut conn = self.get().map_err(Error::pool)?;
        locks(&mut conn)
    }
}

impl LockExt for &Pool<ConnectionManager<PgConnection>> {
    type Guard = R2d2LockGuard;

    advisory_common::__lock_methods!(sync acquire_r2d2, Error);
}

/// Check out, then lock. A connection whose acquire failed goes back to the pool (a failed or
/// `false` lock statement leaves no lock behind: a session holds nothing it was not granted),
/// unless the outcome is unknown (a timed acquire whose post-timeout `held` check failed): then it
/// is marked broken, so r2d2 discards it.
fn acquire_r2d2(
    pool: &Pool<ConnectionManager<PgConnection>>,
    key: Key,
    mode: Mode,
    wait: Wait,
    timeout: Option<Duration>,
) -> Result<Option<R2d2LockGuard>, Error> {
    let req = Request::new(key, mode, wait, timeout)?;
    let mut conn = pool.get().map_err(Error::pool)?;
    session_allowed(&mut conn, key)?;
    match lock(&mut conn, Scope::Session, &req) {
        Ok(locked) => Ok(locked.then(|| R2d2LockGuard(Held::new(conn, key, mode)))),
        Err(failed) => {
            if failed.maybe_held {
                tracing::warn!(%key, "timed acquire of unknown outcome; discarding the connection");
                mark_broken(&mut conn);
            }
            Err(failed.error)
        }
    }
}

const _: () = {
    const fn is_send<T: Send + 'static>() {}
    is_send::<R2d2LockGuard>();
};
