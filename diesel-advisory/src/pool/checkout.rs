//! What the bb8 and deadpool guards share: an owned checkout that is either returned healthy or
//! discarded, never returned holding a lock.

use std::fmt;
use std::ops::{Deref, DerefMut};

use advisory_common::Key;
use advisory_common::protocol::Request;
use advisory_common::sql::{Mode, Scope};
use diesel_async::AsyncPgConnection;
use tokio::runtime::Handle;

use crate::r#async::driver::{held, lock, session_allowed, unlock};
use crate::r#async::holds::Hold;
use crate::error::{Error, Failed};

/// An owned, `'static` pool checkout of an `AsyncPgConnection`: bb8's `PooledConnection` or
/// deadpool's `Object`. Implemented by this crate only (its module is private).
pub trait Checkout: DerefMut<Target = AsyncPgConnection> + Send + Sized + 'static {
    /// Close the connection instead of returning it to the pool (its session, and every lock it
    /// holds, ends with it). Must not need a runtime.
    fn discard(self);
}

/// Discards the checkout if dropped while still holding it (an acquire or release future
/// dropped after sending, a release task dropped unfinished or never run by a runtime that is
/// shutting down or gone).
struct DiscardOnDrop<C: Checkout> {
    conn: Option<C>,
    /// Fired at the server when discarding, so a backend blocked in a lock wait (which does not
    /// notice its client going away) stops waiting and ends.
    cancel: Option<(Handle, tokio_postgres::CancelToken)>,
    key: Key,
}

impl<C: Checkout> DiscardOnDrop<C> {
    fn conn(&mut self) -> &mut AsyncPgConnection {
        self.conn.as_deref_mut().expect("armed")
    }

    fn disarm(mut self) -> C {
        self.conn.take().expect("armed")
    }
}

impl<C: Checkout> Drop for DiscardOnDrop<C> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        tracing::warn!(key = %self.key, "pooled connection's advisory lock state unknown (a call cancelled or failed mid-flight, or its release task never ran); discarding the connection instead of returning it to the pool");
        if let Some((handle, token)) = self.cancel.take() {
            handle.spawn(async move {
                if let Err(e) = token.cancel_query(tokio_postgres::NoTls).await {
                    tracing::warn!(error = %e, "could not send the cancel request");
                }
            });
        }
        conn.discard();
    }
}

/// Check the lock on an owned checkout. Dropped after the statement may have been sent, the
/// checkout is discarded and the server-side wait cancelled; so is a checkout whose timed acquire
/// has an unknown outcome (the post-timeout `held` check failed, the lock may be held).
pub(crate) async fn acquire<C: Checkout>(
    mut conn: C,
    req: Request,
) -> Result<Option<AsyncPoolLockGuard<C>>, Error> {
    session_allowed(&mut conn, req.key())?;
    let handle = Handle::try_current().ok();
    let cancel = handle.clone().map(|h| (h, conn.cancel_token()));
    let mut armed = DiscardOnDrop {
        conn: Some(conn),
        cancel,
        key: req.key(),
    };
    let locked = match lock(armed.conn(), Scope::Session, &req).await {
        // `armed` discards the checkout on the way out
        Err(Failed {
            error,
            maybe_held: true,
        }) => return Err(error),
        // The statement finished: whatever it did is known, the connection is in a clean state.
        result => result.map_err(|f| f.error),
    };
    let conn = armed.disarm();
    Ok(locked?.then(|| AsyncPoolLockGuard {
        conn: Some(conn),
        key: req.key(),
        mode: req.mode(),
        handle,
        _hold: Hold::new(req.key(), req.mode()),
    }))
}

/// A session lock held on a connection checked out of a diesel-async pool, from [`AsyncLockExt`]
/// on `&bb8::Pool<AsyncPgConnection>` ([`Bb8LockGuard`]) or `&deadpool::Pool<AsyncPgConnection>`
/// ([`DeadpoolLockGuard`]): one guard for both pools, which differ only in how a checkout is
/// taken and discarded.
///
/// The guard owns the checkout (`'static`, `Send`: keep it for a whole workflow, across `.await`s
/// and into `tokio::spawn`) and derefs to the connection.
///
/// # Release
///
/// * [`release`](Self::release) unlocks and returns the connection to the pool.
/// * **Drop** spawns a task (on the runtime it is dropped on, else the one the lock was taken
///   on) that unlocks and then returns the connection. The checkout is armed before it is handed
///   to that task: if the unlock fails or answers "not held", or the task is dropped unfinished or
///   never runs at all (that runtime has shut down), the connection is discarded instead of
///   reused, and closing the session releases the lock. Outside any runtime (and with the lock's
///   runtime gone) the connection is discarded at once. Each pool's guard says how it discards.
///
/// [`AsyncLockExt`]: crate::AsyncLockExt
/// [`Bb8LockGuard`]: crate::Bb8LockGuard
/// [`DeadpoolLockGuard`]: crate::DeadpoolLockGuard
#[must_use = "the lock is released when the guard is dropped"]
pub struct AsyncPoolLockGuard<C: Checkout> {
    conn: Option<C>,
    key: Key,
    mode: Mode,
    /// The runtime the lock was taken on, for the drop-time release task.
    handle: Option<Handle>,
    _hold: Hold,
}

impl<C: Checkout> AsyncPoolLockGuard<C> {
    /// The locked key.
    pub fn key(&self) -> Key {
        self.key
    }

    /// Exclusive or shared.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// `true` for a shared lock, `false` for an exclusive one.
    pub fn is_shared(&self) -> bool {
        self.mode == Mode::Shared
    }

    fn conn_mut(&mut self) -> &mut AsyncPgConnection {
        self.conn
            .as_deref_mut()
            .expect("present until release/drop")
    }

    /// Does the session still hold the lock? Asks `pg_locks`.
    pub async fn is_held(&mut self) -> Result<bool, Error> {
        let (key, mode) = (self.key, self.mode);
        held(self.conn_mut(), key, mode).await
    }

    /// Unlock, report the server's answer ([`Error::NotHeld`]), and return the connection to the
    /// pool (discarded instead if the unlock did not succeed).
    ///
    /// # Cancel safety
    ///
    /// Dropped half-way, the connection is discarded: its session ends and the lock with it.
    pub async fn release(mut self) -> Result<(), Error> {
        let conn = self.conn.take().expect("present until release/drop");
        let armed = DiscardOnDrop {
            conn: Some(conn),
            cancel: None,
            key: self.key,
        };
        release(armed, self.mode).await
    }
}

impl<C: Checkout> Deref for AsyncPoolLockGuard<C> {
    type Target = AsyncPgConnection;

    fn deref(&self) -> &AsyncPgConnection {
        self.conn.as_deref().expect("present until release/drop")
    }
}

impl<C: Checkout> DerefMut for AsyncPoolLockGuard<C> {
    fn deref_mut(&mut self) -> &mut AsyncPgConnection {
        self.conn_mut()
    }
}

/// Unlock, then return the checkout to the pool; discard it if the unlock did not succeed or
/// this future is dropped half-way (`armed` discards it unless disarmed).
async fn release<C: Checkout>(mut armed: DiscardOnDrop<C>, mode: Mode) -> Result<(), Error> {
    let key = armed.key;
    match unlock(armed.conn(), key, mode).await {
        Ok(true) => {
            drop(armed.disarm());
            Ok(())
        }
        // `armed` discards the checkout on the way out: its lock state is not what we expected.
        Ok(false) => Err(Error::NotHeld { key }),
        Err(e) => Err(e),
    }
}

impl<C: Checkout> Drop for AsyncPoolLockGuard<C> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        let (key, mode) = (self.key, self.mode);
        // Armed before it is handed to a task: a task that never runs (spawned on a runtime that
        // has shut down, which drops it unpolled) discards the checkout on drop instead of
        // returning it to the pool holding the lock.
        let armed = DiscardOnDrop {
            conn: Some(conn),
            cancel: None,
            key,
        };
        // The runtime we are on, else the one the lock was taken on (the guard may be dropped on
        // a plain thread); the connection's own task may live on a third one, which is fine.
        match Handle::try_current().ok().or_else(|| self.handle.clone()) {
            Some(handle) => {
                tracing::debug!(key = %key, "pooled advisory lock guard dropped; releasing in a spawned task");
                handle.spawn(async move {
                    if let Err(e) = release(armed, mode).await {
                        tracing::warn!(key = %key, error = %e, "drop-time release failed; the connection was discarded instead of reused");
                    }
                });
            }
            None => {
                tracing::warn!(key = %key, "pooled advisory lock guard dropped outside a tokio runtime; discarding its connection (closing the session releases the lock)");
                drop(armed);
            }
        }
    }
}

impl<C: Checkout> fmt::Debug for AsyncPoolLockGuard<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncPoolLockGuard")
            .field("key", &self.key)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}
