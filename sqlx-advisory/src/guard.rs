//! The guard of a session lock taken on a borrowed connection.

use std::fmt;
use std::ops::{Deref, DerefMut};

use advisory_common::protocol;
use advisory_common::{Key, LockMode};
use sqlx::PgConnection;

use crate::driver;
use crate::error::{Error, classify};

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
/// * This holds in every state the connection can be in at drop time: idle, still owing the
///   answer of a failed or cancelled query, behind a dropped `Transaction`'s queued `ROLLBACK`,
///   behind another guard's queued unlock. The unlock is queued behind whatever is pending (as
///   sqlx's own `PgAdvisoryLockGuard` does) and runs before the connection's next statement is
///   answered; a `PoolConnection` returned to its pool is checked by sqlx (a `ping` that reads
///   every pending answer) and closed if the unlock failed.
/// * A guard is never created inside a transaction (session locks there are refused with
///   [`Error::AlreadyInTransaction`]); a `Transaction` opened on the guard ends before the guard
///   does, so the unlock never runs inside an aborted transaction. Opening a transaction with raw
///   SQL (`execute("BEGIN")`) on a guarded connection is not supported.
///
/// PostgreSQL locks are re-entrant: two guards for the same key on one connection are two holds,
/// and each guard releases one.
#[must_use = "dropping the guard releases the lock at once"]
pub struct LockGuard<'c> {
    conn: &'c mut PgConnection,
    key: Key,
    mode: LockMode,
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
    pub(crate) fn new(conn: &'c mut PgConnection, key: Key, mode: LockMode) -> Self {
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

    /// Exclusive or shared.
    pub fn mode(&self) -> LockMode {
        self.mode
    }

    /// `true` for a shared lock, `false` for an exclusive one.
    pub fn is_shared(&self) -> bool {
        self.mode == LockMode::Shared
    }

    /// Release the lock now and wait for the server to confirm it.
    ///
    /// Returns [`Error::NotHeld`] if the server says this session did not hold it (someone ran
    /// `pg_advisory_unlock_all()` or an extra unlock on this connection).
    ///
    /// # Cancel safety
    /// Cancel safe: dropped before the unlock is written, the guard's drop queues it; dropped
    /// after, the server completes the unlock and the connection's next use reads the reply.
    pub async fn release(mut self) -> Result<(), Error> {
        let (key, mode) = (self.key, self.mode);
        let unlock = protocol::release_statement(key, mode);
        // Idle first (answers still owed are read), the unlock prepared: then its first poll puts
        // it in the write buffer at once, which is when the guard stops being responsible.
        driver::drain(self.conn)
            .await
            .map_err(|e| classify(e, key, None))?;
        driver::prepare(self.conn, unlock.sql())
            .await
            .map_err(|e| classify(e, key, None))?;
        let unlock = driver::send(self.conn, unlock.into());
        self.state = State::Releasing;
        let unlocked = protocol::released(unlock.await);
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
        let held = protocol::held_statement(key, self.mode).into();
        protocol::held(driver::send(self.conn, held).await).map_err(|e| classify(e, key, None))
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        match self.state {
            State::Held => {
                driver::queue_unlock(self.conn, self.mode, self.key);
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
