//! The messages between the callers ([`super::Locker`], [`super::Lease`]) and the session task.

use tokio::sync::{oneshot, watch};

use crate::key::Key;
use crate::locker::{Attempt, LeaseId};
use crate::sql::Mode;

/// Answers a release: `Ok` once the session no longer holds the key for the lease.
pub(super) type Ack<E> = oneshot::Sender<Result<(), E>>;

pub(super) enum Cmd<E> {
    /// Ask for one key.
    One(Request<E>),
    /// Ask for these keys together (one command so that they ride one batch).
    Request(Vec<Request<E>>),
    /// Give up a lease or a request; `ack` fires once the session no longer holds it for this lease.
    Release(LeaseId, Option<Ack<E>>),
}

impl<E> std::fmt::Debug for Cmd<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cmd")
    }
}

pub(super) struct Request<E> {
    pub id: LeaseId,
    pub key: Key,
    pub mode: Mode,
    pub attempt: Attempt,
    pub reply: ReplyTx<E>,
}

/// Answers a request.
pub(super) type ReplyTx<E> = oneshot::Sender<Reply<E>>;

/// A request or lease: its key, and the caller's reply channel until it is answered.
pub(super) type Pending<E> = (Key, Option<ReplyTx<E>>);

pub(super) enum Reply<E> {
    Granted(watch::Receiver<bool>),
    Refused,
    Failed(E),
}
