//! The diesel-async session-lock guard on a borrowed connection: [`AsyncLockGuard`].

use std::fmt;
use std::ops::{Deref, DerefMut};

use advisory_common::Key;
use advisory_common::sql::{self, Mode};
use diesel_async::AsyncPgConnection;

use crate::Error;
use crate::async_conn::{held, mark_broken, queue, unlock};

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
///   sent before, so the lock is released promptly even if you never use the connection again,
///   and your next query on the connection runs after it. Nobody sees the result: if the guard is
///   dropped **inside a transaction that is already aborted** the unlock fails and the lock stays
///   with the session until it ends. Release explicitly (or drop the guard outside the
///   transaction) in that situation.
#[must_use = "the lock is released when the guard is dropped"]
pub struct AsyncLockGuard<'c> {
    conn: Option<&'c mut AsyncPgConnection>,
    key: Key,
    mode: Mode,
}

impl<'c> AsyncLockGuard<'c> {
    pub(crate) fn new(conn: &'c mut AsyncPgConnection, key: Key, mode: Mode) -> Self {
        AsyncLockGuard {
            conn: Some(conn),
            key,
            mode,
        }
    }

    /// The locked key.
    pub fn key(&self) -> Key {
        self.key
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
    /// The unlock is sent on the first poll whenever diesel already has the statement prepared on
    /// this connection (every time but the first); dropping the future after that does not stop
    /// it. Dropped during the very first use, the lock stays held until the session ends.
    ///
    /// ```
    /// # use diesel_async::{AsyncConnection, AsyncPgConnection};
    /// # use diesel_advisory::prelude::*;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let mut conn = AsyncPgConnection::establish(advisory_tests::db().url()).await?;
    /// let guard = conn.advisory_lock(12_i64).await?;
    /// guard.release().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn release(mut self) -> Result<(), Error> {
        let conn = self.conn.take().expect("present until release/drop");
        match unlock(conn, self.key, self.mode).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::NotHeld { key: self.key }),
            Err(e) => {
                tracing::warn!(key = %self.key, error = %e, "advisory unlock failed; marking the connection broken");
                mark_broken(conn);
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
