//! The lock service: many session locks held on one dedicated connection, acquired and released
//! in batches, waited for server-side without polling, and lost-lock notification.
//!
//! The decisions (who holds what, which keys go out in the next batch, which contended key needs a
//! server-side wait) are made by the driver-independent engine in `advisory_common::locker`; this
//! module only runs the session, the waiters and the keepalive on diesel-async's transport
//! (`tokio-postgres`).

mod lease;
mod task;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use advisory_common::Key;
use advisory_common::locker::Attempt;
use advisory_common::sql::Mode;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::Config;

pub use lease::{Leadership, Lease};
use task::{Cmd, Reply, Request};

use crate::Error;

/// How a [`Locker`] watches its session.
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

/// A lock service: thousands of session locks of this process held on one dedicated PostgreSQL
/// session, each as an owned, `'static + Send` [`Lease`].
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
///   one needs it any more: `pg_cancel_backend`).
/// * **Lost-lock notification.** [`Lease::lost`] resolves when the session's connection closes or
///   fails, its backend is terminated, or the keepalive fails.
///
/// A `Locker` is a cheap handle (`Clone`); the session task lives while any handle or lease does.
/// Create it inside a tokio runtime.
///
/// ```
/// # #[cfg(feature = "locker")]
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let url = advisory_harness::db().url();
/// use diesel_advisory::Locker;
///
/// // the URL your AsyncDieselConnectionManager (bb8 / deadpool) was built with
/// let locker = Locker::connect(url)?;
/// let lease = locker.lock("tenant:7").await?;
/// assert!(locker.try_lock("tenant:7").await?.is_none()); // excluded locally, no round trip
/// tokio::select! {
///     _ = lease.lost() => { /* stop working for tenant 7 */ }
///     _ = async { /* work */ } => {}
/// }
/// lease.release().await?;
/// # Ok(()) }
/// # #[cfg(not(feature = "locker"))] fn main() {}
/// ```
#[derive(Clone, Debug)]
pub struct Locker {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    tx: mpsc::UnboundedSender<Cmd>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cmd")
    }
}

impl Locker {
    /// A locker connecting to `url` (a `postgres://` URL, as given to diesel-async's
    /// `AsyncPgConnection::establish` or `AsyncDieselConnectionManager::new`; no TLS, like those).
    /// Its connections are its own: a bb8 / deadpool pool built on the same URL stays free for
    /// your queries.
    pub fn connect(url: &str) -> Result<Locker, Error> {
        let config: Config = url.parse().map_err(|e: tokio_postgres::Error| {
            Error::Database(diesel::result::Error::QueryBuilderError(e.into()))
        })?;
        Ok(Locker::with_config(config, LockerOptions::default()))
    }

    /// A locker with an explicit `tokio-postgres` configuration and [`LockerOptions`]. The
    /// session connects at the first request.
    pub fn with_config(config: Config, options: LockerOptions) -> Locker {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(task::run(rx, config, options));
        Locker {
            inner: Arc::new(Inner {
                tx,
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// Wait until `key` is held exclusively.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped future withdraws its request; a lease granted in that instant is
    /// released.
    pub async fn lock(&self, key: impl Into<Key>) -> Result<Lease, Error> {
        self.one(key.into(), Mode::Exclusive, Attempt::Wait)
            .await
            .map(Option::unwrap)
    }

    /// Wait until `key` is held in shared mode (other shared leases, here or elsewhere, coexist).
    /// Cancel safe.
    pub async fn lock_shared(&self, key: impl Into<Key>) -> Result<Lease, Error> {
        self.one(key.into(), Mode::Shared, Attempt::Wait)
            .await
            .map(Option::unwrap)
    }

    /// Take `key` exclusively if nobody (here or elsewhere) holds or waits for it in a conflicting
    /// mode; `Ok(None)` otherwise. A local conflict is answered without a round trip. Cancel safe.
    pub async fn try_lock(&self, key: impl Into<Key>) -> Result<Option<Lease>, Error> {
        self.one(key.into(), Mode::Exclusive, Attempt::Try).await
    }

    /// [`Locker::try_lock`] in shared mode.
    pub async fn try_lock_shared(&self, key: impl Into<Key>) -> Result<Option<Lease>, Error> {
        self.one(key.into(), Mode::Shared, Attempt::Try).await
    }

    /// Wait at most `timeout` for `key` exclusively; [`Error::Timeout`] otherwise. The bound is a
    /// local timer that withdraws the request (no polling); a lease granted in the instant the
    /// timer fires is released. Cancel safe.
    pub async fn lock_timeout(
        &self,
        key: impl Into<Key>,
        timeout: Duration,
    ) -> Result<Lease, Error> {
        let key = key.into();
        match tokio::time::timeout(timeout, self.one(key, Mode::Exclusive, Attempt::Wait)).await {
            Ok(r) => r.map(Option::unwrap),
            Err(_) => Err(Error::Timeout { key, timeout }),
        }
    }

    /// [`Locker::lock_timeout`] in shared mode.
    pub async fn lock_shared_timeout(
        &self,
        key: impl Into<Key>,
        timeout: Duration,
    ) -> Result<Lease, Error> {
        let key = key.into();
        match tokio::time::timeout(timeout, self.one(key, Mode::Shared, Attempt::Wait)).await {
            Ok(r) => r.map(Option::unwrap),
            Err(_) => Err(Error::Timeout { key, timeout }),
        }
    }

    /// Take every key exclusively, all or nothing: first all at once (one round trip when none is
    /// contended), then, from the first key that was not granted, one by one **in sorted order**
    /// (so two `lock_all` over overlapping keys cannot deadlock). On error or cancellation every
    /// lease already taken is released. Duplicate keys are taken once. Cancel safe.
    pub async fn lock_all<K: Into<Key>>(
        &self,
        keys: impl IntoIterator<Item = K>,
    ) -> Result<Vec<Lease>, Error> {
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
        let mut held: Vec<Lease> = Vec::with_capacity(keys.len());
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

    /// [`Locker::lock_all`] bounded by `timeout` as a whole; nothing is held on
    /// [`Error::Timeout`] (its key is the first key).
    pub async fn lock_all_timeout<K: Into<Key>>(
        &self,
        keys: impl IntoIterator<Item = K>,
        timeout: Duration,
    ) -> Result<Vec<Lease>, Error> {
        let keys: Vec<Key> = keys.into_iter().map(Into::into).collect();
        let first = keys.iter().min().copied().unwrap_or(Key::BigInt(0));
        match tokio::time::timeout(timeout, self.lock_all(keys)).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                key: first,
                timeout,
            }),
        }
    }

    /// Leader election: wait until this process holds `key` exclusively, i.e. leads. The
    /// [`Leadership`]'s [`lost`](Leadership::lost) resolves when the lock can no longer be
    /// trusted; [`Locker::lead`] re-campaigns after a loss.
    pub async fn campaign(&self, key: impl Into<Key>) -> Result<Leadership, Error> {
        Ok(Leadership::new(self.lock(key).await?))
    }

    /// Run `work` while leading on `key`, forever: campaign, run `work(leadership)` until it
    /// returns or leadership is lost (then `work`'s future is dropped), campaign again. Returns
    /// only on a campaign error or when `work` returns `Some(value)`.
    pub async fn lead<T, F, Fut>(&self, key: impl Into<Key>, mut work: F) -> Result<T, Error>
    where
        F: FnMut(&Leadership) -> Fut,
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
            tracing::info!(key = %key, "leadership ended; campaigning again");
        }
    }

    async fn one(&self, key: Key, mode: Mode, attempt: Attempt) -> Result<Option<Lease>, Error> {
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
        withdraw: Withdraw<'_>,
        key: Key,
        mode: Mode,
        reply: Result<Reply, oneshot::error::RecvError>,
    ) -> Result<Option<Lease>, Error> {
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
    async fn many(&self, reqs: Vec<(Key, Mode, Attempt)>) -> Vec<Result<Option<Lease>, Error>> {
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

fn task_gone() -> Error {
    task::lost_error("the locker's session task is gone (its runtime shut down)")
}

/// A request not yet answered: withdrawn if the caller's future is dropped.
struct Withdraw<'a> {
    id: u64,
    tx: Option<&'a mpsc::UnboundedSender<Cmd>>,
}

impl<'a> Withdraw<'a> {
    fn new(id: u64, tx: &'a mpsc::UnboundedSender<Cmd>) -> Withdraw<'a> {
        Withdraw { id, tx: Some(tx) }
    }

    fn disarm(mut self) -> u64 {
        self.tx = None;
        self.id
    }
}

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Cmd::Release(self.id, None));
        }
    }
}
