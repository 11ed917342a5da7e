//! [`Locker`]: the callers' side of the lock service.

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::cmd::{Cmd, Reply, Request};
use super::task;
use super::{Driver, Leadership, Lease, LockerError, LockerOptions, Note};
use crate::key::Key;
use crate::locker::Attempt;
use crate::sql::Mode;

/// A lock service: thousands of session locks of this process held on one dedicated PostgreSQL
/// session, each as an owned, `'static + Send` [`Lease`]. The adapters' `Locker`s dereference to
/// this, over their driver `D`.
///
/// * **Multiplexing.** Every lease lives on the locker's one session connection (plus one short
///   lived *waiter* connection per key currently contended by another process). Tasks of this
///   process are excluded from each other per key and mode by the locker itself, FIFO, without a
///   round trip; processes exclude each other through PostgreSQL.
/// * **Batching.** A lone caller's request goes out at once; requests arriving while a round trip
///   is on the wire ride the next one together: one statement over an array of keys.
/// * **Waiting without polling.** A key held by another process is waited for by one waiter
///   connection blocked in `pg_advisory_lock` (at most one per key, however many local tasks
///   wait), which lets it go the moment it is granted; the session takes it in its next batch.
///   Timeouts are local timers that withdraw the request (and cancel the server wait when no
///   one needs it any more).
/// * **Lost-lock notification.** [`Lease::lost`] resolves when the session's connection closes or
///   fails, its backend is terminated, or the keepalive fails.
///
/// A `Locker` is a cheap handle (`Clone`); the session task lives while any handle or lease does.
/// Create it inside a tokio runtime.
///
/// ```
/// use advisory_common::shell::{Driver, Locker};
///
/// /// Hold every tenant's lock; `None` when another process holds one of them.
/// async fn own_all<D: Driver>(
///     locker: &Locker<D>,
///     tenants: &[i64],
/// ) -> Result<Option<Vec<advisory_common::shell::Lease<D::Error>>>, D::Error> {
///     let mut leases = Vec::new();
///     for &t in tenants {
///         match locker.try_lock(t).await? {
///             Some(lease) => leases.push(lease),
///             None => return Ok(None), // the leases taken so far are released on drop
///         }
///     }
///     Ok(Some(leases))
/// }
/// ```
pub struct Locker<D: Driver> {
    inner: Arc<Inner<D::Error>>,
    driver: PhantomData<fn() -> D>,
}

#[derive(Debug)]
struct Inner<E> {
    tx: mpsc::UnboundedSender<Cmd<E>>,
    next_id: AtomicU64,
}

impl<D: Driver> Clone for Locker<D> {
    fn clone(&self) -> Self {
        Locker {
            inner: self.inner.clone(),
            driver: PhantomData,
        }
    }
}

impl<D: Driver> std::fmt::Debug for Locker<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Locker")
            .field("inner", &self.inner)
            .finish()
    }
}

impl<D: Driver> Locker<D> {
    /// A locker over `driver`, with [`LockerOptions`]: spawns its session task on the current
    /// tokio runtime (panics outside one). The session connects at the first request.
    pub fn new(driver: D, options: LockerOptions) -> Locker<D> {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(task::run(rx, driver, options));
        Locker {
            inner: Arc::new(Inner {
                tx,
                next_id: AtomicU64::new(1),
            }),
            driver: PhantomData,
        }
    }

    /// Wait until `key` is held exclusively.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped future withdraws its request; a lease granted in that instant is
    /// released.
    pub async fn lock(&self, key: impl Into<Key>) -> Result<Lease<D::Error>, D::Error> {
        self.one(key.into(), Mode::Exclusive, Attempt::Wait)
            .await
            .map(Option::unwrap)
    }

    /// Wait until `key` is held in shared mode (other shared leases, here or elsewhere, coexist).
    /// Cancel safe.
    pub async fn lock_shared(&self, key: impl Into<Key>) -> Result<Lease<D::Error>, D::Error> {
        self.one(key.into(), Mode::Shared, Attempt::Wait)
            .await
            .map(Option::unwrap)
    }

    /// Take `key` exclusively if nobody (here or elsewhere) holds or waits for it in a conflicting
    /// mode; `Ok(None)` otherwise. A local conflict is answered without a round trip. Cancel safe.
    pub async fn try_lock(&self, key: impl Into<Key>) -> Result<Option<Lease<D::Error>>, D::Error> {
        self.one(key.into(), Mode::Exclusive, Attempt::Try).await
    }

    /// [`Locker::try_lock`] in shared mode.
    pub async fn try_lock_shared(
        &self,
        key: impl Into<Key>,
    ) -> Result<Option<Lease<D::Error>>, D::Error> {
        self.one(key.into(), Mode::Shared, Attempt::Try).await
    }

    /// Wait at most `timeout` for `key` exclusively; the adapter's `Error::Timeout` otherwise. The
    /// bound is a local timer that withdraws the request (no polling); a lease granted in the
    /// instant the timer fires is released. Cancel safe.
    pub async fn lock_timeout(
        &self,
        key: impl Into<Key>,
        timeout: Duration,
    ) -> Result<Lease<D::Error>, D::Error> {
        self.one_timeout(key.into(), Mode::Exclusive, timeout).await
    }

    /// [`Locker::lock_timeout`] in shared mode.
    pub async fn lock_shared_timeout(
        &self,
        key: impl Into<Key>,
        timeout: Duration,
    ) -> Result<Lease<D::Error>, D::Error> {
        self.one_timeout(key.into(), Mode::Shared, timeout).await
    }

    async fn one_timeout(
        &self,
        key: Key,
        mode: Mode,
        timeout: Duration,
    ) -> Result<Lease<D::Error>, D::Error> {
        match tokio::time::timeout(timeout, self.one(key, mode, Attempt::Wait)).await {
            Ok(r) => r.map(Option::unwrap),
            Err(_) => Err(D::Error::timeout(key, timeout)),
        }
    }

    /// Take every key exclusively, all or nothing: first all at once (one round trip when none is
    /// contended), then, from the first key that was not granted, one by one **in sorted order**
    /// (so two `lock_all` over overlapping keys cannot deadlock). On error or cancellation every
    /// lease already taken is released. Duplicate keys are taken once. Cancel safe.
    pub async fn lock_all<K: Into<Key>>(
        &self,
        keys: impl IntoIterator<Item = K>,
    ) -> Result<Vec<Lease<D::Error>>, D::Error> {
        let mut keys: Vec<Key> = keys.into_iter().map(Into::into).collect();
        keys.sort();
        keys.dedup();
        let tries = self
            .many(
                keys.iter()
                    .map(|k| (*k, Mode::Exclusive, Attempt::Try))
                    .collect(),
            )
            .await;
        let mut held = Vec::with_capacity(keys.len());
        let mut first_missing = None;
        for (i, r) in tries.into_iter().enumerate() {
            match r? {
                Some(lease) if first_missing.is_none() => held.push(lease),
                Some(lease) => drop(lease), // keep the sorted order: take it again after the gap
                None => {
                    first_missing.get_or_insert(i);
                }
            }
        }
        if let Some(i) = first_missing {
            for key in &keys[i..] {
                held.push(self.lock(*key).await?);
            }
        }
        Ok(held)
    }

    /// [`Locker::lock_all`] bounded by `timeout` as a whole; nothing is held on the adapter's
    /// `Error::Timeout` (its key is the first key).
    pub async fn lock_all_timeout<K: Into<Key>>(
        &self,
        keys: impl IntoIterator<Item = K>,
        timeout: Duration,
    ) -> Result<Vec<Lease<D::Error>>, D::Error> {
        let keys: Vec<Key> = keys.into_iter().map(Into::into).collect();
        let first = keys.iter().min().copied().unwrap_or(Key::BigInt(0));
        match tokio::time::timeout(timeout, self.lock_all(keys)).await {
            Ok(r) => r,
            Err(_) => Err(D::Error::timeout(first, timeout)),
        }
    }

    /// Leader election: wait until this process holds `key` exclusively, i.e. leads. The
    /// [`Leadership`]'s [`lost`](Leadership::lost) resolves when the lock can no longer be
    /// trusted; [`Locker::lead`] re-campaigns after a loss.
    pub async fn campaign(&self, key: impl Into<Key>) -> Result<Leadership<D::Error>, D::Error> {
        Ok(Leadership::new(self.lock(key).await?))
    }

    /// Run `work` while leading on `key`, forever: campaign, run `work(leadership)` until it
    /// returns or leadership is lost (then `work`'s future is dropped), campaign again. Returns
    /// only on a campaign error or when `work` returns `Some(value)`.
    pub async fn lead<T, F, Fut>(&self, key: impl Into<Key>, mut work: F) -> Result<T, D::Error>
    where
        F: FnMut(&Leadership<D::Error>) -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let key = key.into();
        loop {
            let leadership = self.campaign(key).await?;
            let done = tokio::select! {
                out = work(&leadership) => out,
                _ = leadership.lost() => None,
            };
            if let Some(v) = done {
                return Ok(v);
            }
            D::note(Note::Recampaign { key });
        }
    }

    async fn one(&self, key: Key, mode: Mode, attempt: Attempt) -> Answer<D::Error> {
        // the common case, without the vectors of `many`
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, rx) = oneshot::channel();
        let withdraw = Withdraw::new(id, &self.inner.tx);
        let req = Request {
            id,
            key,
            mode,
            attempt,
            reply,
        };
        if self.inner.tx.send(Cmd::One(req)).is_err() {
            withdraw.disarm();
            return Err(task_gone());
        }
        self.answer(withdraw, key, mode, rx.await)
    }

    fn answer(
        &self,
        withdraw: Withdraw<'_, D::Error>,
        key: Key,
        mode: Mode,
        reply: Result<Reply<D::Error>, oneshot::error::RecvError>,
    ) -> Result<Option<Lease<D::Error>>, D::Error> {
        let id = withdraw.disarm();
        match reply {
            Ok(Reply::Granted(lost)) => {
                Ok(Some(Lease::new(id, key, mode, self.inner.tx.clone(), lost)))
            }
            Ok(Reply::Refused) => Ok(None),
            Ok(Reply::Failed(e)) => Err(e),
            Err(_) => Err(task_gone()),
        }
    }

    /// Send requests in one command (they ride one batch) and collect the answers in order.
    async fn many(&self, reqs: Vec<(Key, Mode, Attempt)>) -> Vec<Answer<D::Error>> {
        let mut pending = Vec::with_capacity(reqs.len());
        let mut cmd = Vec::with_capacity(reqs.len());
        for (key, mode, attempt) in reqs {
            let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
            let (reply, rx) = oneshot::channel();
            cmd.push(Request {
                id,
                key,
                mode,
                attempt,
                reply,
            });
            pending.push((Withdraw::new(id, &self.inner.tx), key, mode, rx));
        }
        if self.inner.tx.send(Cmd::Request(cmd)).is_err() {
            return pending
                .into_iter()
                .map(|(w, ..)| {
                    w.disarm();
                    Err(task_gone())
                })
                .collect();
        }
        let mut out = Vec::with_capacity(pending.len());
        for (withdraw, key, mode, rx) in pending {
            let reply = rx.await;
            out.push(self.answer(withdraw, key, mode, reply));
        }
        out
    }
}

/// One request's answer: a lease, a refusal (`Ok(None)`), or an error.
type Answer<E> = Result<Option<Lease<E>>, E>;

/// The error of a call whose session task is gone (its runtime shut down).
pub(super) fn task_gone<E: LockerError>() -> E {
    E::connection_lost("the locker's session task is gone (its runtime shut down)")
}

/// A request not yet answered: withdrawn if the caller's future is dropped.
struct Withdraw<'a, E> {
    id: u64,
    tx: Option<&'a mpsc::UnboundedSender<Cmd<E>>>,
}

impl<'a, E> Withdraw<'a, E> {
    fn new(id: u64, tx: &'a mpsc::UnboundedSender<Cmd<E>>) -> Withdraw<'a, E> {
        Withdraw { id, tx: Some(tx) }
    }

    fn disarm(mut self) -> u64 {
        self.tx = None;
        self.id
    }
}

impl<E> Drop for Withdraw<'_, E> {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Cmd::Release(self.id, None));
        }
    }
}
