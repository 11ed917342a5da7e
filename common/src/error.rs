//! The error kinds both adapters share, and the one SQLSTATE classification.

/// What went wrong with a lock call, independent of the driver.
///
/// Both adapters turn a database error into their own `Error` through [`classify_sqlstate`], so the
/// same server answer is the same error variant in `sqlx-advisory` and `diesel-advisory`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The server-side `lock_timeout` expired (SQLSTATE `55P03`, lock_not_available).
    Timeout,
    /// The server broke a deadlock by failing this wait (SQLSTATE `40P01`).
    Deadlock,
    /// The shared lock table is full (SQLSTATE `53200`, "out of shared memory"; raise
    /// `max_locks_per_transaction` or hold fewer locks).
    LockTableFull,
    /// A transaction-level lock was requested outside a transaction.
    NotInTransaction,
    /// The connection is already inside a transaction, and the call cannot be made there; nothing
    /// was sent. Either it opens a transaction (`begin_with_xact_lock`, `transaction_with_xact_lock`),
    /// or it takes a **session** lock: a session lock's guard could not release it while that
    /// transaction is aborted (PostgreSQL refuses every statement there), so the lock would outlive
    /// its guard. Inside a transaction use the transaction-scope calls (`xact_lock`, ...).
    AlreadyInTransaction,
    /// `release` was called but the server says the session did not hold the lock.
    NotHeld,
    /// The connection to the server was lost or the session was terminated (SQLSTATE class `08`,
    /// `57P01`–`57P05`); every session lock of that connection is gone with it.
    ConnectionLost,
}

impl ErrorKind {
    /// A one-line description a user can act on.
    pub fn describe(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timed out waiting for the advisory lock (lock_timeout)",
            ErrorKind::Deadlock => {
                "deadlock detected while waiting for the advisory lock; the server aborted this wait"
            }
            ErrorKind::LockTableFull => {
                "the server's lock table is full (out of shared memory): release locks or raise max_locks_per_transaction"
            }
            ErrorKind::NotInTransaction => {
                "transaction-level advisory lock requested outside a transaction (it would be released immediately); call it inside a transaction"
            }
            ErrorKind::AlreadyInTransaction => {
                "the connection is already in a transaction: neither a new transaction nor a session lock (whose guard could not release it if the transaction aborts) can be started on it; use xact_lock inside the open transaction instead"
            }
            ErrorKind::NotHeld => {
                "the server says this session did not hold the advisory lock being released"
            }
            ErrorKind::ConnectionLost => {
                "the connection to the server was lost; every lock held by it has been released by the server"
            }
        }
    }
}

/// The [`describe`](ErrorKind::describe) text.
impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe())
    }
}

/// Map a PostgreSQL SQLSTATE to the lock failure it means, or `None` for any other error.
///
/// ```
/// use advisory_common::{classify_sqlstate, ErrorKind};
/// assert_eq!(classify_sqlstate("55P03"), Some(ErrorKind::Timeout));
/// assert_eq!(classify_sqlstate("40P01"), Some(ErrorKind::Deadlock));
/// assert_eq!(classify_sqlstate("53200"), Some(ErrorKind::LockTableFull));
/// assert_eq!(classify_sqlstate("57P01"), Some(ErrorKind::ConnectionLost));
/// assert_eq!(classify_sqlstate("23505"), None);
/// ```
pub fn classify_sqlstate(code: &str) -> Option<ErrorKind> {
    match code {
        "55P03" => Some(ErrorKind::Timeout),
        "40P01" => Some(ErrorKind::Deadlock),
        "53200" => Some(ErrorKind::LockTableFull),
        // admin_shutdown, crash_shutdown, cannot_connect_now, database_dropped, idle_session_timeout
        "57P01" | "57P02" | "57P03" | "57P04" | "57P05" => Some(ErrorKind::ConnectionLost),
        c if c.starts_with("08") => Some(ErrorKind::ConnectionLost),
        _ => None,
    }
}

/// The SQLSTATE for one of PostgreSQL's primary error messages that matter to locks, for drivers
/// that report the message but not the code (diesel, for libpq and tokio-postgres alike). The
/// server writes these messages in English unless its `lc_messages` selects a translation; a
/// translated message is not recognised (`None`).
///
/// ```
/// use advisory_common::{classify_sqlstate, sqlstate_from_message, ErrorKind};
/// let code = sqlstate_from_message("canceling statement due to lock timeout");
/// assert_eq!(code.and_then(classify_sqlstate), Some(ErrorKind::Timeout));
/// assert_eq!(sqlstate_from_message("duplicate key value violates unique constraint"), None);
/// ```
pub fn sqlstate_from_message(message: &str) -> Option<&'static str> {
    match message {
        "canceling statement due to lock timeout" => Some("55P03"),
        "deadlock detected" => Some("40P01"),
        "out of shared memory" => Some("53200"),
        "terminating connection due to administrator command" => Some("57P01"),
        "terminating connection due to idle-session timeout" => Some("57P05"),
        _ => None,
    }
}
