//! The crate's error type and the one place that classifies sqlx errors.

use std::borrow::Cow;
use std::fmt;

use advisory_common::protocol::Refused;
use advisory_common::{ErrorKind, Key, classify_sqlstate};
use sqlx::error::DatabaseError;

advisory_common::__adapter_error! {
    /// Why an advisory-lock call failed.
    ///
    /// The same server answer is the same variant in `sqlx-advisory` and `diesel-advisory`: every
    /// database error is classified by [`advisory_common::classify_sqlstate`].
    ///
    /// `?` works in both directions: `From<sqlx::Error>` and `From<Error> for sqlx::Error` (which keeps
    /// the original `sqlx::Error`, and so its SQLSTATE, wherever there is one).
    ///
    /// ```
    /// use sqlx_advisory::{Error, Key};
    /// use sqlx_advisory::ErrorKind;
    ///
    /// let e = Error::NotInTransaction { key: Key::BigInt(7) };
    /// assert_eq!(e.kind(), Some(ErrorKind::NotInTransaction));
    /// // into sqlx::Error and back again, unchanged
    /// let back = Error::from(sqlx::Error::from(e));
    /// assert!(matches!(back, Error::NotInTransaction { key: Key::BigInt(7) }));
    /// ```
    driver: sqlx::Error,
    pool: sqlx::Error,
    kind_of: kind_of,
    transaction: "`begin_with_xact_lock`",
}

fn sqlstate(e: &sqlx::Error) -> Option<String> {
    e.as_database_error()
        .and_then(|d| d.code())
        .map(Cow::into_owned)
}

/// What the protocol needs to know of a driver error: its SQLSTATE's lock-failure kind.
pub(crate) fn kind_of(err: &sqlx::Error) -> Option<ErrorKind> {
    sqlstate(err).and_then(|c| classify_sqlstate(&c))
}

/// A call refused before anything was sent.
pub(crate) fn refused(refused: Refused, key: Key) -> Error {
    match refused {
        Refused::NotInTransaction => Error::NotInTransaction { key },
        Refused::AlreadyInTransaction => Error::AlreadyInTransaction { key },
    }
}

/// Keeps the error's SQLSTATE-less variants, recovers an [`Error`] that travelled through a
/// `sqlx::Error` (see `From<Error> for sqlx::Error`), and recognises a lost connection.
impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Error {
        match err {
            sqlx::Error::Database(db) => match db.try_downcast::<Carried>() {
                Ok(carried) => carried.0,
                Err(db) => {
                    let err = sqlx::Error::Database(db);
                    match sqlstate(&err).and_then(|c| classify_sqlstate(&c)) {
                        Some(ErrorKind::ConnectionLost) => Error::ConnectionLost { source: err },
                        _ => Error::Database(err),
                    }
                }
            },
            sqlx::Error::Configuration(e) => match e.downcast::<Error>() {
                Ok(ours) => *ours,
                Err(e) => Error::Database(sqlx::Error::Configuration(e)),
            },
            err @ sqlx::Error::Io(_) => Error::ConnectionLost { source: err },
            err @ (sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed) => Error::Pool(err),
            err => Error::Database(err),
        }
    }
}

/// For `?` in code that returns `sqlx::Error` (e.g. inside `Connection::transaction`).
///
/// * Variants that wrap a `sqlx::Error` (`Deadlock`, `LockTableFull`, `ConnectionLost`, `Pool`,
///   `Database`) give back **that** error, so its SQLSTATE is not lost.
/// * `Timeout` and `NotHeld` (the server answered) become `sqlx::Error::Database` carrying this
///   error; `Timeout` reports PostgreSQL's SQLSTATE for it, `55P03` (lock_not_available).
/// * `NotInTransaction`, `AlreadyInTransaction` and `InvalidTimeout`, refused before anything was
///   sent, become `sqlx::Error::Configuration` carrying this error (sqlx has no variant for "refused
///   by the library"; it prints `error with configuration: ...`, never "returned from database").
///
/// In every case `Error::from(that)` gives the original back, and it is the `source()` of the
/// carrier.
impl From<Error> for sqlx::Error {
    fn from(err: Error) -> sqlx::Error {
        match err {
            Error::Deadlock { source, .. }
            | Error::LockTableFull { source, .. }
            | Error::ConnectionLost { source } => source,
            Error::Pool(e) | Error::Database(e) => e,
            e @ (Error::NotInTransaction { .. }
            | Error::AlreadyInTransaction { .. }
            | Error::InvalidTimeout(_)) => sqlx::Error::Configuration(Box::new(e)),
            other => sqlx::Error::Database(Box::new(Carried::new(other))),
        }
    }
}

/// One of our errors travelling inside a `sqlx::Error::Database`.
#[derive(Debug)]
struct Carried(Error, String);

impl Carried {
    fn new(err: Error) -> Carried {
        let msg = err.to_string();
        Carried(err, msg)
    }
}

impl fmt::Display for Carried {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.1)
    }
}

impl std::error::Error for Carried {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

impl DatabaseError for Carried {
    fn message(&self) -> &str {
        &self.1
    }

    fn code(&self) -> Option<Cow<'_, str>> {
        match self.0 {
            Error::Timeout { .. } => Some(Cow::Borrowed("55P03")),
            _ => None,
        }
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> sqlx::error::ErrorKind {
        sqlx::error::ErrorKind::Other
    }
}
