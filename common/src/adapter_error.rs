//! The adapters' `Error` enum, defined once: the same variants, fields, messages and `kind()` in
//! `sqlx-advisory` and `diesel-advisory`, over each driver's own error type.

/// Defines an adapter's `Error` (see [`crate::ErrorKind`] for the driver-independent kinds).
///
/// ```text
/// advisory_common::__adapter_error! {
///     /// crate-specific docs
///     driver: sqlx::Error,      // the driver's error, in Deadlock / LockTableFull / ConnectionLost / Database
///     pool: sqlx::Error,        // a checkout failure, in Pool
///     kind_of: kind_of,         // fn(&driver) -> Option<ErrorKind>, for kind() of Database
///     transaction: "`begin_with_xact_lock`",  // the adapter's calls that open a transaction
/// }
/// ```
///
/// Needs `thiserror` in the calling crate. Not part of the public API.
#[doc(hidden)]
#[macro_export]
macro_rules! __adapter_error {
    (
        $(#[$meta:meta])*
        driver: $driver:ty,
        pool: $pool:ty,
        kind_of: $kind_of:path,
        transaction: $tx:literal $(,)?
    ) => {
        use $crate::ErrorKind as __AdvisoryErrorKind;

        $(#[$meta])*
        #[derive(Debug, thiserror::Error)]
        #[non_exhaustive]
        pub enum Error {
            /// The timed acquire did not get the lock within `timeout` (server-side
            /// `lock_timeout`, SQLSTATE `55P03`). The session does not hold it: a session lock
            /// PostgreSQL granted in the instant its `lock_timeout` fired is kept and returned as a
            /// guard instead.
            #[error("{}: {key} after {timeout:?}", __AdvisoryErrorKind::Timeout.describe())]
            Timeout {
                /// The lock that was not granted.
                key: $crate::Key,
                /// The timeout the caller asked for.
                timeout: ::std::time::Duration,
            },
            /// The server chose this wait as a deadlock victim (SQLSTATE `40P01`). Inside a
            /// transaction, the transaction is aborted: roll it back and retry.
            #[error("{}: {key}", __AdvisoryErrorKind::Deadlock.describe())]
            Deadlock {
                /// The lock that was being waited for.
                key: $crate::Key,
                /// The server's error.
                source: $driver,
            },
            /// The server's shared lock table is full (SQLSTATE `53200`).
            #[error("{}: {key}", __AdvisoryErrorKind::LockTableFull.describe())]
            LockTableFull {
                /// The lock that could not be recorded.
                key: $crate::Key,
                /// The server's error.
                source: $driver,
            },
            /// A transaction-scope lock was requested on a connection that is not inside a
            /// transaction (the server would release it the instant it was taken). Nothing was
            /// sent to the server.
            #[error("{}: {key}", __AdvisoryErrorKind::NotInTransaction.describe())]
            NotInTransaction {
                /// The lock that was requested.
                key: $crate::Key,
            },
            #[doc = concat!(
                "A session lock, or a call that opens a transaction (", $tx, " and friends), \
                 was requested on a connection already inside a transaction. Nothing was sent to \
                 the server: inside a transaction that then aborted, a guard could not release its \
                 session lock. Use the transaction-scope `xact_lock` there instead."
            )]
            #[error("{}: {key}", __AdvisoryErrorKind::AlreadyInTransaction.describe())]
            AlreadyInTransaction {
                /// The lock that was requested.
                key: $crate::Key,
            },
            /// `release()` was called, but the server says this session did not hold the lock.
            #[error("{}: {key}", __AdvisoryErrorKind::NotHeld.describe())]
            NotHeld {
                /// The lock that was being released.
                key: $crate::Key,
            },
            /// The connection was lost (I/O error, SQLSTATE class `08`, `57P01`–`57P05`); the
            /// server has released (or will release) every lock the session held.
            #[error("{}", __AdvisoryErrorKind::ConnectionLost.describe())]
            ConnectionLost {
                /// The driver's error.
                source: $driver,
            },
            /// The timeout cannot be expressed as PostgreSQL's `lock_timeout`. Nothing was sent.
            #[error(transparent)]
            InvalidTimeout(#[from] $crate::TimeoutOutOfRange),
            /// No connection could be checked out of the pool.
            #[error("cannot check out a connection from the pool: {0}")]
            Pool(#[source] $pool),
            /// Any other database or driver error.
            #[error(transparent)]
            Database($driver),
        }

        impl Error {
            /// What kind of lock failure this is, if it is one. For [`Error::Database`] the
            /// SQLSTATE is classified too (e.g. a `lock_timeout` the application set itself on a
            /// waiting call gives `Some(ErrorKind::Timeout)`); `None` for
            /// [`Error::InvalidTimeout`], [`Error::Pool`] and other database errors.
            pub fn kind(&self) -> ::core::option::Option<$crate::ErrorKind> {
                use $crate::ErrorKind as K;
                match self {
                    Error::Timeout { .. } => Some(K::Timeout),
                    Error::Deadlock { .. } => Some(K::Deadlock),
                    Error::LockTableFull { .. } => Some(K::LockTableFull),
                    Error::NotInTransaction { .. } => Some(K::NotInTransaction),
                    Error::AlreadyInTransaction { .. } => Some(K::AlreadyInTransaction),
                    Error::NotHeld { .. } => Some(K::NotHeld),
                    Error::ConnectionLost { .. } => Some(K::ConnectionLost),
                    Error::Database(e) => $kind_of(e),
                    Error::InvalidTimeout(_) | Error::Pool(_) => None,
                }
            }
        }

        /// The one place a driver error from a lock statement on `key` becomes an [`Error`],
        /// through [`classify_sqlstate`]($crate::classify_sqlstate). `timeout` is the caller's
        /// timeout for the timed acquires (`None` for waiting and try acquires, whose `55P03` can
        /// only come from a `lock_timeout` the application set itself and stays
        /// [`Error::Database`]). Anything else goes through the adapter's `From<driver error>`.
        #[allow(dead_code)]
        pub(crate) fn classify(
            err: $driver,
            key: $crate::Key,
            timeout: ::core::option::Option<::std::time::Duration>,
        ) -> Error {
            use $crate::ErrorKind as K;
            match ($kind_of(&err), timeout) {
                (Some(K::Timeout), Some(timeout)) => Error::Timeout { key, timeout },
                (Some(K::Deadlock), _) => Error::Deadlock { key, source: err },
                (Some(K::LockTableFull), _) => Error::LockTableFull { key, source: err },
                (Some(K::ConnectionLost), _) => Error::ConnectionLost { source: err },
                _ => Error::from(err),
            }
        }

        /// The error of a failed request, as the protocol reports it.
        #[allow(dead_code)]
        pub(crate) fn from_failure(
            failure: $crate::protocol::Failure<$driver>,
            req: &$crate::protocol::Request,
        ) -> Error {
            use $crate::protocol::Failure;
            match failure {
                Failure::Timeout => Error::Timeout {
                    key: req.key(),
                    timeout: req.timeout().unwrap_or_default(),
                },
                Failure::Statement(err) => classify(err, req.key(), req.timeout()),
                Failure::Check(err) => classify(err, req.key(), None),
            }
        }
    };
}
