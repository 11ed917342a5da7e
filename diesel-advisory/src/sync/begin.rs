//! Transactions that start out holding a transaction-level lock, in one round trip, for diesel's
//! sync `PgConnection`: [`BeginXactLockExt`].

use std::time::Duration;

use advisory_common::Key;
use advisory_common::protocol::{self, Request};
use advisory_common::sql::{Mode, Wait};
use diesel::PgConnection;
use diesel::connection::{AnsiTransactionManager, TransactionManager};
use diesel::result::Error as DieselError;

use super::driver::transaction_depth;
use crate::error::{Error, classify};

/// The four methods, declared (`decl`, with their docs) and implemented (`impl`, forwarding to
/// [`run`] with the key converted first): the signature is written once, in `@sig`. The sync twin
/// of `crate::r#async::begin`'s `begin_methods!`.
macro_rules! begin_methods {
    // One signature, then `;` (a declaration) or the body; `self`, `key` and `f` come from the
    // arm that writes the body (macro hygiene).
    (@sig [$self:ident $key:ident $f:ident] [$(#[$doc:meta])*]
        $name:ident($($timeout:ident)?) $end:tt) => {
        $(#[$doc])*
        fn $name<T, E, F>(
            $self,
            $key: impl Into<Key>,
            $($timeout: Duration,)?
            $f: F,
        ) -> Result<T, E>
        where
            F: FnOnce(&mut PgConnection) -> Result<T, E>,
            E: From<Error> + From<DieselError>,
        $end
    };
    (decl $($(#[$doc:meta])* $name:ident($mode:ident $(, $timeout:ident)?);)*) => {$(
        begin_methods!(@sig [self key f] [$(#[$doc])*] $name($($timeout)?) ;);
    )*};
    (impl $($name:ident($mode:ident $(, $timeout:ident)?);)*) => {$(
        begin_methods!(@sig [self key f] [] $name($($timeout)?) {
            let (wait, timeout) = begin_methods!(@wait $($timeout)?);
            run(self, key.into(), Mode::$mode, wait, timeout, f)
        });
    )*};
    (@wait) => { (Wait::Block, None) };
    (@wait $timeout:ident) => { (Wait::Timeout, Some($timeout)) };
}

/// `conn.transaction(..)` that starts out holding a transaction-level advisory lock, with the
/// lock and the `BEGIN` in **one round trip**: the one-call form of
/// `conn.transaction(|c| { c.xact_lock(k)?; ... })`, which costs a round trip more (`BEGIN`, then
/// the lock). The mirror of `sqlx-advisory`'s `begin_with_xact_lock`.
///
/// Implemented for `&mut PgConnection`, and so reached from an r2d2 checkout by deref. The closure
/// runs inside the transaction exactly as with diesel's `transaction`: `Ok` commits,
/// `Err` rolls back, and either releases the lock. Nested `conn.transaction(..)` calls inside it
/// are savepoints, as usual.
///
/// * The statement sent instead of `BEGIN` is `SELECT pg_advisory_xact_lock(<key>); BEGIN`, one
///   simple query (see [`advisory_common::sql::lock_then_begin`] for why the lock comes first).
///   If the lock fails ([`Error::Timeout`], [`Error::Deadlock`], [`Error::LockTableFull`]),
///   PostgreSQL rolls the implicit block back: the closure does not run, and the connection is
///   left idle, outside any transaction, holding nothing, with its `lock_timeout` unchanged.
/// * Called while diesel already has a transaction open on the connection, the methods return
///   [`Error::AlreadyInTransaction`] **without sending anything**; use
///   [`xact_lock`](crate::XactLockExt::xact_lock) inside that transaction instead.
/// * The closure's error type `E` can be `diesel::result::Error` or this crate's [`Error`] (or
///   anything with both `From` conversions); a failed lock arrives as `E::from(Error::..)`.
///
/// ```
/// use diesel::prelude::*;
/// use diesel_advisory::prelude::*;
/// # let mut conn = PgConnection::establish(advisory_harness::db().url()).unwrap();
///
/// // one round trip: lock + BEGIN; then the closure; then COMMIT (which releases the lock)
/// conn.transaction_with_xact_lock::<_, diesel::result::Error, _>("orders:42", |conn| {
///     diesel::sql_query("SELECT 1").execute(conn)?; // ... read, then INSERT or UPDATE ...
///     Ok(())
/// })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Cancel safety
///
/// Sync: nothing to cancel. A panic in the closure leaves the transaction open, as with diesel's
/// `transaction` (diesel does not catch panics); the lock is released when that transaction is
/// rolled back or the connection is closed (r2d2 discards a connection returned during a panic,
/// or with a transaction open).
pub trait BeginXactLockExt: Sized + crate::sealed::Sealed {
    begin_methods! { decl
        /// Run `f` in a transaction that holds `key` exclusively from its start, waiting as long as
        /// it takes for the lock; COMMIT on `Ok`, ROLLBACK on `Err`.
        ///
        /// ```
        /// # use diesel::prelude::*;
        /// # use diesel_advisory::prelude::*;
        /// # let mut conn = PgConnection::establish(advisory_harness::db().url()).unwrap();
        /// let got = conn.transaction_with_xact_lock(7_i64, |conn| conn.try_xact_lock(7_i64))?;
        /// assert!(got, "re-entrant: the transaction already holds 7");
        /// # Ok::<(), diesel_advisory::Error>(())
        /// ```
        transaction_with_xact_lock(Exclusive);

        /// Run `f` in a transaction that holds `key` in shared mode from its start (conflicts only
        /// with exclusive holders), waiting as long as it takes.
        ///
        /// ```
        /// # use diesel::prelude::*;
        /// # use diesel_advisory::prelude::*;
        /// # let mut conn = PgConnection::establish(advisory_harness::db().url()).unwrap();
        /// conn.transaction_with_xact_lock_shared("config", |conn| -> Result<(), diesel::result::Error> {
        ///     diesel::sql_query("SELECT 1").execute(conn)?; // readers do not exclude each other
        ///     Ok(())
        /// })?;
        /// # Ok::<(), diesel::result::Error>(())
        /// ```
        transaction_with_xact_lock_shared(Shared);

        /// Run `f` in a transaction that holds `key` exclusively from its start, waiting at most
        /// `timeout` for the lock (server-side `lock_timeout`, still one round trip). After that,
        /// `E::from(`[`Error::Timeout`]`)`: the closure did not run and the connection is outside
        /// any transaction, holding nothing, its `lock_timeout` unchanged.
        ///
        /// ```
        /// # use std::time::Duration;
        /// # use diesel::prelude::*;
        /// # use diesel_advisory::prelude::*;
        /// # let mut conn = PgConnection::establish(advisory_harness::db().url()).unwrap();
        /// # let mut other = PgConnection::establish(advisory_harness::db().url()).unwrap();
        /// let _held = other.advisory_lock((4, 2))?; // another session holds (4, 2)
        /// let r = conn.transaction_with_xact_lock_timeout((4, 2), Duration::from_millis(50), |_| Ok(()));
        /// assert!(matches!(r, Err(diesel_advisory::Error::Timeout { .. })));
        /// # Ok::<(), diesel_advisory::Error>(())
        /// ```
        transaction_with_xact_lock_timeout(Exclusive, timeout);

        /// Run `f` in a transaction that holds `key` in shared mode from its start, waiting at most
        /// `timeout`; see [`BeginXactLockExt::transaction_with_xact_lock_timeout`].
        ///
        /// ```
        /// # use std::time::Duration;
        /// # use diesel::prelude::*;
        /// # use diesel_advisory::prelude::*;
        /// # let mut conn = PgConnection::establish(advisory_harness::db().url()).unwrap();
        /// let n = conn.transaction_with_xact_lock_shared_timeout(
        ///     "config",
        ///     Duration::from_secs(1),
        ///     |_conn| Ok::<_, diesel_advisory::Error>(42),
        /// )?;
        /// assert_eq!(n, 42);
        /// # Ok::<(), diesel_advisory::Error>(())
        /// ```
        transaction_with_xact_lock_shared_timeout(Shared, timeout);
    }
}

impl BeginXactLockExt for &mut PgConnection {
    begin_methods! { impl
        transaction_with_xact_lock(Exclusive);
        transaction_with_xact_lock_shared(Shared);
        transaction_with_xact_lock_timeout(Exclusive, timeout);
        transaction_with_xact_lock_shared_timeout(Shared, timeout);
    }
}

/// diesel's `TransactionBuilder::run` (diesel/src/pg/transaction.rs) with the lock-then-`BEGIN`
/// batch as the begin statement.
fn run<T, E, F>(
    conn: &mut PgConnection,
    key: Key,
    mode: Mode,
    wait: Wait,
    timeout: Option<Duration>,
    f: F,
) -> Result<T, E>
where
    F: FnOnce(&mut PgConnection) -> Result<T, E>,
    E: From<Error> + From<DieselError>,
{
    if transaction_depth(conn)? > 0 {
        return Err(Error::AlreadyInTransaction { key }.into());
    }
    let req = Request::new(key, mode, wait, timeout).map_err(Error::from)?;
    let sql = protocol::begin_statement(&req);
    // On failure libpq reports the session idle again, and diesel resets its bookkeeping from that
    // (`update_transaction_manager_status` in diesel/src/pg/connection/mod.rs).
    AnsiTransactionManager::begin_transaction_sql(conn, &sql)
        .map_err(|e| classify(e, key, timeout))?;
    tracing::debug!(%key, mode = mode.as_str(), "transaction begun holding the advisory lock");
    match f(conn) {
        Ok(value) => {
            AnsiTransactionManager::commit_transaction(conn)?;
            Ok(value)
        }
        Err(user_error) => match AnsiTransactionManager::rollback_transaction(conn) {
            Ok(()) => Err(user_error),
            // as diesel's own `run`: the original error is the more interesting one
            Err(DieselError::BrokenTransactionManager) => Err(user_error),
            Err(rollback_error) => Err(rollback_error.into()),
        },
    }
}
