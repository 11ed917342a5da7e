//! The diesel-async session-lock guard on a borrowed connection: [`AsyncLockGuard`].

use std::fmt;
use std::ops::{Deref, DerefMut};

use advisory_common::sql::{self, Mode};
use advisory_common::{Key, LockMode};
use diesel_async::AsyncPgConnection;

use super::driver::{
    QueueUnlockOnDrop, batch_then, held, mark_broken, queue, transaction_unsettled, unlock,
};
use super::holds::{self, Hold};
use crate::error::Error;

/// A session lock held on a borrowed `AsyncPgConnection`, from
/// [`AsyncLockExt`](crate::AsyncLockExt) on `&mut AsyncPgConnection`.
///
/// Derefs to the connection.
///
/// # Release
///
/// * [`AsyncLockGuard::release`] unlocks and reports the server's answer ([`Error::NotHeld`]); if
///   the unlock fails the connection is marked broken (diesel's transaction manager `InError`,
///   so pools discard it and `transaction()` fails) rather than silently keeping the lock.
/// * **Drop** cannot await. It hands `SELECT pg_advisory_unlock(<key>)` to the connection's
///   background task without waiting for the answer (one poll of `batch_execute`, see the
///   crate's source for why that reliably sends it). The server runs it right after whatever was
///   sent before (a pending reply, a queued `ROLLBACK`, a nested guard's unlock), so the lock is
///   gone before your next statement on the connection is answered, even if you never use the
///   connection again; nobody sees the unlock's answer, and it never answers one of yours. Without
///   a runtime (or after it shut down) the connection's task is gone, and with it the session and
///   its locks.
/// * A guard can find its connection inside a transaction when it is dropped: a diesel-async
///   `transaction(..)` future on the guard was cancelled, or a transaction was begun through the
///   `TransactionManager` by hand (session locks themselves are never taken inside one). If that
///   transaction has aborted, PostgreSQL refuses the unlock. So whenever diesel-async reports a
///   transaction open (or a `BEGIN` / `COMMIT` / `ROLLBACK` cancelled mid-flight), drop also
///   **marks the connection broken**: bb8 and deadpool discard it (closing the session releases
///   the lock), and `transaction()`, `commit` and `rollback` through diesel-async fail with
///   `BrokenTransactionManager` instead of carrying on with a session that may hold the lock.
///   A transaction opened with raw SQL (`batch_execute("BEGIN")`) is invisible to diesel-async,
///   and so to this guard: do not drop a guard inside one.
///
/// # Cancel safety of `release`
///
/// Dropped before the unlock was sent, the release future queues it instead (as drop does);
/// after that, the unlock runs anyway. Either way the lock is released exactly once.
#[must_use = "the lock is released when the guard is dropped"]
pub struct AsyncLockGuard<'c> {
    conn: Option<&'c mut AsyncPgConnection>,
    key: Key,
    mode: Mode,
    _hold: Hold,
}

impl<'c> AsyncLockGuard<'c> {
    pub(crate) fn new(conn: &'c mut AsyncPgConnection, key: Key, mode: Mode) -> Self {
        AsyncLockGuard {
            conn: Some(conn),
            key,
            mode,
            _hold: Hold::new(key, mode),
        }
    }

    /// The locked key.
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

    /// Does the session still hold the lock? Asks `pg_locks`.
    pub async fn is_held(&mut self) -> Result<bool, Error> {
        let (key, mode) = (self.key, self.mode);
        held(self, key, mode).await
    }

    /// Unlock now and report the server's answer ([`Error::NotHeld`] if the session did not hold
    /// the lock).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropped at any await point, the lock is still released exactly once (the
    /// unlock is queued if it had not been sent). When another live guard of the process holds
    /// the same key in the same mode (possibly on this connection), the release asks `pg_locks`
    /// first and then sends the unlock as one simple-protocol statement, one round trip more, so
    /// that a queued unlock can never double the one already sent.
    ///
    /// ```
    /// # use diesel_async::{AsyncConnection, AsyncPgConnection};
    /// # use diesel_advisory::prelude::*;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let mut conn = AsyncPgConnection::establish(advisory_harness::db().url()).await?;
    /// let guard = conn.advisory_lock(12_i64).await?;
    /// guard.release().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn release(mut self) -> Result<(), Error> {
        let conn = self.conn.take().expect("present until release/drop");
        let (key, mode) = (self.key, self.mode);
        // armed: until the unlock is known to be on its way, a drop queues it
        let mut pending = QueueUnlockOnDrop::new(conn, key, mode, true);
        let unlocked = if holds::holders(key, mode) > 1 {
            // another guard may hold (key, mode) on this session: a second unlock could take
            // its hold, so the unlock must be known to be sent before it is disarmed
            match held(pending.conn(), key, mode).await {
                Ok(false) => Ok(false),
                Ok(true) => {
                    let QueueUnlockOnDrop { conn, armed, .. } = &mut pending;
                    let conn = conn.as_deref_mut().expect("present until dropped");
                    batch_then(conn, &sql::unlock_literal(mode, key), || *armed = false)
                        .await
                        .map(|()| true)
                        .map_err(|e| crate::error::classify(e, key, None))
                }
                Err(e) => Err(e),
            }
        } else {
            // no other guard holds (key, mode): a duplicate unlock would find nothing to take
            let r = unlock(pending.conn(), key, mode).await;
            pending.armed = false;
            r
        };
        match unlocked {
            Ok(true) => {
                pending.finish();
                Ok(())
            }
            Ok(false) => {
                pending.finish();
                Err(Error::NotHeld { key })
            }
            Err(e) => {
                // `pending` queues the unlock if it was not sent (the `held` check failed)
                tracing::warn!(key = %key, error = %e, "advisory unlock failed; marking the connection broken");
                mark_broken(pending.conn());
                Err(e)
            }
        }
    }
}

impl Drop for AsyncLockGuard<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            tracing::debug!(key = %self.key, "advisory lock guard dropped; unlock queued");
            queue(conn, &sql::unlock_literal(self.mode, self.key));
            if transaction_unsettled(conn) {
                tracing::warn!(key = %self.key, "advisory lock guard dropped while diesel-async reports a transaction open or interrupted; the queued unlock fails if that transaction has aborted, so the connection is marked broken (pools discard it)");
                mark_broken(conn);
            }
        }
    }
}

impl Deref for AsyncLockGuard<'_> {
    type Target = AsyncPgConnection;

    fn deref(&self) -> &AsyncPgConnection {
        self.conn.as_deref().expect("present until release/drop")
    }
}

impl DerefMut for AsyncLockGuard<'_> {
    fn deref_mut(&mut self) -> &mut AsyncPgConnection {
        self.conn
            .as_deref_mut()
            .expect("present until release/drop")
    }
}

impl fmt::Debug for AsyncLockGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncLockGuard")
            .field("key", &self.key)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}
