//! What goes in and out of a conversation: the driver's [`Answer`], the next [`Step`], and how
//! a request [`Finish`]es.

use super::statement::Statement;
use crate::error::ErrorKind;

/// A driver's reply to one [`Statement`], reduced to what the protocol needs. `E` is the driver's
/// own error, carried through untouched so the adapter can wrap it.
#[derive(Debug)]
pub enum Answer<E> {
    /// A prepared statement's one `boolean` column (`locked`, `unlocked`, `held`).
    Row(bool),
    /// A simple-protocol statement (or batch) completed without error.
    Done,
    /// The statement failed; the kind is the driver's SQLSTATE through
    /// [`classify_sqlstate`](crate::classify_sqlstate) (`None`: any other error).
    Failed(E, Option<ErrorKind>),
}

/// What to do next in a conversation.
#[derive(Debug)]
pub enum Step<E> {
    /// Send this statement and hand its answer back.
    Send(Statement),
    /// The conversation is over.
    Finish(Finish<E>),
}

/// How a lock request ended, and what the connection is fit for.
#[derive(Debug)]
pub struct Finish<E> {
    /// `Ok(true)`: granted (the session, or the transaction, holds one more hold); `Ok(false)`: a
    /// `try_` found the lock taken; `Err`: see [`Failure`].
    pub outcome: Result<bool, Failure<E>>,
    /// What the connection is fit for now.
    pub after: After,
    /// The lock was granted in the instant its `lock_timeout` fired (PostgreSQL kept it and raised
    /// `55P03` anyway), found by the `pg_locks` check, and is reported as granted.
    pub kept_at_timeout: bool,
}

/// Why a lock request failed.
#[derive(Debug)]
pub enum Failure<E> {
    /// The timed acquire did not get the lock in time, and the session does not hold it: the
    /// adapter's typed `Timeout` error with the caller's duration.
    Timeout,
    /// The lock statement (or batch) failed: classify this driver error with the request's
    /// timeout ([`Request::timeout`](super::Request::timeout)).
    Statement(E),
    /// The `pg_locks` check after a timeout failed: classify this driver error without a timeout.
    /// The lock may be held ([`After::MaybeHeld`]).
    Check(E),
}

/// What the connection is fit for once a request has finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum After {
    /// Its locks are exactly what the outcome says; use it (or return it to its pool) as it is.
    Clean,
    /// The session may hold exactly one hold this request added (a timed acquire timed out and the
    /// check that would have told failed). A timed acquire only ever waits for a key the session
    /// does not already hold in that mode, so one plain unlock is exact; otherwise discard the
    /// connection.
    MaybeHeld,
    /// The lock statement failed in a way that is not a clean refusal (not a timeout, deadlock or
    /// full lock table): the driver did not say what the server did. An adapter that can queue
    /// the exact undo (`unlock if held`, [`sql::unlock_if_held_literal`](crate::sql::unlock_if_held_literal))
    /// or discard the connection does; the others leave it to the driver, whose error usually
    /// means the connection is gone.
    Uncertain,
    /// A timed attempt inside a transaction failed and its savepoint could not be rolled back: the
    /// caller's transaction is aborted (it must be rolled back).
    TransactionAborted,
}

impl After {
    /// `true` unless [`After::Clean`]: the adapter's drop-time undo stays armed.
    pub fn is_unsettled(self) -> bool {
        self != After::Clean
    }
}
