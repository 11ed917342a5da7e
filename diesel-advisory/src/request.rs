//! What a caller asked for, independent of the connection type.

use std::time::Duration;

use advisory_common::Key;
use advisory_common::protocol::{self, Finish};
use advisory_common::sql::{Mode, Wait};

use crate::error::{Error, from_failure};
use crate::stmt::BoolStmt;

/// How an acquire waits.
#[derive(Clone, Copy, Debug)]
pub(crate) enum How {
    Block,
    Try,
    Timeout(Duration),
}

/// One acquire: key, mode, and how long to wait.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Request {
    pub(crate) key: Key,
    pub(crate) mode: Mode,
    pub(crate) how: How,
}

impl Request {
    pub(crate) fn new(key: Key, mode: Mode, how: How) -> Request {
        Request { key, mode, how }
    }

    pub(crate) fn timeout(&self) -> Option<Duration> {
        match self.how {
            How::Timeout(d) => Some(d),
            How::Block | How::Try => None,
        }
    }

    /// The request as the protocol takes it, with the timeout validated (nothing is sent for a
    /// timeout PostgreSQL cannot express).
    pub(crate) fn validated(&self) -> Result<protocol::Request, Error> {
        let (wait, timeout) = match self.how {
            How::Block => (Wait::Block, None),
            How::Try => (Wait::Try, None),
            How::Timeout(d) => (Wait::Timeout, Some(d)),
        };
        Ok(protocol::Request::new(self.key, self.mode, wait, timeout)?)
    }

    /// The one-round-trip "lock, then `BEGIN`" batch that opens a transaction already holding
    /// this transaction-level lock ([`protocol::begin_statement`]); the timeout is validated first.
    #[cfg(any(feature = "sync", feature = "async"))]
    pub(crate) fn lock_then_begin(&self) -> Result<String, Error> {
        Ok(protocol::begin_statement(&self.validated()?))
    }

    pub(crate) fn classify(&self, err: diesel::result::Error) -> Error {
        crate::error::classify(err, self.key, self.timeout())
    }
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
        finish: Finish<diesel::result::Error>,
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

/// The prepared unlock of one hold ([`protocol::release_statement`]).
pub(crate) fn unlock_stmt(key: Key, mode: Mode) -> BoolStmt {
    protocol::release_statement(key, mode).into()
}

/// The prepared `pg_locks` check ([`protocol::held_statement`]).
pub(crate) fn held_stmt(key: Key, mode: Mode) -> BoolStmt {
    protocol::held_statement(key, mode).into()
}

/// A waiting acquire always yields a guard; `None` only comes from `try_`.
pub(crate) fn granted<G>(guard: Option<G>) -> G {
    guard.expect("a waiting acquire returns a guard or an error")
}

/// The six session-scope acquire methods of a sync `LockExt` impl, forwarding to
/// `$acquire(self, Request) -> Result<Option<Self::Guard>, Error>`.
#[cfg(feature = "sync")]
macro_rules! sync_lock_methods {
    ($acquire:path) => {
        fn advisory_lock(self, key: impl Into<Key>) -> Result<Self::Guard, Error> {
            let req = Request::new(key.into(), Mode::Exclusive, How::Block);
            $acquire(self, req).map(granted)
        }
        fn advisory_lock_shared(self, key: impl Into<Key>) -> Result<Self::Guard, Error> {
            let req = Request::new(key.into(), Mode::Shared, How::Block);
            $acquire(self, req).map(granted)
        }
        fn try_advisory_lock(self, key: impl Into<Key>) -> Result<Option<Self::Guard>, Error> {
            $acquire(self, Request::new(key.into(), Mode::Exclusive, How::Try))
        }
        fn try_advisory_lock_shared(
            self,
            key: impl Into<Key>,
        ) -> Result<Option<Self::Guard>, Error> {
            $acquire(self, Request::new(key.into(), Mode::Shared, How::Try))
        }
        fn advisory_lock_timeout(
            self,
            key: impl Into<Key>,
            timeout: Duration,
        ) -> Result<Self::Guard, Error> {
            let req = Request::new(key.into(), Mode::Exclusive, How::Timeout(timeout));
            $acquire(self, req).map(granted)
        }
        fn advisory_lock_shared_timeout(
            self,
            key: impl Into<Key>,
            timeout: Duration,
        ) -> Result<Self::Guard, Error> {
            let req = Request::new(key.into(), Mode::Shared, How::Timeout(timeout));
            $acquire(self, req).map(granted)
        }
    };
}
#[cfg(feature = "sync")]
pub(crate) use sync_lock_methods;

/// The six session-scope acquire methods of an `AsyncLockExt` impl, forwarding to
/// `$acquire(self, Request) -> impl Future<Output = Result<Option<Self::Guard>, Error>> + Send`.
/// The key is converted before the future is built.
#[cfg(feature = "async")]
macro_rules! async_lock_methods {
    ($acquire:path) => {
        fn advisory_lock(
            self,
            key: impl Into<Key>,
        ) -> impl Future<Output = Result<Self::Guard, Error>> + Send {
            let fut = $acquire(self, Request::new(key.into(), Mode::Exclusive, How::Block));
            async move { fut.await.map(granted) }
        }
        fn advisory_lock_shared(
            self,
            key: impl Into<Key>,
        ) -> impl Future<Output = Result<Self::Guard, Error>> + Send {
            let fut = $acquire(self, Request::new(key.into(), Mode::Shared, How::Block));
            async move { fut.await.map(granted) }
        }
        fn try_advisory_lock(
            self,
            key: impl Into<Key>,
        ) -> impl Future<Output = Result<Option<Self::Guard>, Error>> + Send {
            $acquire(self, Request::new(key.into(), Mode::Exclusive, How::Try))
        }
        fn try_advisory_lock_shared(
            self,
            key: impl Into<Key>,
        ) -> impl Future<Output = Result<Option<Self::Guard>, Error>> + Send {
            $acquire(self, Request::new(key.into(), Mode::Shared, How::Try))
        }
        fn advisory_lock_timeout(
            self,
            key: impl Into<Key>,
            timeout: Duration,
        ) -> impl Future<Output = Result<Self::Guard, Error>> + Send {
            let req = Request::new(key.into(), Mode::Exclusive, How::Timeout(timeout));
            let fut = $acquire(self, req);
            async move { fut.await.map(granted) }
        }
        fn advisory_lock_shared_timeout(
            self,
            key: impl Into<Key>,
            timeout: Duration,
        ) -> impl Future<Output = Result<Self::Guard, Error>> + Send {
            let req = Request::new(key.into(), Mode::Shared, How::Timeout(timeout));
            let fut = $acquire(self, req);
            async move { fut.await.map(granted) }
        }
    };
}
#[cfg(feature = "async")]
pub(crate) use async_lock_methods;
