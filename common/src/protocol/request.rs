//! One lock call as the caller asked for it, validated before anything is sent.

use std::time::Duration;

use crate::error::ErrorKind;
use crate::key::Key;
use crate::mode::LockMode;
use crate::sql::Wait;
use crate::timeout::{TimeoutOutOfRange, timeout_millis};

/// What a caller asked for: key, mode, and how long to wait. Built only with a timeout PostgreSQL
/// can express, so a refused timeout never sends anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Request {
    key: Key,
    mode: LockMode,
    wait: Wait,
    timeout: Option<Duration>,
    ms: Option<i32>,
}

/// A call refused before anything was sent, because of where the connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refused {
    /// A transaction-scope lock outside a transaction (PostgreSQL would release it at once).
    NotInTransaction,
    /// A session lock (its guard could not release it if the transaction aborted) or a new
    /// transaction inside an open one.
    AlreadyInTransaction,
}

impl Refused {
    /// The error kind the adapters report.
    pub fn kind(self) -> ErrorKind {
        match self {
            Refused::NotInTransaction => ErrorKind::NotInTransaction,
            Refused::AlreadyInTransaction => ErrorKind::AlreadyInTransaction,
        }
    }
}

impl Request {
    /// A request from its parts: `timeout` is used by [`Wait::Timeout`] only, where it is required
    /// (a missing one waits as [`Wait::Block`] does).
    pub fn new(
        key: Key,
        mode: LockMode,
        wait: Wait,
        timeout: Option<Duration>,
    ) -> Result<Request, TimeoutOutOfRange> {
        let (wait, timeout) = match (wait, timeout) {
            (Wait::Timeout, Some(d)) => (Wait::Timeout, Some(d)),
            (Wait::Timeout, None) => (Wait::Block, None),
            (w, _) => (w, None),
        };
        let ms = timeout.map(timeout_millis).transpose()?;
        Ok(Request {
            key,
            mode,
            wait,
            timeout,
            ms,
        })
    }

    /// Wait as long as it takes.
    pub fn block(key: Key, mode: LockMode) -> Request {
        Request {
            key,
            mode,
            wait: Wait::Block,
            timeout: None,
            ms: None,
        }
    }

    /// Never wait (`pg_try_advisory_*`).
    pub fn try_(key: Key, mode: LockMode) -> Request {
        Request {
            key,
            mode,
            wait: Wait::Try,
            timeout: None,
            ms: None,
        }
    }

    /// Wait at most `timeout` (server-side `lock_timeout`); refused if PostgreSQL cannot express it.
    pub fn timed(
        key: Key,
        mode: LockMode,
        timeout: Duration,
    ) -> Result<Request, TimeoutOutOfRange> {
        Request::new(key, mode, Wait::Timeout, Some(timeout))
    }

    /// The key.
    pub fn key(&self) -> Key {
        self.key
    }

    /// Exclusive or shared.
    pub fn mode(&self) -> LockMode {
        self.mode
    }

    /// How it waits.
    pub fn wait(&self) -> Wait {
        self.wait
    }

    /// The caller's timeout, for [`Wait::Timeout`]: what a typed `Timeout` error reports and what
    /// a lock statement's error is classified with.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The timeout as `lock_timeout` milliseconds (the timed statements' last parameter).
    pub fn millis(&self) -> Option<i32> {
        self.ms
    }
}

/// A session lock may be taken outside a transaction only: inside one that then aborted, its guard
/// could not release it. `in_transaction` is the driver's own bookkeeping (no round trip).
pub fn session_allowed(in_transaction: bool) -> Result<(), Refused> {
    if in_transaction {
        Err(Refused::AlreadyInTransaction)
    } else {
        Ok(())
    }
}

/// A transaction lock may be taken inside a transaction only (outside, PostgreSQL would release it
/// the instant it was taken).
pub fn xact_allowed(in_transaction: bool) -> Result<(), Refused> {
    if in_transaction {
        Ok(())
    } else {
        Err(Refused::NotInTransaction)
    }
}

/// Opening a transaction that holds a lock (lock, then `BEGIN`) needs a connection outside one.
pub fn begin_allowed(in_transaction: bool) -> Result<(), Refused> {
    session_allowed(in_transaction)
}
