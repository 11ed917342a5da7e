//! Transaction-scope locks for diesel's sync `PgConnection`: [`XactLockExt`].

use std::time::Duration;

use advisory_common::Key;
use advisory_common::protocol::Request;
use advisory_common::sql::{Mode, Scope, Wait};
use diesel::PgConnection;

use super::driver::{lock, transaction_depth};
use crate::error::Error;

/// Transaction-scope advisory locks, for use inside `conn.transaction(|conn| ...)`.
///
/// The lock is held until the transaction ends: COMMIT or ROLLBACK of the **outermost**
/// transaction releases it (a lock taken inside a nested `transaction` — a savepoint — belongs to
/// the enclosing transaction, even if the savepoint rolls back). There is no guard and no
/// unlock.
///
/// Each method checks diesel's own transaction depth first and returns
/// [`Error::NotInTransaction`] **without sending anything** when no transaction is open (the
/// server would release the lock the instant it was taken).
///
/// To open a transaction that holds a lock from its start, in one round trip instead of two
/// (`BEGIN`, then the lock), use
/// [`transaction_with_xact_lock`](crate::BeginXactLockExt::transaction_with_xact_lock).
///
/// `?` works with the closure's error type being either `diesel::result::Error` or this crate's
/// [`Error`]:
///
/// ```
/// use diesel::prelude::*;
/// use diesel_advisory::prelude::*;
/// # let mut conn = PgConnection::establish(advisory_harness::db().url()).unwrap();
///
/// conn.transaction::<_, diesel::result::Error, _>(|conn| {
///     conn.xact_lock("orders:42")?;
///     // ... read, then INSERT or UPDATE ...
///     Ok(())
/// })?;
/// assert!(matches!(conn.xact_lock(1_i64), Err(diesel_advisory::Error::NotInTransaction { .. })));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Cancel safety
///
/// Sync: nothing to cancel. A panic in the closure leaves diesel's transaction open (diesel does
/// not catch panics); the lock is released when that transaction is rolled back or the connection
/// is closed (r2d2 discards a connection returned during a panic).
pub trait XactLockExt: Sized + crate::sealed::Sealed {
    advisory_common::__xact_methods! { decl sync Error;
        /// Take `key` exclusively until the transaction ends, waiting as long as it takes.
        ///
        /// ```
        /// # use diesel::prelude::*;
        /// # use diesel_advisory::prelude::*;
        /// # let mut conn = PgConnection::establish(advisory_harness::db().url()).unwrap();
        /// conn.transaction(|conn| conn.xact_lock(3_i64))?;
        /// # Ok::<(), diesel_advisory::Error>(())
        /// ```
        xact_lock;

        /// Take `key` in shared mode until the transaction ends, waiting as long as it takes.
        ///
        /// ```
        /// # use diesel::prelude::*;
        /// # use diesel_advisory::prelude::*;
        /// # let mut conn = PgConnection::establish(advisory_harness::db().url()).unwrap();
        /// conn.transaction(|conn| conn.xact_lock_shared("config"))?;
        /// # Ok::<(), diesel_advisory::Error>(())
        /// ```
        xact_lock_shared;

        /// Try to take `key` exclusively until the transaction ends: `false` if another session holds
        /// it (never waits).
        ///
        /// ```
        /// # use diesel::prelude::*;
        /// # use diesel_advisory::prelude::*;
        /// # let mut conn = PgConnection::establish(advisory_harness::db().url()).unwrap();
        /// let got = conn.transaction(|conn| conn.try_xact_lock((1, 2)))?;
        /// assert!(got);
        /// # Ok::<(), diesel_advisory::Error>(())
        /// ```
        try_xact_lock;

        /// Try to take `key` in shared mode until the transaction ends: `false` if an exclusive
        /// holder exists.
        ///
        /// ```
        /// # use diesel::prelude::*;
        /// # use diesel_advisory::prelude::*;
        /// # let mut conn = PgConnection::establish(advisory_harness::db().url()).unwrap();
        /// assert!(conn.transaction(|conn| conn.try_xact_lock_shared((1, 3)))?);
        /// # Ok::<(), diesel_advisory::Error>(())
        /// ```
        try_xact_lock_shared;

        /// Take `key` exclusively until the transaction ends, waiting at most `timeout`.
        ///
        /// Runs as one round trip inside a savepoint; on [`Error::Timeout`] (or deadlock, lock table
        /// full) the savepoint is rolled back, so **your transaction stays usable**: the closure can
        /// carry on or return the error. `lock_timeout` is unchanged afterwards.
        ///
        /// ```
        /// # use std::time::Duration;
        /// # use diesel::prelude::*;
        /// # use diesel_advisory::prelude::*;
        /// # let mut conn = PgConnection::establish(advisory_harness::db().url()).unwrap();
        /// conn.transaction(|conn| conn.xact_lock_timeout("orders:42", Duration::from_secs(1)))?;
        /// # Ok::<(), diesel_advisory::Error>(())
        /// ```
        xact_lock_timeout;

        /// Take `key` in shared mode until the transaction ends, waiting at most `timeout`; see
        /// [`XactLockExt::xact_lock_timeout`].
        ///
        /// ```
        /// # use std::time::Duration;
        /// # use diesel::prelude::*;
        /// # use diesel_advisory::prelude::*;
        /// # let mut conn = PgConnection::establish(advisory_harness::db().url()).unwrap();
        /// conn.transaction(|conn| conn.xact_lock_shared_timeout(8_i64, Duration::from_millis(100)))?;
        /// # Ok::<(), diesel_advisory::Error>(())
        /// ```
        xact_lock_shared_timeout;
    }
}

impl XactLockExt for &mut PgConnection {
    advisory_common::__xact_methods!(sync xact, Error);
}

fn xact(
    conn: &mut PgConnection,
    key: Key,
    mode: Mode,
    wait: Wait,
    timeout: Option<Duration>,
) -> Result<bool, Error> {
    if transaction_depth(conn)? == 0 {
        return Err(Error::NotInTransaction { key });
    }
    let req = Request::new(key, mode, wait, timeout)?;
    lock(conn, Scope::Transaction, &req).map_err(|failed| failed.error)
}
