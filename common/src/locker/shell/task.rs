//! The locker's session task: one dedicated session (which always has a read pending, so a
//! terminated backend or a closed socket is seen at once), the batch loop over [`Engine`], the
//! keepalive. The waiters are in [`super::waiter`].

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

use super::cmd::{Ack, Cmd, Pending, Reply, Request};
use super::waiter::{self, IdleWaiters, Wait, WaitMsg};
use super::{Batch, Driver, LockerError, LockerOptions, Note};
use crate::error::ErrorKind;
use crate::key::Key;
use crate::locker::hash::FastMap;
use crate::locker::{Engine, Event, LeaseId, Op, sql as lsql};
use crate::sql as csql;

struct Session<S> {
    /// First field, so dropped first: a session dropped with its task (the runtime shut down)
    /// tells its leases they are lost before its connection closes and the server frees the locks.
    lost: watch::Sender<bool>,
    conn: S,
    pid: i32,
}

pub(super) async fn run<D: Driver>(
    mut rx: mpsc::UnboundedReceiver<Cmd<D::Error>>,
    driver: D,
    cfg: LockerOptions,
) {
    let mut t = Task {
        engine: Engine::new(),
        reqs: FastMap::default(),
        acks: FastMap::default(),
        session: None,
        driver: Arc::new(driver),
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
        t.flush(&wait_tx);
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
            why = async { D::lost(&mut session.unwrap().conn).await }, if has_session => {
                t.lost(&why);
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
            D::execute(&mut s.conn, csql::UNLOCK_ALL),
        )
        .await;
        D::close(s.conn).await;
    }
}

struct Task<D: Driver> {
    engine: Engine,
    /// Every request and lease: its key, and the caller's reply channel until it is answered.
    reqs: FastMap<LeaseId, Pending<D::Error>>,
    acks: FastMap<Key, Vec<Ack<D::Error>>>,
    session: Option<Session<D::Session>>,
    driver: Arc<D>,
    cfg: LockerOptions,
    waits: FastMap<Key, Wait>,
    wait_gen: u64,
    idle_waiters: IdleWaiters<D>,
    last_error: Option<String>,
}

impl<D: Driver> Task<D> {
    fn handle(&mut self, cmd: Cmd<D::Error>) {
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
                            let _ = ack.send(Err(D::Error::connection_lost(
                                "the lease was lost with its session",
                            )));
                        }
                    }
                }
            }
        }
        self.deliver();
    }

    fn request(&mut self, r: Request<D::Error>) {
        D::note(Note::Request {
            id: r.id,
            key: r.key,
            mode: r.mode,
        });
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
                        let _ = tx.send(Reply::Failed(self.error(kind, key)));
                    }
                }
            }
        }
    }

    fn error(&self, kind: ErrorKind, key: Key) -> D::Error {
        let msg = self
            .last_error
            .clone()
            .unwrap_or_else(|| kind.describe().to_owned());
        match kind {
            ErrorKind::ConnectionLost => D::Error::connection_lost(&msg),
            _ => D::Error::failed(kind, key, msg),
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
            if let crate::locker::WaitOutcome::Failed(_) = outcome {
                self.last_error = Some("the waiter connection failed".into());
            }
            self.engine.wait_done(key, outcome);
            self.deliver();
        }
    }

    /// Start and cancel server-side waits.
    fn flush(&mut self, wait_tx: &mpsc::UnboundedSender<WaitMsg>) {
        while let Some((key, mode)) = self.engine.poll_wait_start() {
            self.wait_gen += 1;
            let generation = self.wait_gen;
            let (cancel, cancelled) = oneshot::channel();
            tokio::spawn(
                waiter::wait_free(
                    self.driver.clone(),
                    key,
                    mode,
                    generation,
                    cancelled,
                    self.idle_waiters.clone(),
                    wait_tx.clone(),
                )
                .instrument(D::wait_span(key, mode)),
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

    async fn connect(&mut self) -> Result<(), D::DriverError> {
        if self.session.is_some() {
            return Ok(());
        }
        let (mut conn, pid) = self.driver.connect().await?;
        if self.cfg.server_idle_timeout {
            if let Some(ms) =
                super::super::server_idle_timeout_ms(self.cfg.keepalive, self.cfg.keepalive_timeout)
            {
                D::execute_int(&mut conn, lsql::SET_IDLE_SESSION_TIMEOUT, ms).await?;
            }
        }
        D::note(Note::SessionOpened { pid });
        let (lost, _) = watch::channel(false);
        self.session = Some(Session { lost, conn, pid });
        Ok(())
    }

    async fn batch(&mut self, ops: Vec<Op>) {
        let span = D::batch_span(ops.len());
        async {
            if let Err(e) = self.connect().await {
                let msg = e.to_string();
                D::note(Note::CannotOpen { error: &msg });
                self.last_error = Some(msg);
                // the ops on the wire never left: the requests behind them fail
                self.engine.session_lost();
                self.engine.fail_queued(ErrorKind::ConnectionLost);
                self.deliver();
                return;
            }
            let s = self.session.as_mut().unwrap();
            tracing::Span::current().record("pid", s.pid);
            let (c, k, a, b) = lsql::encode(&ops);
            let full = Batch {
                sql: lsql::BATCH,
                codes: &c,
                keys: &k,
                pairs: Some((&a, &b)),
            };
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
                    D::lock_one(&mut s.conn, text, op.key)
                        .await
                        .map(|b| vec![b])
                } else {
                    let batch = if lsql::is_bigint(&ops) {
                        Batch {
                            sql: lsql::BATCH_BIGINT,
                            pairs: None,
                            ..full
                        }
                    } else {
                        full
                    };
                    // out-of-range positions: an empty answer, which the length check refuses
                    D::batch(&mut s.conn, batch)
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
                Ok(Err(e)) => match D::classify(e) {
                    // unknown failures: the session's state cannot be trusted, start afresh
                    (None | Some(ErrorKind::ConnectionLost), err) => self.lost(&err),
                    (Some(kind), err) => {
                        self.last_error = Some(err.clone());
                        let held = tokio::time::timeout(
                            self.cfg.keepalive_timeout,
                            D::batch_held(
                                &mut s.conn,
                                Batch {
                                    sql: lsql::BATCH_HELD,
                                    ..full
                                },
                            ),
                        )
                        .await;
                        match held {
                            Ok(Ok(held)) if held.len() == ops.len() => {
                                D::note(Note::BatchFailed { error: &err });
                                self.engine.batch_failed(kind, &held);
                                for op in &ops {
                                    self.settle(op.key);
                                }
                            }
                            _ => self.lost(&err),
                        }
                    }
                },
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
            D::execute(&mut s.conn, lsql::KEEPALIVE),
        )
        .await;
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.lost(&format!("keepalive failed: {e}")),
            Err(_) => self.lost("keepalive got no answer within keepalive_timeout"),
        }
    }

    /// The session is gone: every lease it held is lost; queued requests go to the next one.
    fn lost(&mut self, why: &str) {
        let Some(s) = self.session.take() else {
            return;
        };
        D::note(Note::SessionLost { pid: s.pid, why });
        self.last_error = Some(why.to_owned());
        let _ = s.lost.send(true);
        let lost = self.engine.session_lost();
        for id in lost {
            self.reqs.remove(&id);
        }
        for (_, acks) in self.acks.drain() {
            for ack in acks {
                let _ = ack.send(Err(D::Error::connection_lost(why)));
            }
        }
        // close the socket now (the server ends the backend, if it is still there)
        D::discard(s.conn);
        self.deliver();
    }
}
