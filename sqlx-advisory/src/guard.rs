//! The guard of a session lock taken on a borrowed connection.

use std::fmt;
use std::ops::{Deref, DerefMut};

use advisory_common::Key;
use advisory_common::sql::{self, Mode};
use sqlx::PgConnection;

use crate::error::{Error, classify};
use crate::exec;

/// A session-level advisory lock held by a borrowed connection; returned by the
/// [`LockExt`](crate::LockExt) methods on `&mut PgConnection` (and so on `PoolConnection<Postgres>`
/// and `Transaction<'_, Postgres>` through deref).
///
/// Derefs to the connection, so the locked connection can be used while the guard lives.
///
/// # Release
/// * [`release`](Self::release) sends the unlock and waits for the server's answer (prepared,
///   key bound). Cancelling it is harmless: once sent, the server completes the unlock.
/// * **Drop** without `release()` puts the unlock on the wire immediately (a simple-protocol
///   `SELECT pg_advisory_unlock(..)` with the integer key, sent during `drop`), without waiting: the
///   server runs it at once, and the connection's next use reads and discards its reply. Also on
///   panic unwinding, and with or without a runtime.
/// * One case cannot be handled through sqlx's public API: if the connection is still awaiting the
///   reply of an earlier request when the guard is dropped (a query future on it was cancelled),
///   the unlock cannot be queued behind it; a `tracing` warning is emitted and the lock stays with
///   the session until it is unlocked or the connection is closed. The pool guard
///   ([`PoolLockGuard`](crate::PoolLockGuard)) has no such case.
///
/// PostgreSQL locks are re-entrant: two guards for the same key on one connection are two holds,
/// and each guard releases one.
#[must_use = "dropping the guard releases the lock at once"]
pub struct LockGuard<'c> {
    conn: &'c mut PgConnection,
    key: Key,
    mode: Mode,
    state: State,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Held,
    /// `release()` has sent the unlock (the server completes it even if the future is dropped).
    Releasing,
    Released,
}

impl<'c> LockGuard<'c> {
    pub(crate) fn new(conn: &'c mut PgConnection, key: Key, mode: Mode) -> Self {
        tracing::debug!(%key, mode = mode.as_str(), "advisory lock acquired");
        LockGuard {
            conn,
            key,
            mode,
            state: State::Held,
        }
    }

    /// The key this guard holds.
    pub fn key(&self) -> Key {
        self.key
    }

    /// `true` for a shared lock, `false` for an exclusive one.
    pub fn is_shared(&self) -> bool {
        self.mode == Mode::Shared
    }

    /// Release the lock now and wait for the server to confirm it.
    ///
    /// Returns [`Error::NotHeld`] if the server says this session did not hold it (someone ran
    /// `pg_advisory_unlock_all()` or an extra unlock on this connection).
    ///
    /// # Cancel safety
    /// Cancel safe: dropped before the unlock is sent, the guard's drop sends it; dropped after, the
    /// server completes the unlock and the connection's next use reads the reply. (The unlock
    /// statement was prepared by the acquire, so nothing else precedes it on the wire.)
    pub async fn release(mut self) -> Result<(), Error> {
        let (key, mode) = (self.key, self.mode);
        let sql = sql::unlock_sql(mode, key.space());
        exec::prepare(self.conn, sql)
            .await
            .map_err(|e| classify(e, key, None))?;
        self.state = State::Releasing;
        let unlocked = exec::fetch_bool(self.conn, sql, key, None).await;
        self.state = State::Released;
        match unlocked {
            Ok(true) => {
                tracing::debug!(%key, "advisory lock released");
                Ok(())
            }
            Ok(false) => Err(Error::NotHeld { key }),
            Err(e) => Err(classify(e, key, None)),
        }
    }

    /// Ask the server (`pg_locks`) whether this session still holds the lock, in this guard's
    /// mode. Notices a lock lost with its connection or released behind the guard's back.
    pub async fn is_held(&mut self) -> Result<bool, Error> {
        let key = self.key;
        let sql = sql::held_sql(self.mode, key.space());
        exec::fetch_bool(self.conn, sql, key, None)
            .await
            .map_err(|e| classify(e, key, None))
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        match self.state {
            State::Held => {
                exec::queue_unlock(self.conn, self.mode, self.key);
            }
            State::Releasing => {
                tracing::debug!(key = %self.key, "release() cancelled after the unlock was sent; the server completes it");
            }
            State::Released => {}
        }
    }
}

impl Deref for LockGuard<'_> {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        self.conn
    }
}

impl DerefMut for LockGuard<'_> {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.conn
    }
}

impl fmt::Debug for LockGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("key", &self.key)
            .field("shared", &self.is_shared())
            .finish_non_exhaustive()
    }
}
