//! [`Lease`] and [`Leadership`].

use tokio::sync::{mpsc, oneshot, watch};

use super::LockerError;
use super::cmd::Cmd;
use crate::key::Key;
use crate::sql::Mode;

/// A session lock held through a [`Locker`](super::Locker): owned, `'static + Send`. `E` is the
/// adapter's error type (`sqlx_advisory::Lease` is `Lease<sqlx_advisory::Error>`, likewise
/// `diesel_advisory::Lease`).
///
/// Drop releases it (the unlock rides the locker's next batch; no runtime needed to drop it);
/// [`release`](Lease::release) releases it and waits for the server's answer. If the locker's
/// session is lost the lease is lost with it: [`lost`](Lease::lost) resolves.
///
/// ```
/// use advisory_common::shell::{Driver, Locker};
///
/// /// Work for a tenant until done or until its lock is lost.
/// async fn serve<D: Driver>(locker: &Locker<D>, tenant: u32) -> Result<(), D::Error> {
///     let lease = locker.lock(format!("tenant:{tenant}").as_str()).await?;
///     tokio::select! {
///         _ = lease.lost() => { /* stop working for this tenant */ }
///         _ = async { /* work */ } => {}
///     }
///     lease.release().await
/// }
/// ```
#[must_use = "dropping a lease releases the lock"]
#[derive(Debug)]
pub struct Lease<E> {
    id: u64,
    key: Key,
    mode: Mode,
    tx: Option<mpsc::UnboundedSender<Cmd<E>>>,
    lost: watch::Receiver<bool>,
}

impl<E: LockerError> Lease<E> {
    pub(super) fn new(
        id: u64,
        key: Key,
        mode: Mode,
        tx: mpsc::UnboundedSender<Cmd<E>>,
        lost: watch::Receiver<bool>,
    ) -> Lease<E> {
        Lease {
            id,
            key,
            mode,
            tx: Some(tx),
            lost,
        }
    }

    /// The key.
    pub fn key(&self) -> Key {
        self.key
    }

    /// `true` for a shared lease.
    pub fn is_shared(&self) -> bool {
        self.mode == Mode::Shared
    }

    /// Resolves when the lock can no longer be trusted: the locker's session connection closed or
    /// failed (backend terminated, server restarted), its keepalive failed (network cut), or the
    /// locker's runtime shut down. Cancel safe; call it as often as you like.
    ///
    /// It cannot promise that the server has already released the lock: after a network cut the
    /// dead session keeps it until PostgreSQL notices (TCP keepalive / `tcp_user_timeout` /
    /// `client_connection_check_interval`).
    pub async fn lost(&self) {
        let mut rx = self.lost.clone();
        let _ = rx.wait_for(|lost| *lost).await;
    }

    /// `true` once [`lost`](Lease::lost) has resolved.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow() || self.lost.has_changed().is_err()
    }

    /// Release the lock and wait until the session no longer holds it for this lease (the unlock
    /// answered, or the hold went straight to the next local waiter).
    /// The adapter's `Error::ConnectionLost` if the lease was lost.
    ///
    /// # Cancel safety
    /// Cancel safe: the release has been handed to the locker at the first poll.
    pub async fn release(mut self) -> Result<(), E> {
        let (ack, rx) = oneshot::channel();
        let Some(tx) = self.tx.take() else {
            return Ok(());
        };
        if tx.send(Cmd::Release(self.id, Some(ack))).is_err() {
            return Err(super::locker::task_gone());
        }
        rx.await.unwrap_or_else(|_| Err(super::locker::task_gone()))
    }
}

impl<E> Drop for Lease<E> {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Cmd::Release(self.id, None));
        }
    }
}

/// This process leads on a key: [`Locker::campaign`](super::Locker::campaign). Drop or
/// [`resign`](Leadership::resign) to step down.
#[must_use = "dropping a leadership steps down"]
#[derive(Debug)]
pub struct Leadership<E> {
    lease: Lease<E>,
}

impl<E: LockerError> Leadership<E> {
    pub(super) fn new(lease: Lease<E>) -> Leadership<E> {
        Leadership { lease }
    }

    /// The key led on.
    pub fn key(&self) -> Key {
        self.lease.key()
    }

    /// Resolves when leadership can no longer be trusted (see [`Lease::lost`]): stop acting as
    /// leader.
    pub async fn lost(&self) {
        self.lease.lost().await
    }

    /// `true` once leadership is lost.
    pub fn is_lost(&self) -> bool {
        self.lease.is_lost()
    }

    /// Step down and wait for the unlock.
    pub async fn resign(self) -> Result<(), E> {
        self.lease.release().await
    }
}
