//! The crate's error type and the one classification of diesel errors.

use advisory_common::protocol;
use advisory_common::{ErrorKind, classify_sqlstate, sqlstate_from_message};
use diesel::result::{DatabaseErrorKind, Error as DieselError};

/// A pool checkout failure (`r2d2::Error`, bb8's `RunError`, deadpool's `PoolError`), boxed so
/// that the error type does not depend on which pool features are enabled.
pub type PoolError = Box<dyn std::error::Error + Send + Sync + 'static>;

advisory_common::__adapter_error! {
    /// Everything an advisory-lock call can fail with.
    ///
    /// The variants are the same as in `sqlx-advisory` (both are defined by one macro of
    /// `pg-advisory-common`); [`Error::kind`] gives the driver-independent [`ErrorKind`]. `?`
    /// converts in both directions between this type and [`diesel::result::Error`], so the lock
    /// calls work inside `conn.transaction(..)` closures of either error type (see
    /// [`From<Error> for diesel::result::Error`](#impl-From%3CError%3E-for-Error)).
    driver: DieselError,
    pool: PoolError,
    kind_of: kind_of,
    transaction: "`transaction_with_xact_lock`",
}

#[cfg(any(feature = "r2d2", feature = "bb8", feature = "deadpool"))]
impl Error {
    pub(crate) fn pool(err: impl std::error::Error + Send + Sync + 'static) -> Error {
        Error::Pool(Box::new(err))
    }
}

/// `pool.get()?` inside a function returning [`Error`]: an r2d2 checkout failure becomes
/// [`Error::Pool`].
#[cfg(feature = "r2d2")]
#[cfg_attr(docsrs, doc(cfg(feature = "r2d2")))]
impl From<diesel::r2d2::PoolError> for Error {
    fn from(err: diesel::r2d2::PoolError) -> Error {
        Error::pool(err)
    }
}

/// `pool.get().await?` inside a function returning [`Error`]: a bb8 checkout failure becomes
/// [`Error::Pool`].
#[cfg(feature = "bb8")]
#[cfg_attr(docsrs, doc(cfg(feature = "bb8")))]
impl From<bb8::RunError<diesel_async::pooled_connection::PoolError>> for Error {
    fn from(err: bb8::RunError<diesel_async::pooled_connection::PoolError>) -> Error {
        Error::pool(err)
    }
}

/// `pool.get().await?` inside a function returning [`Error`]: a deadpool checkout failure
/// becomes [`Error::Pool`].
#[cfg(feature = "deadpool")]
#[cfg_attr(docsrs, doc(cfg(feature = "deadpool")))]
impl From<diesel_async::pooled_connection::deadpool::PoolError> for Error {
    fn from(err: diesel_async::pooled_connection::deadpool::PoolError) -> Error {
        Error::pool(err)
    }
}

/// The SQLSTATE of a diesel error, as far as it can be known.
///
/// diesel's [`DatabaseErrorInformation`](diesel::result::DatabaseErrorInformation) does not expose
/// the SQLSTATE (neither for libpq nor for tokio-postgres), so the lock failures are recognised by
/// the server's primary message, which PostgreSQL writes in English unless the server's
/// `lc_messages` selects a translation; lost connections by diesel's own error kinds.
fn sqlstate(err: &DieselError) -> Option<&'static str> {
    match err {
        DieselError::DatabaseError(
            DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
            _,
        ) => Some("08006"),
        DieselError::DatabaseError(_, info) => sqlstate_from_message(info.message()),
        _ => None,
    }
}

/// What the protocol needs to know of a driver error: its lock-failure kind.
pub(crate) fn kind_of(err: &DieselError) -> Option<ErrorKind> {
    sqlstate(err).and_then(classify_sqlstate)
}

/// An acquire that did not produce a lock.
#[derive(Debug)]
pub(crate) struct Failed {
    pub(crate) error: Error,
    /// The session may hold the lock anyway: the statement timed out (55P03, which PostgreSQL can
    /// raise for a wait granted in the same instant) and the `held` check that would have told
    /// failed. The caller must release it (a timed acquire that timed out never already held the
    /// key in that mode, so one unlock is exact) or discard the connection.
    pub(crate) maybe_held: bool,
}

impl Failed {
    /// How a finished conversation ends for the caller: the grant, or the failure with whether the
    /// session may hold the lock anyway.
    pub(crate) fn outcome(
        finish: protocol::Finish<DieselError>,
        req: &protocol::Request,
    ) -> Result<bool, Failed> {
        let maybe_held = finish.after == protocol::After::MaybeHeld;
        finish.outcome.map_err(|failure| Failed {
            error: from_failure(failure, req),
            maybe_held,
        })
    }
}

impl From<Error> for Failed {
    fn from(error: Error) -> Failed {
        Failed {
            error,
            maybe_held: false,
        }
    }
}

/// Wraps a diesel error that did not come from a lock call.
///
/// An error that is itself a boxed [`Error`] (see the reverse conversion) is unwrapped again, so
/// a round trip through a `diesel::result::Error` closure loses nothing.
impl From<DieselError> for Error {
    fn from(err: DieselError) -> Error {
        match err {
            DieselError::QueryBuilderError(inner) if inner.is::<Error>() => *inner
                .downcast::<Error>()
                .expect("checked with is::<Error>()"),
            other => match sqlstate(&other).and_then(classify_sqlstate) {
                Some(ErrorKind::ConnectionLost) => Error::ConnectionLost { source: other },
                _ => Error::Database(other),
            },
        }
    }
}

/// Lets `?` use a lock call inside `conn.transaction::<_, diesel::result::Error, _>(..)`.
///
/// A variant that carries the server's error (`Deadlock`, `LockTableFull`, `ConnectionLost`,
/// `Database`) gives that original diesel error back, so diesel's transaction handling sees
/// exactly what the server said. The others (`Timeout`, `NotInTransaction`,
/// `AlreadyInTransaction`, `NotHeld`, `InvalidTimeout`, `Pool`) are boxed whole in
/// [`diesel::result::Error::QueryBuilderError`] and can be recovered with `downcast_ref::<Error>()`
/// or by converting back with `Error::from`.
///
/// ```
/// # use diesel::prelude::*;
/// use diesel_advisory::{Error, Key};
///
/// let ours = Error::NotInTransaction { key: Key::BigInt(1) };
/// let theirs = diesel::result::Error::from(ours);
/// assert!(matches!(Error::from(theirs), Error::NotInTransaction { key: Key::BigInt(1) }));
///
/// let ours = Error::AlreadyInTransaction { key: Key::Pair(1, 2) };
/// let theirs = diesel::result::Error::from(ours);
/// assert!(matches!(theirs, diesel::result::Error::QueryBuilderError(_)));
/// assert!(matches!(Error::from(theirs), Error::AlreadyInTransaction { key: Key::Pair(1, 2) }));
/// ```
impl From<Error> for DieselError {
    fn from(err: Error) -> DieselError {
        match err {
            Error::Deadlock { source, .. }
            | Error::LockTableFull { source, .. }
            | Error::ConnectionLost { source }
            | Error::Database(source) => source,
            other => DieselError::QueryBuilderError(Box::new(other)),
        }
    }
}
