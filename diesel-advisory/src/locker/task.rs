//! The locker's session task: one dedicated session on diesel-async's own transport
//! (`tokio-postgres`; the session is private, so no diesel layer is needed on it) whose connection
//! task always reads the socket and tells us the moment it closes (terminated backend, server
//! restart), the batch loop over [`Engine`], the waiter connections, the keepalive.

use std::sync::Arc;
use std::time::Duration;

use advisory_common::locker::hash::FastMap;
use advisory_common::locker::{Engine, Event, LeaseId, Op, WaitOutcome, sql as lsql};
use advisory_common::sql::{self as csql, Mode};
use advisory_common::{ErrorKind, Key, classify_sqlstate};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::types::ToSql;
use tokio_postgres::{CancelToken, Client, Config, NoTls};
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
    client: Client,
    /// Fires when the connection task ends: the socket closed or failed.
    closed: oneshot::Receiver<String>,
    driver: tokio::task::AbortHandle,
    pid: i32,
}

/// Open a connection and drive it on its own task; `closed` fires when that task ends.
async fn open(
    config: &Config,
) -> Result<(Client, oneshot::Receiver<String>, tokio::task::AbortHandle), tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    let (tx, closed) = oneshot::channel();
    let driver = tokio::spawn(async move {
        let why = match connection.await {
            Ok(()) => "the session's connection closed".to_owned(),
            Err(e) => format!("the session's connection failed: {e}"),
        };
        let _ = tx.send(why);
    });
    Ok((client, closed, driver.abort_handle()))
}

/// The SQLSTATE kind of a driver error (`ConnectionLost` for a closed connection).
fn kind_of(e: &tokio_postgres::Error) -> Option<ErrorKind> {
    if e.is_closed() {
        return Some(ErrorKind::ConnectionLost);
    }
    match e.code() {
        Some(code) => classify_sqlstate(code.code()),
        None => Some(ErrorKind::ConnectionLost), // I/O
    }
}

fn key_args(key: Key) -> (Option<i64>, Option<(i32, i32)>) {
    lsql::key_params(key)
}

enum WaitMsg {
    Done(Key, u64, WaitOutcome),
}

struct Wait {
    generation: u64,
    /// Dropped or fired: the waiter cancels its backend's wait and reports `Done`.
    cancel: Option<oneshot::Sender<()>>,
}

pub(super) async fn run(mut rx: mpsc::UnboundedReceiver<Cmd>, opts: Config, cfg: LockerOptions) {
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
            why = async { (&mut session.unwrap().closed).await }, if has_session => {
                t.lost(&why.unwrap_or_else(|_| "the session's connection task ended".to_owned()));
            }
            _ = tokio::time::sleep(keepalive.unwrap_or(Duration::MAX)), if has_session && keepalive.is_some() => {
                t.keepalive().await;
            }
        }
    }
    // every handle and lease is gone: unlock everything and close the session
    if let Some(s) = t.session.take() {
        let _ = tokio::time::timeout(
            t.cfg.keepalive_timeout,
            s.client.batch_execute(csql::UNLOCK_ALL),
        )
        .await;
        drop(s.client); // the connection task sends Terminate and ends
    }
}

struct Task {
    engine: Engine,
    /// Every request and lease: its key, and the caller's reply channel until it is answered.
    reqs: FastMap<LeaseId, (Key, Option<oneshot::Sender<Reply>>)>,
    acks: FastMap<Key, Vec<oneshot::Sender<Result<(), Error>>>>,
    session: Option<Session>,
    opts: Config,
    cfg: LockerOptions,
    waits: FastMap<Key, Wait>,
    wait_gen: u64,
    idle_waiters: Arc<std::sync::Mutex<Vec<Client>>>,
    last_error: Option<String>,
}

pub(super) fn lost_error(why: &str) -> Error {
    Error::ConnectionLost {
        source: DieselError::DatabaseError(
            DatabaseErrorKind::ClosedConnection,
            Box::new(why.to_owned()),
        ),
    }
}

fn db_error(msg: String) -> DieselError {
    DieselError::DatabaseError(DatabaseErrorKind::Unknown, Box::new(msg))
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
                source: db_error(msg),
            },
            ErrorKind::Deadlock => Error::Deadlock {
                key,
                source: db_error(msg),
            },
            ErrorKind::ConnectionLost => lost_error(&msg),
            _ => Error::Database(db_error(msg)),
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

    async fn connect(&mut self) -> Result<(), tokio_postgres::Error> {
        if self.session.is_some() {
            return Ok(());
        }
        let (client, closed, driver) = open(&self.opts).await?;
        let pid: i32 = client.query_one(csql::BACKEND_PID, &[]).await?.get(0);
        if self.cfg.server_idle_timeout
            && let Some(ms) = advisory_common::locker::server_idle_timeout_ms(
                self.cfg.keepalive,
                self.cfg.keepalive_timeout,
            )
        {
            client
                .query_one(lsql::SET_IDLE_SESSION_TIMEOUT, &[&ms])
                .await?;
        }
        tracing::debug!(pid, "advisory locker session opened");
        let (lost, _) = watch::channel(false);
        self.session = Some(Session {
            client,
            closed,
            driver,
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
                    let row = match key_args(op.key) {
                        (Some(v), _) => s.client.query_one(text, &[&v]).await,
                        (None, Some((x, y))) => s.client.query_one(text, &[&x, &y]).await,
                        (None, None) => unreachable!(),
                    };
                    row.map(|r| vec![r.get::<_, bool>(0)])
                } else {
                    let row = if lsql::is_bigint(&ops) {
                        let params: [&(dyn ToSql + Sync); 2] = [&c, &k];
                        s.client.query_one(lsql::BATCH_BIGINT, &params).await
                    } else {
                        let params: [&(dyn ToSql + Sync); 4] = [&c, &k, &a, &b];
                        s.client.query_one(lsql::BATCH, &params).await
                    };
                    // out-of-range positions: an empty answer, which the length check refuses
                    row.map(|r| {
                        lsql::results(ops.len(), &r.get::<_, Vec<i64>>(0)).unwrap_or_default()
                    })
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
                    let err = e
                        .as_db_error()
                        .map(|d| d.message().to_owned())
                        .unwrap_or_else(|| e.to_string());
                    match kind_of(&e) {
                        // unknown failures: the session's state cannot be trusted, start afresh
                        None | Some(ErrorKind::ConnectionLost) => self.lost(&err),
                        Some(kind) => {
                            self.last_error = Some(err.clone());
                            let params: [&(dyn ToSql + Sync); 4] = [&c, &k, &a, &b];
                            let held = tokio::time::timeout(
                                self.cfg.keepalive_timeout,
                                s.client.query_one(lsql::BATCH_HELD, &params),
                            )
                            .await
                            .map(|r| r.map(|r| r.get::<_, Vec<bool>>(0)));
                            match held {
                                Ok(Ok(held)) if held.len() == ops.len() => {
                                    tracing::warn!(error = %err, "advisory locker batch failed");
                                    self.engine.batch_failed(kind, &held);
                                    for op in &ops {
                                        self.settle(op.key);
                                    }
                                }
                                _ => self.lost(&err),
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
            s.client.batch_execute(lsql::KEEPALIVE),
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
        s.driver.abort();
        drop(s.client);
        self.deliver();
    }
}

/// A waiter: block in `pg_advisory_lock` on a separate connection until `key` is free, let it go,
/// report. Reuses idle waiter connections. When cancelled it sends the protocol's cancel request
/// for its backend, repeating it until its statement has answered: a cancel that reaches the
/// backend before the statement does is ignored by the server.
async fn wait_free(
    opts: Config,
    key: Key,
    mode: Mode,
    generation: u64,
    mut cancelled: oneshot::Receiver<()>,
    idle: Arc<std::sync::Mutex<Vec<Client>>>,
    tx: mpsc::UnboundedSender<WaitMsg>,
) {
    let failed = WaitMsg::Done(
        key,
        generation,
        WaitOutcome::Failed(ErrorKind::ConnectionLost),
    );
    let reused = idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
    let client = match reused {
        Some(c) if !c.is_closed() => c,
        _ => {
            let opened = tokio::select! {
                c = open(&opts) => c,
                _ = &mut cancelled => {
                    let _ = tx.send(WaitMsg::Done(key, generation, WaitOutcome::Cancelled));
                    return;
                }
            };
            match opened {
                Ok((client, _, _)) => client,
                Err(_) => {
                    let _ = tx.send(failed);
                    return;
                }
            }
        }
    };
    let token: CancelToken = client.cancel_token();
    let text = lsql::wait_free_sql(mode, key.space());
    let mut was_cancelled = false;
    let res = {
        let fut = async {
            match key_args(key) {
                (Some(v), _) => client.query_one(text, &[&v]).await,
                (None, Some((x, y))) => client.query_one(text, &[&x, &y]).await,
                (None, None) => unreachable!(),
            }
        };
        tokio::pin!(fut);
        tokio::select! {
            r = &mut fut => r,
            _ = &mut cancelled => {
                was_cancelled = true;
                let mut backoff = Duration::from_millis(5);
                loop {
                    let _ = token.cancel_query(NoTls).await;
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
        Err(e) => match kind_of(&e) {
            Some(ErrorKind::Deadlock) => WaitOutcome::Failed(ErrorKind::Deadlock),
            Some(ErrorKind::LockTableFull) => WaitOutcome::Failed(ErrorKind::LockTableFull),
            _ => WaitOutcome::Failed(ErrorKind::ConnectionLost),
        },
    };
    // a cancelled waiter is not reused: a late duplicate cancel could hit its next wait
    if outcome == WaitOutcome::Free {
        let mut idle = idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < 4 {
            idle.push(client);
        }
    }
    let _ = tx.send(WaitMsg::Done(key, generation, outcome));
}
