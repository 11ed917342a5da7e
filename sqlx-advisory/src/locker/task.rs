//! The locker's session task: one dedicated session (a `PgListener`, so a read is pending whenever
//! no statement is: a terminated backend or a closed socket is seen at once), the batch loop over
//! [`Engine`], the waiter connections, the keepalive.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use advisory_common::locker::hash::FastMap;
use advisory_common::locker::{Engine, Event, LeaseId, Op, WaitOutcome, sql as lsql};
use advisory_common::sql::{self as csql, Mode};
use advisory_common::{ErrorKind, Key};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool, Row};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

use super::LockerOptions;
use crate::Error;

pub(super) enum Cmd {
    /// Ask for one key.
    One(Request),
    /// Ask for these keys together (one command so that they ride one batch).
    Request(Vec<Request>),
    /// Give up a lease or a request; `ack` fires once the session no longer holds it for this lease.
    Release(LeaseId, Option<oneshot::Sender<Result<(), Error>>>),
}

pub(super) struct Request {
    pub id: LeaseId,
    pub key: Key,
    pub mode: Mode,
    pub attempt: advisory_common::locker::Attempt,
    pub reply: oneshot::Sender<Reply>,
}

pub(super) enum Reply {
    Granted(watch::Receiver<bool>),
    Refused,
    Failed(Error),
}

struct Session {
    /// First field, so dropped first: a session dropped with its task (the runtime shut down)
    /// tells its leases they are lost before its connection closes and the server frees the locks.
    lost: watch::Sender<bool>,
    listener: PgListener,
    /// A private one-connection pool: the session's connection never goes back to the user's pool.
    pool: PgPool,
    pid: i32,
}

enum WaitMsg {
    Done(Key, u64, WaitOutcome),
}

struct Wait {
    generation: u64,
    /// Dropped or fired: the waiter cancels its backend's wait and reports `Done`.
    cancel: Option<oneshot::Sender<()>>,
}

pub(super) async fn run(
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    opts: PgConnectOptions,
    cfg: LockerOptions,
) {
    let mut t = Task {
        engine: Engine::new(),
        reqs: FastMap::default(),
        acks: FastMap::default(),
        session: None,
        opts,
        cfg,
        waits: FastMap::default(),
        wait_gen: 0,
        idle_waiters: Arc::new(std::sync::Mutex::new(Vec::new())),
        last_error: None,
    };
    let (wait_tx, mut wait_rx) = mpsc::unbounded_channel::<WaitMsg>();
    let mut open = true;
    loop {
        // everything that arrived while the last round trip was on the wire joins the next batch
        while let Ok(cmd) = rx.try_recv() {
            t.handle(cmd);
        }
        while let Ok(msg) = wait_rx.try_recv() {
            t.wait_msg(msg);
        }
        t.flush(&wait_tx).await;
        if let Some(ops) = t.engine.next_batch() {
            t.batch(ops).await;
            continue;
        }
        if !open && t.engine.is_idle() {
            break;
        }
        let keepalive = t.cfg.keepalive;
        let session = t.session.as_mut();
        let has_session = session.is_some();
        tokio::select! {
            // commands first: a ready command returns before the session socket is even polled
            biased;
            cmd = rx.recv(), if open => match cmd {
                Some(cmd) => t.handle(cmd),
                None => open = false,
            },
            Some(msg) = wait_rx.recv() => t.wait_msg(msg),
            res = async { session.unwrap().listener.try_recv().await }, if has_session => {
                match res {
                    Ok(Some(_)) => {} // a notification: nothing listens, ignore
                    Ok(None) => t.lost("the session's connection closed"),
                    Err(e) => t.lost(&format!("the session's connection failed: {e}")),
                }
            }
            _ = tokio::time::sleep(keepalive.unwrap_or(Duration::MAX)), if has_session && keepalive.is_some() => {
                t.keepalive().await;
            }
        }
    }
    // every handle and lease is gone: unlock everything and close the session
    if let Some(mut s) = t.session.take() {
        let _ = tokio::time::timeout(
            t.cfg.keepalive_timeout,
            sqlx::query(csql::UNLOCK_ALL).execute(&mut s.listener),
        )
        .await;
        drop(s.listener);
        s.pool.close().await;
    }
}

struct Task {
    engine: Engine,
    /// Every request and lease: its key, and the caller's reply channel until it is answered.
    reqs: FastMap<LeaseId, (Key, Option<oneshot::Sender<Reply>>)>,
    acks: FastMap<Key, Vec<oneshot::Sender<Result<(), Error>>>>,
    session: Option<Session>,
    opts: PgConnectOptions,
    cfg: LockerOptions,
    waits: FastMap<Key, Wait>,
    wait_gen: u64,
    idle_waiters: Arc<std::sync::Mutex<Vec<(PgConnection, i32)>>>,
    last_error: Option<String>,
}

fn lost_error(why: &str) -> Error {
    Error::ConnectionLost {
        source: sqlx::Error::Io(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            why.to_owned(),
        )),
    }
}

impl Task {
    fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::One(r) => self.request(r),
            Cmd::Request(reqs) => {
                for r in reqs {
                    self.request(r);
                }
            }
            Cmd::Release(id, ack) => {
                let key = self.reqs.remove(&id).map(|(key, _)| key);
                self.engine.release(id);
                if let Some(ack) = ack {
                    match key {
                        Some(key) => {
                            self.acks.entry(key).or_default().push(ack);
                            self.settle(key);
                        }
                        None => {
                            let _ =
                                ack.send(Err(lost_error("the lease was lost with its session")));
                        }
                    }
                }
            }
        }
        self.deliver();
    }

    fn request(&mut self, r: Request) {
        tracing::trace!(id = r.id, key = %r.key, mode = r.mode.as_str(), "locker request");
        self.reqs.insert(r.id, (r.key, Some(r.reply)));
        self.engine.request(r.id, r.key, r.mode, r.attempt);
        self.settle(r.key);
    }

    /// Answer the releases of `key` whose unlock is done, or that needed none (the hold went to
    /// another lease, or a scheduled unlock was taken back).
    fn settle(&mut self, key: Key) {
        if self.acks.contains_key(&key) && !self.engine.releasing(key) {
            for ack in self.acks.remove(&key).unwrap_or_default() {
                let _ = ack.send(Ok(()));
            }
        }
    }

    fn deliver(&mut self) {
        while let Some(ev) = self.engine.poll_event() {
            match ev {
                Event::Granted(id) => {
                    let rx = match &self.session {
                        Some(s) => s.lost.subscribe(),
                        None => watch::channel(true).1,
                    };
                    if let Some(tx) = self.reqs.get_mut(&id).and_then(|(_, reply)| reply.take()) {
                        // a caller gone in the meantime sent its Release already
                        let _ = tx.send(Reply::Granted(rx));
                    }
                }
                Event::Refused(id) => {
                    if let Some((_, Some(tx))) = self.reqs.remove(&id) {
                        let _ = tx.send(Reply::Refused);
                    }
                }
                Event::Failed(id, kind) => {
                    if let Some((key, Some(tx))) = self.reqs.remove(&id) {
                        let _ = tx.send(Reply::Failed(self.error(kind, Some(key))));
                    }
                }
            }
        }
    }

    fn error(&self, kind: ErrorKind, key: Option<Key>) -> Error {
        let msg = self
            .last_error
            .clone()
            .unwrap_or_else(|| kind.describe().to_owned());
        let key = key.unwrap_or(Key::BigInt(0));
        match kind {
            ErrorKind::LockTableFull => Error::LockTableFull {
                key,
                source: sqlx::Error::Protocol(msg),
            },
            ErrorKind::Deadlock => Error::Deadlock {
                key,
                source: sqlx::Error::Protocol(msg),
            },
            ErrorKind::ConnectionLost => lost_error(&msg),
            _ => Error::Database(sqlx::Error::Protocol(msg)),
        }
    }

    fn wait_msg(&mut self, msg: WaitMsg) {
        let WaitMsg::Done(key, generation, outcome) = msg;
        if self
            .waits
            .get(&key)
            .is_some_and(|w| w.generation == generation)
        {
            self.waits.remove(&key);
            if let WaitOutcome::Failed(_) = outcome {
                self.last_error = Some("the waiter connection failed".into());
            }
            self.engine.wait_done(key, outcome);
            self.deliver();
        }
    }

    /// Start and cancel server-side waits.
    async fn flush(&mut self, wait_tx: &mpsc::UnboundedSender<WaitMsg>) {
        while let Some((key, mode)) = self.engine.poll_wait_start() {
            self.wait_gen += 1;
            let generation = self.wait_gen;
            let (cancel, cancelled) = oneshot::channel();
            tokio::spawn(
                wait_free(
                    self.opts.clone(),
                    key,
                    mode,
                    generation,
                    cancelled,
                    self.idle_waiters.clone(),
                    wait_tx.clone(),
                )
                .instrument(
                    tracing::debug_span!("advisory_locker.wait", key = %key, mode = mode.as_str()),
                ),
            );
            self.waits.insert(
                key,
                Wait {
                    generation,
                    cancel: Some(cancel),
                },
            );
        }
        // after the starts: a wait started and given up within one step is cancelled too
        while let Some(key) = self.engine.poll_wait_cancel() {
            // the waiter cancels its backend's wait itself and reports Done; the engine keeps the
            // key's one wait slot until then
            if let Some(cancel) = self.waits.get_mut(&key).and_then(|w| w.cancel.take()) {
                let _ = cancel.send(());
            }
        }
        self.deliver();
    }

    async fn connect(&mut self) -> Result<(), sqlx::Error> {
        if self.session.is_some() {
            return Ok(());
        }
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .max_lifetime(None)
            .idle_timeout(None)
            .test_before_acquire(false)
            .connect_with(self.opts.clone())
            .await?;
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.ignore_pool_close_event(true);
        listener.eager_reconnect(false);
        let pid: i32 = sqlx::query(csql::BACKEND_PID)
            .fetch_one(&mut listener)
            .await?
            .try_get(0)?;
        if self.cfg.server_idle_timeout
            && let Some(ms) = advisory_common::locker::server_idle_timeout_ms(
                self.cfg.keepalive,
                self.cfg.keepalive_timeout,
            )
        {
            sqlx::query(lsql::SET_IDLE_SESSION_TIMEOUT)
                .bind(ms)
                .execute(&mut listener)
                .await?;
        }
        tracing::debug!(pid, "advisory locker session opened");
        let (lost, _) = watch::channel(false);
        self.session = Some(Session {
            listener,
            pool,
            lost,
            pid,
        });
        Ok(())
    }

    async fn batch(&mut self, ops: Vec<Op>) {
        let span = tracing::debug_span!(
            "advisory_locker.batch",
            ops = ops.len(),
            pid = tracing::field::Empty
        );
        async {
            if let Err(e) = self.connect().await {
                tracing::warn!(error = %e, "advisory locker cannot open its session");
                self.last_error = Some(e.to_string());
                // the ops on the wire never left: the requests behind them fail
                self.engine.session_lost();
                self.engine.fail_queued(ErrorKind::ConnectionLost);
                self.deliver();
                return;
            }
            let s = self.session.as_mut().unwrap();
            tracing::Span::current().record("pid", s.pid);
            let (c, k, a, b) = lsql::encode(&ops);
            let res = tokio::time::timeout(self.cfg.keepalive_timeout, async {
                if let [op] = ops[..] {
                    // a lone op: the plain one-key statement, cheaper than the array form
                    let text = if op.acquire {
                        csql::lock_sql(
                            csql::Scope::Session,
                            op.mode,
                            csql::Wait::Try,
                            op.key.space(),
                        )
                    } else {
                        csql::unlock_sql(op.mode, op.key.space())
                    };
                    let q = sqlx::query_scalar::<_, bool>(text);
                    let q = match lsql::key_params(op.key) {
                        (Some(v), _) => q.bind(v),
                        (None, Some((x, y))) => q.bind(x).bind(y),
                        (None, None) => unreachable!(),
                    };
                    q.fetch_one(&mut s.listener).await.map(|b| vec![b])
                } else {
                    let q = if lsql::is_bigint(&ops) {
                        sqlx::query_scalar::<_, Vec<i64>>(lsql::BATCH_BIGINT)
                            .bind(&c)
                            .bind(&k)
                    } else {
                        sqlx::query_scalar::<_, Vec<i64>>(lsql::BATCH)
                            .bind(&c)
                            .bind(&k)
                            .bind(&a)
                            .bind(&b)
                    };
                    q.fetch_one(&mut s.listener)
                        .await
                        .map(|refused| lsql::results(ops.len(), &refused).unwrap_or_default())
                }
            })
            .await;
            match res {
                Ok(Ok(results)) if results.len() == ops.len() => {
                    self.engine.batch_done(&results);
                    for op in &ops {
                        self.settle(op.key);
                    }
                }
                Ok(Ok(_)) => self.lost("the batch answered the wrong number of results"),
                Ok(Err(e)) => {
                    let err = Error::from(e);
                    match err.kind() {
                        // unknown failures: the session's state cannot be trusted, start afresh
                        None | Some(ErrorKind::ConnectionLost) => self.lost(&err.to_string()),
                        Some(kind) => {
                            self.last_error = Some(err.to_string());
                            let held = tokio::time::timeout(
                                self.cfg.keepalive_timeout,
                                sqlx::query_scalar::<_, Vec<bool>>(lsql::BATCH_HELD)
                                    .bind(&c)
                                    .bind(&k)
                                    .bind(&a)
                                    .bind(&b)
                                    .fetch_one(&mut s.listener),
                            )
                            .await;
                            match held {
                                Ok(Ok(held)) if held.len() == ops.len() => {
                                    tracing::warn!(error = %err, "advisory locker batch failed");
                                    self.engine.batch_failed(kind, &held);
                                    for op in &ops {
                                        self.settle(op.key);
                                    }
                                }
                                _ => self.lost(&err.to_string()),
                            }
                        }
                    }
                }
                Err(_) => self.lost("the batch got no answer within keepalive_timeout"),
            }
            self.deliver();
        }
        .instrument(span)
        .await
    }

    async fn keepalive(&mut self) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let r = tokio::time::timeout(
            self.cfg.keepalive_timeout,
            sqlx::query(lsql::KEEPALIVE).execute(&mut s.listener),
        )
        .await;
        match r {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => self.lost(&format!("keepalive failed: {e}")),
            Err(_) => self.lost("keepalive got no answer within keepalive_timeout"),
        }
    }

    /// The session is gone: every lease it held is lost; queued requests go to the next one.
    fn lost(&mut self, why: &str) {
        let Some(s) = self.session.take() else {
            return;
        };
        tracing::warn!(
            pid = s.pid,
            why,
            "advisory locker session lost; its leases are lost"
        );
        self.last_error = Some(why.to_owned());
        let _ = s.lost.send(true);
        let lost = self.engine.session_lost();
        for id in lost {
            self.reqs.remove(&id);
        }
        for (_, acks) in self.acks.drain() {
            for ack in acks {
                let _ = ack.send(Err(lost_error(why)));
            }
        }
        // close the socket now (the server ends the backend, if it is still there)
        drop(s.listener);
        drop(s.pool);
        self.deliver();
    }
}

/// A waiter: block in `pg_advisory_lock` on a separate connection until `key` is free, let it go,
/// report. Reuses idle waiter connections. When cancelled it cancels its backend's wait with
/// `pg_cancel_backend` from another connection (a backend blocked in a lock wait does not notice
/// its client leaving), repeating the cancel until its statement has answered: a cancel that
/// reaches the backend before the statement does is ignored by the server.
async fn wait_free(
    opts: PgConnectOptions,
    key: Key,
    mode: Mode,
    generation: u64,
    mut cancelled: oneshot::Receiver<()>,
    idle: Arc<std::sync::Mutex<Vec<(PgConnection, i32)>>>,
    tx: mpsc::UnboundedSender<WaitMsg>,
) {
    let failed = WaitMsg::Done(
        key,
        generation,
        WaitOutcome::Failed(ErrorKind::ConnectionLost),
    );
    let reused = idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
    let (mut conn, pid) = match reused {
        Some(c) => c,
        None => {
            let opened = tokio::select! {
                c = PgConnection::connect_with(&opts) => c,
                _ = &mut cancelled => {
                    let _ = tx.send(WaitMsg::Done(key, generation, WaitOutcome::Cancelled));
                    return;
                }
            };
            let Ok(mut conn) = opened else {
                let _ = tx.send(failed);
                return;
            };
            let pid: Result<i32, _> = sqlx::query_scalar(csql::BACKEND_PID)
                .fetch_one(&mut conn)
                .await;
            match pid {
                Ok(pid) => (conn, pid),
                Err(_) => {
                    let _ = tx.send(failed);
                    return;
                }
            }
        }
    };
    let (big, pair) = lsql::key_params(key);
    let q = sqlx::query(lsql::wait_free_sql(mode, key.space()));
    let q = match (big, pair) {
        (Some(v), _) => q.bind(v),
        (None, Some((x, y))) => q.bind(x).bind(y),
        (None, None) => unreachable!(),
    };
    let mut was_cancelled = false;
    let res = {
        let fut = q.execute(&mut conn);
        tokio::pin!(fut);
        tokio::select! {
            r = &mut fut => r,
            _ = &mut cancelled => {
                was_cancelled = true;
                let mut canceller: Option<PgConnection> = None;
                let mut backoff = Duration::from_millis(5);
                loop {
                    if canceller.is_none() {
                        canceller = PgConnection::connect_with(&opts).await.ok();
                    }
                    if let Some(c) = canceller.as_mut()
                        && sqlx::query(lsql::CANCEL_WAIT).bind(pid).execute(&mut *c).await.is_err()
                    {
                        canceller = None;
                    }
                    tokio::select! {
                        r = &mut fut => break r,
                        _ = tokio::time::sleep(backoff) => backoff = (backoff * 2).min(Duration::from_secs(1)),
                    }
                }
            }
        }
    };
    let outcome = match res {
        Ok(_) => WaitOutcome::Free,
        Err(_) if was_cancelled => WaitOutcome::Cancelled,
        Err(e) => match Error::from(e).kind() {
            Some(ErrorKind::Deadlock) => WaitOutcome::Failed(ErrorKind::Deadlock),
            Some(ErrorKind::LockTableFull) => WaitOutcome::Failed(ErrorKind::LockTableFull),
            _ => WaitOutcome::Failed(ErrorKind::ConnectionLost),
        },
    };
    // a cancelled waiter is not reused: a late duplicate cancel could hit its next wait
    if outcome == WaitOutcome::Free {
        let mut idle = idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < 4 {
            idle.push((conn, pid));
        }
    }
    let _ = tx.send(WaitMsg::Done(key, generation, outcome));
}
