//! The sync session-lock guards: [`LockGuard`] and the machinery shared with the r2d2 guard.

use std::fmt;
use std::ops::{Deref, DerefMut};

use advisory_common::sql::Mode;
use advisory_common::{Key, LockMode};
use diesel::PgConnection;

use super::driver::{held, mark_broken, unlock};
use crate::error::Error;

/// A held session lock on a connection `C` (`&mut PgConnection` or a pooled connection).
///
/// Drop releases synchronously; if that unlock fails the connection is marked broken.
pub(crate) struct Held<C: DerefMut<Target = PgConnection>> {
    conn: Option<C>,
    key: Key,
    mode: Mode,
}

impl<C: DerefMut<Target = PgConnection>> Held<C> {
    pub(crate) fn new(conn: C, key: Key, mode: Mode) -> Self {
        Held {
            conn: Some(conn),
            key,
            mode,
        }
    }

    pub(crate) fn key(&self) -> Key {
        self.key
    }

    pub(crate) fn mode(&self) -> Mode {
        self.mode
    }

    pub(crate) fn is_shared(&self) -> bool {
        self.mode == Mode::Shared
    }

    pub(crate) fn conn(&self) -> &PgConnection {
        self.conn.as_deref().expect("present until release/drop")
    }

    pub(crate) fn conn_mut(&mut self) -> &mut PgConnection {
        self.conn
            .as_deref_mut()
            .expect("present until release/drop")
    }

    pub(crate) fn is_held(&mut self) -> Result<bool, Error> {
        let (key, mode) = (self.key, self.mode);
        held(self.conn_mut(), key, mode)
    }

    /// Unlock now. On an error the lock's state is unknown (e.g. the transaction is aborted):
    /// the connection is marked broken, exactly as on drop.
    pub(crate) fn release(mut self) -> Result<(), Error> {
        let mut conn = self.conn.take().expect("present until release/drop");
        match unlock(&mut conn, self.key, self.mode) {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::NotHeld { key: self.key }),
            Err(e) => {
                tracing::warn!(key = %self.key, error = %e, "advisory unlock failed; marking the connection broken so it is not reused holding the lock");
                mark_broken(&mut conn);
                Err(e)
            }
        }
    }
}

impl<C: DerefMut<Target = PgConnection>> Drop for Held<C> {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        match unlock(&mut conn, self.key, self.mode) {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(key = %self.key, "advisory lock was not held when its guard was dropped");
            }
            Err(e) => {
                tracing::warn!(key = %self.key, error = %e, "advisory unlock on drop failed; marking the connection broken (pools discard it, transaction() fails) instead of leaking the lock silently");
                mark_broken(&mut conn);
            }
        }
    }
}

impl<C: DerefMut<Target = PgConnection>> fmt::Debug for Held<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Held")
            .field("key", &self.key)
            .field("mode", &self.mode)
            .field("released", &self.conn.is_none())
            .finish()
    }
}

/// A session lock held on a borrowed `PgConnection`, from [`LockExt`](crate::LockExt) on
/// `&mut PgConnection`.
///
/// Derefs to the connection, so you keep using it (queries, `transaction`, ...) while holding the
/// lock.
///
/// # Release
///
/// * [`LockGuard::release`] unlocks and reports the server's answer ([`Error::NotHeld`] if the
///   session did not hold it).
/// * **Drop** unlocks synchronously (also during a panic unwind). If that unlock fails, the lock's
///   state is unknown, so the connection's diesel transaction manager is set to `InError`: pools
///   discard the connection at check-in (closing the session releases its locks) and
///   `transaction()` fails with `BrokenTransactionManager` instead of silently running on a
///   session that still holds the lock.
/// * Session locks are never taken inside a transaction ([`Error::AlreadyInTransaction`]), but
///   a guard can still be dropped inside one opened on its connection: by a panic inside
///   `guard.transaction(..)` (diesel leaves that transaction open), or after a transaction begun
///   through the `TransactionManager` by hand. If that transaction is still healthy the unlock
///   runs inside it and your own ROLLBACK or COMMIT afterwards works as usual. If it has
///   **aborted** (a statement failed; SQLSTATE `25P02`), PostgreSQL refuses the unlock: the
///   connection is marked broken as above, so diesel refuses the ROLLBACK too, the server-side
///   transaction stays aborted (every statement fails), and the lock stays with the session
///   until the connection is closed: drop the connection (r2d2 does that for you).
/// * A session lock is not released by COMMIT or ROLLBACK: the guard can be kept across a failed
///   `guard.transaction(..)` and released afterwards.
#[must_use = "the lock is released when the guard is dropped"]
#[derive(Debug)]
pub struct LockGuard<'c>(Held<&'c mut PgConnection>);

impl<'c> LockGuard<'c> {
    pub(crate) fn new(conn: &'c mut PgConnection, key: Key, mode: Mode) -> Self {
        LockGuard(Held::new(conn, key, mode))
    }

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

    /// Does the session still hold the lock? Asks `pg_locks` (one round trip), so it notices a
    /// lock released behind the guard's back (`pg_advisory_unlock_all()`).
    pub fn is_held(&mut self) -> Result<bool, Error> {
        self.0.is_held()
    }

    /// Unlock now and report the server's answer: [`Error::NotHeld`] if the session did not hold
    /// the lock. If the unlock itself fails the connection is marked broken, as on drop.
    ///
    /// ```
    /// # use diesel::prelude::*;
    /// # use diesel_advisory::prelude::*;
    /// # let mut conn = PgConnection::establish(advisory_harness::db().url()).unwrap();
    /// let guard = conn.advisory_lock(12_i64)?;
    /// guard.release()?;
    /// # Ok::<(), diesel_advisory::Error>(())
    /// ```
    pub fn release(self) -> Result<(), Error> {
        self.0.release()
    }
}

impl Deref for LockGuard<'_> {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        self.0.conn()
    }
}

impl DerefMut for LockGuard<'_> {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.0.conn_mut()
    }
}
