//! Session locks on a `PgPool`: [`LockExt`] for `&PgPool` and the owning [`PoolLockGuard`].

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::time::Duration;

use advisory_common::protocol::{self, Acquire, Request};
use advisory_common::sql::{Mode, Wait};
use advisory_common::{Key, LockMode};
use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres};

use crate::driver::{self, CloseUnlessKept};
use crate::error::{Error, classify};
use crate::session::{LockExt, lock_on};

/// A session-level advisory lock held by a connection checked out of a `PgPool`; returned by the
/// [`LockExt`] methods on `&PgPool`.
///
/// Owns the checkout (`PoolConnection<Postgres>`), is `'static + Send` (move it into
/// `tokio::spawn`), and derefs to the `PgConnection`, so the locked connection can be used.
///
/// # Release
/// A pooled connection is never handed to the next user holding the lock:
/// * [`release`](Self::release) sends the unlock, waits for the server's answer, and returns the
///   connection to the pool; if it fails (or is cancelled mid-way) the connection is closed.
/// * **Drop** without `release()` (also on panic unwinding), inside a tokio runtime: the unlock is
///   queued on the connection at once, behind whatever it still owes (a failed query's answer, a
///   dropped `Transaction`'s `ROLLBACK`), and the connection is returned; sqlx's release check
///   (a `ping` that reads every pending answer) runs before it is idle in the pool again and
///   closes it if the unlock failed. If it cannot be queued (broken connection), or the runtime is
///   shutting down (sqlx's return task never runs), the connection is closed, which ends the
///   session and so releases its locks.
/// * **Drop outside any runtime**: the connection is detached from the pool and its socket closed
///   at once (the server ends the session and releases the lock); no panic, although sqlx's own
///   `PoolConnection` drop spawns a task and would panic without a runtime.
#[must_use = "dropping the guard releases the lock (asynchronously)"]
pub struct PoolLockGuard {
    conn: Option<PoolConnection<Postgres>>,
    key: Key,
    mode: Mode,
}

impl PoolLockGuard {
    fn new(conn: PoolConnection<Postgres>, key: Key, mode: Mode) -> Self {
        tracing::debug!(%key, mode = mode.as_str(), "advisory lock acquired on a pooled connection");
        PoolLockGuard {
            conn: Some(conn),
            key,
            mode,
        }
    }

    /// The key this guard holds.
    pub fn key(&self) -> Key {
        self.key
    }

    /// Exclusive or shared.
    pub fn mode(&self) -> LockMode {
        self.mode
    }

    /// `true` for a shared lock, `false` for an exclusive one.
    pub fn is_shared(&self) -> bool {
        self.mode == Mode::Shared
    }

    /// Release the lock now, wait for the server to confirm it, and return the connection to the
    /// pool. [`Error::NotHeld`] if the server says the session did not hold it (the connection is
    /// then closed rather than reused).
    ///
    /// # Cancel safety
    /// Cancel safe: if the future is dropped before the server's answer arrives, the connection is
    /// closed instead of returned, so the lock goes with the session.
    pub async fn release(mut self) -> Result<(), Error> {
        let (key, mode) = (self.key, self.mode);
        let conn = self
            .conn
            .take()
            .expect("connection present while the guard lives");
        let mut held = CloseUnlessKept::new(conn, key, true);
        // Answers still owed by the connection (a failed query's) are read first, so the unlock
        // gets its own answer.
        driver::drain(held.conn())
            .await
            .map_err(|e| classify(e, key, None))?;
        let unlock = protocol::release_statement(key, mode).into();
        match protocol::released(driver::send(held.conn(), unlock).await) {
            Ok(true) => {
                drop(held.keep());
                tracing::debug!(%key, "advisory lock released; connection returned to the pool");
                Ok(())
            }
            Ok(false) => Err(Error::NotHeld { key }),
            Err(e) => Err(classify(e, key, None)),
        }
    }

    /// Ask the server (`pg_locks`) whether this session still holds the lock, in this guard's
    /// mode.
    pub async fn is_held(&mut self) -> Result<bool, Error> {
        let key = self.key;
        let held = protocol::held_statement(key, self.mode).into();
        protocol::held(driver::send(self, held).await).map_err(|e| classify(e, key, None))
    }
}

impl Drop for PoolLockGuard {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let key = self.key;
        if tokio::runtime::Handle::try_current().is_err() {
            tracing::warn!(%key, "pool guard dropped outside a tokio runtime: closing its connection (the server releases the lock when the session ends)");
            driver::discard(conn);
            return;
        }
        // Queued behind whatever the connection still owes; sqlx's release check (`ping`, which
        // reads every pending answer) runs before the connection is idle in the pool again, and
        // closes it if the unlock failed.
        match driver::queue_unlock(&mut conn, self.mode, key) {
            driver::Queued::Yes => drop(conn),
            driver::Queued::No => driver::discard(conn),
        }
    }
}

impl Deref for PoolLockGuard {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        self.conn
            .as_ref()
            .expect("connection present while the guard lives")
    }
}

impl DerefMut for PoolLockGuard {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.conn
            .as_mut()
            .expect("connection present while the guard lives")
    }
}

impl fmt::Debug for PoolLockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolLockGuard")
            .field("key", &self.key)
            .field("shared", &self.is_shared())
            .finish_non_exhaustive()
    }
}

async fn acquire(
    pool: &PgPool,
    key: Key,
    mode: Mode,
    wait: Wait,
    timeout: Option<Duration>,
) -> Result<Option<PoolLockGuard>, Error> {
    // Validate the timeout before checking anything out.
    let req = Request::new(key, mode, wait, timeout)?;
    let conn = pool.acquire().await.map_err(Error::Pool)?;
    // Not armed until the lock statement is about to be sent: dropped before that, the checkout
    // simply goes back to the pool.
    let mut held = CloseUnlessKept::new(conn, key, false);
    let (conn, armed) = held.parts();
    let mut acquire = Acquire::session(req);
    let first = acquire.start();
    let locked = lock_on(conn, armed, acquire, first).await?;
    if locked {
        Ok(Some(PoolLockGuard::new(held.keep(), key, mode)))
    } else {
        Ok(None)
    }
}

impl LockExt for &PgPool {
    type Guard = PoolLockGuard;

    advisory_common::__lock_methods!(async acquire, Error);
}
