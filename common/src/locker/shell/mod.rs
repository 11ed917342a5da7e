//! The lock service's tokio shell, written once for every adapter (feature `tokio`): the
//! [`Locker`], [`Lease`] and [`Leadership`] that `sqlx_advisory::Locker` and
//! `diesel_advisory::Locker` (feature `locker`) are made of, and the session task that runs the
//! lock service's engine (`locker::Engine`, without I/O): the batch loop on one dedicated session,
//! the waiter connections, the keepalive, lost-session detection.
//!
//! An adapter only does the driver I/O, by implementing [`Driver`] (open the session and the
//! waiter connections, run one of the locker's statements, all of which are in this crate, tell
//! when the session's connection is lost, cancel a waiter's wait, classify its driver's errors),
//! and makes its own error type a [`LockerError`]. Its public `Locker` is a thin wrapper that adds
//! its constructors and dereferences to [`Locker<D>`]; its `Lease` and `Leadership` are
//! [`Lease<Error>`] and [`Leadership<Error>`] over its own `Error`. You never name this module
//! yourself: use the adapters' types.

mod cmd;
mod lease;
mod locker;
mod task;
mod waiter;

use std::fmt;
use std::time::Duration;

use crate::error::ErrorKind;
use crate::key::Key;
use crate::sql::Mode;

use super::LeaseId;

pub use lease::{Leadership, Lease};
pub use locker::Locker;

#[doc(hidden)]
pub use tracing as __tracing;

/// How a [`Locker`] watches its session.
///
/// ```
/// use std::time::Duration;
/// use advisory_common::shell::LockerOptions;
///
/// let options = LockerOptions::default()
///     .keepalive(Some(Duration::from_secs(2)))
///     .keepalive_timeout(Duration::from_secs(1));
/// assert!(options.server_idle_timeout);
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LockerOptions {
    /// Send `SELECT 1` on the session after this long without traffic (`None`: never). A
    /// terminated backend or a closed socket is noticed at once without it (the session always
    /// has a read pending); the keepalive is what notices a *silent* network cut. Default 5 s.
    pub keepalive: Option<Duration>,
    /// How long the session may take to answer any statement (keepalive, batch) before it is
    /// declared lost. Default 5 s. A network cut is thus noticed within `keepalive +
    /// keepalive_timeout`.
    pub keepalive_timeout: Duration,
    /// Ask the server to end the session after `3 × (keepalive + keepalive_timeout)` without a
    /// statement (`idle_session_timeout`, PostgreSQL 14+; default `true`, ignored without a
    /// keepalive). The keepalive keeps a live session busy, so this only ends a session this
    /// process can no longer reach: after a network cut the server releases its locks within that
    /// bound (30 s with the defaults) instead of when TCP gives up (hours), and always after the
    /// locker has declared them lost.
    pub server_idle_timeout: bool,
}

impl Default for LockerOptions {
    fn default() -> Self {
        LockerOptions {
            keepalive: Some(Duration::from_secs(5)),
            keepalive_timeout: Duration::from_secs(5),
            server_idle_timeout: true,
        }
    }
}

impl LockerOptions {
    /// Set [`LockerOptions::keepalive`].
    pub fn keepalive(mut self, every: Option<Duration>) -> Self {
        self.keepalive = every;
        self
    }

    /// Set [`LockerOptions::keepalive_timeout`].
    pub fn keepalive_timeout(mut self, timeout: Duration) -> Self {
        self.keepalive_timeout = timeout;
        self
    }

    /// Set [`LockerOptions::server_idle_timeout`].
    pub fn server_idle_timeout(mut self, on: bool) -> Self {
        self.server_idle_timeout = on;
        self
    }
}

/// An adapter's error type, as the shell builds it.
pub trait LockerError: fmt::Debug + Send + 'static {
    /// The session (or the shell's task) is gone: `ConnectionLost`, `why` as its message.
    fn connection_lost(why: &str) -> Self;
    /// A timed acquire of `key` did not get it within `timeout`: `Timeout`.
    fn timeout(key: Key, timeout: Duration) -> Self;
    /// A request for `key` failed with `kind` (never [`ErrorKind::ConnectionLost`]): `Deadlock`,
    /// `LockTableFull`, or a database error carrying `message`.
    fn failed(kind: ErrorKind, key: Key, message: String) -> Self;
}

/// The four bound arrays of a batch statement (`locker::sql::encode`): the op codes and the
/// `bigint` keys, and for `locker::sql::BATCH` / `locker::sql::BATCH_HELD` the pair keys'
/// halves too.
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a> {
    /// The statement: `locker::sql::BATCH`, `locker::sql::BATCH_BIGINT` or
    /// `locker::sql::BATCH_HELD`.
    pub sql: &'static str,
    /// `$1`, `int2[]`.
    pub codes: &'a [i16],
    /// `$2`, `int8[]`.
    pub keys: &'a [i64],
    /// `$3` and `$4`, `int4[]` each; `None` for `locker::sql::BATCH_BIGINT` (two parameters).
    pub pairs: Option<(&'a [i32], &'a [i32])>,
}

/// One driver's I/O for the shell. Every statement's text comes from the shell (all of it is in
/// this crate); the driver binds the parameters it is given and reads the one column back.
///
/// Session methods take the session mutably and are never called concurrently; waiter methods
/// run on their own tasks.
pub trait Driver: Send + Sync + Sized + 'static {
    /// The adapter's error type (what its `Locker`'s methods and `Lease::release` return).
    type Error: LockerError;
    /// The driver's own error.
    type DriverError: fmt::Display + Send;
    /// The session connection; it must always have a read pending, so that [`Driver::lost`]
    /// resolves the moment the connection closes.
    type Session: Send + 'static;
    /// A waiter connection.
    type Waiter: Send + 'static;
    /// What cancels a waiter's wait, taken before the wait is sent ([`Driver::canceller`]).
    type Canceller: Send + 'static;

    /// Open the session connection; returns it with its backend pid.
    fn connect(
        &self,
    ) -> impl Future<Output = Result<(Self::Session, i32), Self::DriverError>> + Send;

    /// Run a one-key statement (`sql`: `sql::lock_sql` or `sql::unlock_sql`) with
    /// `key` bound (`$1`, or `$1, $2` for a pair key); one row, one `boolean` column.
    fn lock_one(
        session: &mut Self::Session,
        sql: &'static str,
        key: Key,
    ) -> impl Future<Output = Result<bool, Self::DriverError>> + Send;

    /// Run `locker::sql::BATCH` or `locker::sql::BATCH_BIGINT`; one row, one `bigint[]` column.
    fn batch(
        session: &mut Self::Session,
        batch: Batch<'_>,
    ) -> impl Future<Output = Result<Vec<i64>, Self::DriverError>> + Send;

    /// Run `locker::sql::BATCH_HELD`; one row, one `boolean[]` column.
    fn batch_held(
        session: &mut Self::Session,
        batch: Batch<'_>,
    ) -> impl Future<Output = Result<Vec<bool>, Self::DriverError>> + Send;

    /// Run a statement without parameters, ignoring its rows (`locker::sql::KEEPALIVE`,
    /// `sql::UNLOCK_ALL`).
    fn execute(
        session: &mut Self::Session,
        sql: &'static str,
    ) -> impl Future<Output = Result<(), Self::DriverError>> + Send;

    /// Run a statement with one `int4` parameter, ignoring its rows
    /// (`locker::sql::SET_IDLE_SESSION_TIMEOUT`).
    fn execute_int(
        session: &mut Self::Session,
        sql: &'static str,
        value: i32,
    ) -> impl Future<Output = Result<(), Self::DriverError>> + Send;

    /// Resolves (with why) when the session's connection closes or fails. Polled between
    /// statements and dropped whenever anything else happens: it must be cancel safe.
    fn lost(session: &mut Self::Session) -> impl Future<Output = String> + Send;

    /// Close the session cleanly (every handle and lease is gone; `UNLOCK_ALL` has been sent).
    fn close(session: Self::Session) -> impl Future<Output = ()> + Send;

    /// Drop a lost session now (its socket is closed; the server ends the backend if it is still
    /// there).
    fn discard(session: Self::Session) {
        drop(session);
    }

    /// Open a waiter connection.
    fn open_waiter(&self) -> impl Future<Output = Result<Self::Waiter, Self::DriverError>> + Send;

    /// Whether an idle waiter connection can serve another wait.
    fn waiter_usable(waiter: &Self::Waiter) -> bool {
        let _ = waiter;
        true
    }

    /// Run `locker::sql::wait_free_sql` (`sql`) with `key` bound; blocks until the key is free.
    fn wait_free(
        waiter: &mut Self::Waiter,
        sql: &'static str,
        key: Key,
    ) -> impl Future<Output = Result<(), Self::DriverError>> + Send;

    /// What [`Driver::cancel`] needs to cancel `waiter`'s wait.
    fn canceller(waiter: &Self::Waiter) -> Self::Canceller;

    /// Ask the server once to cancel the wait of the waiter `canceller` was taken from (the shell
    /// repeats it until the wait answers). Errors are the driver's to swallow.
    fn cancel(&self, canceller: &mut Self::Canceller) -> impl Future<Output = ()> + Send;

    /// The lock-failure kind of a driver error (`None`: unknown, the session cannot be trusted)
    /// and the message to report it with.
    fn classify(error: Self::DriverError) -> (Option<ErrorKind>, String);

    /// Emit `note` as a `tracing` event under the adapter's target: implement with
    /// `locker_tracing!`.
    fn note(note: Note<'_>);

    /// The span of one batch (`advisory_locker.batch`, fields `ops` and an empty `pid`):
    /// `locker_tracing!`.
    fn batch_span(ops: usize) -> tracing::Span;

    /// The span of one waiter (`advisory_locker.wait`, fields `key` and `mode`):
    /// `locker_tracing!`.
    fn wait_span(key: Key, mode: Mode) -> tracing::Span;
}

/// What the shell reports through [`Driver::note`].
#[derive(Clone, Copy, Debug)]
pub enum Note<'a> {
    /// A request arrived (`trace`).
    Request {
        /// Its id.
        id: LeaseId,
        /// Its key.
        key: Key,
        /// Its mode.
        mode: Mode,
    },
    /// The session connected (`debug`).
    SessionOpened {
        /// Its backend pid.
        pid: i32,
    },
    /// The session could not be opened (`warn`).
    CannotOpen {
        /// The driver's error.
        error: &'a str,
    },
    /// A batch failed, the session is fine (`warn`).
    BatchFailed {
        /// The error.
        error: &'a str,
    },
    /// The session is lost, and its leases with it (`warn`).
    SessionLost {
        /// Its backend pid.
        pid: i32,
        /// Why.
        why: &'a str,
    },
    /// [`Locker::lead`] lost its leadership and campaigns again (`info`).
    Recampaign {
        /// The key led on.
        key: Key,
    },
}

/// Implements [`Driver::note`], [`Driver::batch_span`] and [`Driver::wait_span`] inside an
/// adapter's `impl Driver`, so that the locker's events and spans carry the adapter's module as
/// their `tracing` target.
#[macro_export]
#[doc(hidden)]
macro_rules! locker_tracing {
    () => {
        fn note(note: $crate::locker::shell::Note<'_>) {
            use $crate::locker::shell::Note;
            use $crate::locker::shell::__tracing as tracing;
            match note {
                Note::Request { id, key, mode } => {
                    tracing::trace!(id, key = %key, mode = mode.as_str(), "locker request")
                }
                Note::SessionOpened { pid } => {
                    tracing::debug!(pid, "advisory locker session opened")
                }
                Note::CannotOpen { error } => {
                    tracing::warn!(error = %error, "advisory locker cannot open its session")
                }
                Note::BatchFailed { error } => {
                    tracing::warn!(error = %error, "advisory locker batch failed")
                }
                Note::SessionLost { pid, why } => tracing::warn!(
                    pid,
                    why,
                    "advisory locker session lost; its leases are lost"
                ),
                Note::Recampaign { key } => {
                    tracing::info!(key = %key, "leadership ended; campaigning again")
                }
            }
        }

        fn batch_span(ops: usize) -> $crate::locker::shell::__tracing::Span {
            $crate::locker::shell::__tracing::debug_span!(
                "advisory_locker.batch",
                ops,
                pid = $crate::locker::shell::__tracing::field::Empty
            )
        }

        fn wait_span(
            key: $crate::Key,
            mode: $crate::sql::Mode,
        ) -> $crate::locker::shell::__tracing::Span {
            $crate::locker::shell::__tracing::debug_span!(
                "advisory_locker.wait",
                key = %key,
                mode = mode.as_str()
            )
        }
    };
}
