//! The lock service's engine, without I/O: which leases are granted, which keys go to the server in
//! the next batch, which contended keys need a server-side wait.
//!
//! A *locker* holds many leases on one dedicated session ("multiplexing"). PostgreSQL's advisory
//! locks are re-entrant per session, so the server cannot exclude two tasks of the same process that
//! share the session: the [`Engine`] does, with a FIFO queue per key, without a round trip. The
//! session holds each key **at most once**, in the mode of its current local holders; leases of the
//! same key and mode share that one hold (shared mode), or take it in turn (exclusive mode: a lease
//! released while the next local waiter wants the same mode hands the server hold over locally).
//!
//! The driver shells (`sqlx-advisory`, `diesel-advisory`) only move data:
//!
//! * [`Engine::request`] / [`Engine::release`] as callers arrive and leave;
//! * [`Engine::next_batch`] when the session is idle: the keys to try-lock and unlock in one
//!   statement ([`sql::BATCH`]); the answer goes back through [`Engine::batch_done`] (or
//!   [`Engine::batch_failed`] / [`Engine::session_lost`]);
//! * [`Engine::poll_wait_start`]: a contended key some local caller waits for; the shell blocks a
//!   separate *waiter* connection in [`sql::wait_free_sql`] (lock, then unlock at once: "wake me when
//!   it is free") and reports [`Engine::wait_done`]; at most one such wait per key;
//!   [`Engine::poll_wait_cancel`]: nobody waits for that key any more, cancel the wait
//!   (`pg_cancel_backend` of the waiter's backend);
//! * [`Engine::poll_event`]: grants, refusals and failures to hand to the callers.
//!
//! Time is not the engine's business: a timed acquire is a caller-side timer that calls
//! [`Engine::release`] on its request when it fires (a request granted in that instant is released
//! like any lease).

mod engine;
pub mod hash;
#[cfg(feature = "tokio")]
pub mod shell;
pub mod sql;
#[cfg(test)]
mod tests;

pub use engine::Engine;

use crate::error::ErrorKind;
use crate::key::Key;
use crate::sql::Mode;

/// The `idle_session_timeout` a locker sets on its session so that the **server** ends it within a
/// bound when this process can no longer reach it (a network cut): three times what the locker
/// itself needs to notice the cut (`keepalive + keepalive_timeout`), so the locker always declares
/// its leases lost before the server can give the locks to anyone else. `None` without a keepalive
/// (an idle session would then be ended for nothing). Milliseconds, rounded up, at most
/// `i32::MAX`.
///
/// ```
/// use std::time::Duration;
/// use advisory_common::locker::server_idle_timeout_ms;
/// let s = Duration::from_secs(5);
/// assert_eq!(server_idle_timeout_ms(Some(s), s), Some(30_000));
/// assert_eq!(server_idle_timeout_ms(None, s), None);
/// ```
pub fn server_idle_timeout_ms(
    keepalive: Option<std::time::Duration>,
    keepalive_timeout: std::time::Duration,
) -> Option<i32> {
    let bound = keepalive?
        .saturating_add(keepalive_timeout)
        .saturating_mul(3);
    let ms = bound.as_nanos().div_ceil(1_000_000);
    Some(i32::try_from(ms).unwrap_or(i32::MAX).max(1))
}

/// The most ops one batch statement carries.
pub const MAX_BATCH: usize = 4096;

/// A request's (and the lease it becomes) identity, chosen by the shell.
pub type LeaseId = u64;

/// Whether a request may wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// Granted now, or refused: `try_lock`.
    Try,
    /// Wait until granted (the caller bounds it with its own timer if it wants).
    Wait,
}

/// One statement item: try-lock or unlock `key` in `mode` on the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Op {
    /// Lock (`true`: `pg_try_advisory_lock[_shared]`) or unlock.
    pub acquire: bool,
    /// The key.
    pub key: Key,
    /// The mode.
    pub mode: Mode,
}

/// What a caller is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The request is now a lease held by the current session.
    Granted(LeaseId),
    /// A [`Attempt::Try`] request that could not be granted now.
    Refused(LeaseId),
    /// The request failed (e.g. [`ErrorKind::LockTableFull`]); nothing is held for it.
    Failed(LeaseId, ErrorKind),
}

/// How a server-side wait ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitOutcome {
    /// The key was free for a moment (the waiter locked and unlocked it): try again.
    Free,
    /// The wait was cancelled (after [`Engine::poll_wait_cancel`]).
    Cancelled,
    /// The wait failed; the local waiter at the head of the key's queue gets this error.
    Failed(ErrorKind),
}
