//! The [`Engine`]: the per-key state machine behind the [module docs](crate::locker) (local FIFO queues,
//! one server hold per key, batches, server-side waits).

use std::collections::VecDeque;

use super::hash::FastMap;
use super::{Attempt, Event, LeaseId, MAX_BATCH, Op, WaitOutcome};
use crate::error::ErrorKind;
use crate::key::Key;
use crate::sql::Mode;

/// How many emptied key states the engine keeps for reuse.
const SPARE: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Server {
    /// The session does not hold the key.
    Idle,
    /// The session holds the key once, in this mode.
    Held(Mode),
    /// An op is scheduled for the next batch.
    Pending(Op),
    /// An op is in the batch on the wire.
    InFlight(Op),
}

#[derive(Debug)]
struct KeyState {
    server: Server,
    holders: Vec<LeaseId>,
    queue: VecDeque<LeaseId>,
    /// A waiter connection is blocked for this key, in this mode; `true` once cancelled.
    wait: Option<(Mode, bool)>,
}

#[derive(Clone, Copy, Debug)]
struct Req {
    key: Key,
    mode: Mode,
    attempt: Attempt,
    granted: bool,
}

/// The lock service's state: see the [module docs](crate::locker).
#[derive(Debug, Default)]
pub struct Engine {
    keys: FastMap<Key, KeyState>,
    reqs: FastMap<LeaseId, Req>,
    /// Keys with an op scheduled (`Server::Pending`), in arrival order; may hold stale entries
    /// (an op taken back, a key scheduled twice): [`Engine::next_batch`] skips them.
    pending: Vec<Key>,
    /// Emptied key states kept for reuse (their queue and holder buffers), at most [`SPARE`].
    spare: Vec<KeyState>,
    in_flight: Vec<Op>,
    events: VecDeque<Event>,
    wait_start: VecDeque<(Key, Mode)>,
    wait_cancel: VecDeque<Key>,
}

impl Engine {
    /// An empty engine: no session holds anything.
    pub fn new() -> Engine {
        Engine::default()
    }

    /// A caller asks for `key` in `mode`. `id` must be unused. The answer comes as an [`Event`];
    /// a local grant or refusal is available at once from [`Engine::poll_event`].
    pub fn request(&mut self, id: LeaseId, key: Key, mode: Mode, attempt: Attempt) {
        let prev = self.reqs.insert(
            id,
            Req {
                key,
                mode,
                attempt,
                granted: false,
            },
        );
        assert!(prev.is_none(), "lease id {id} reused");
        let spare = &mut self.spare;
        let st = self.keys.entry(key).or_insert_with(|| {
            spare.pop().unwrap_or_else(|| KeyState {
                server: Server::Idle,
                holders: Vec::new(),
                queue: VecDeque::new(),
                wait: None,
            })
        });
        // a release scheduled but not sent is taken back for a caller of the same mode
        if let Server::Pending(op) = st.server
            && !op.acquire
            && op.mode == mode
            && st.queue.is_empty()
        {
            st.server = Server::Held(mode); // its `pending` entry is now stale
        }
        if attempt == Attempt::Try {
            let grantable_now = st.queue.is_empty()
                && matches!(st.server, Server::Held(m) if m == mode)
                && (st.holders.is_empty() || mode == Mode::Shared);
            // (a server wait someone needs implies a queued waiter; a wait being cancelled
            // does not refuse: the try goes out once the cancel is through, so our own abandoned
            // waiter cannot make the server refuse it)
            let must_refuse = !grantable_now
                && (!st.queue.is_empty()
                    || (matches!(st.server, Server::Held(_)) && !st.holders.is_empty()));
            if must_refuse {
                self.reqs.remove(&id);
                self.events.push_back(Event::Refused(id));
                self.gc(key);
                return;
            }
        }
        st.queue.push_back(id);
        self.pump(key);
    }

    /// The lease (or pending request) `id` is given up: released if granted, withdrawn if queued,
    /// released as soon as its in-flight acquire answers otherwise. Unknown ids (a lease lost with
    /// its session, an already released one) are ignored.
    pub fn release(&mut self, id: LeaseId) {
        let Some(req) = self.reqs.remove(&id) else {
            return;
        };
        let Some(st) = self.keys.get_mut(&req.key) else {
            return;
        };
        if req.granted {
            st.holders.retain(|h| *h != id);
        } else {
            st.queue.retain(|q| *q != id);
        }
        self.pump(req.key);
    }

    /// The next batch for the session, if any op is due and no batch is on the wire: unlocks
    /// first, then try-locks, each key at most once, at most [`MAX_BATCH`] ops (the rest goes
    /// next). Answer with [`Engine::batch_done`].
    pub fn next_batch(&mut self) -> Option<Vec<Op>> {
        if !self.in_flight.is_empty() || self.pending.is_empty() {
            return None;
        }
        // sorted (a deterministic batch), each key once; stale entries are skipped below
        self.pending.sort_unstable();
        self.pending.dedup();
        let mut releases = Vec::new();
        let mut acquires = Vec::new();
        let mut taken = 0;
        for key in &self.pending {
            if releases.len() + acquires.len() == MAX_BATCH {
                break;
            }
            taken += 1;
            let Some(st) = self.keys.get_mut(key) else {
                continue;
            };
            let Server::Pending(op) = st.server else {
                continue;
            };
            st.server = Server::InFlight(op);
            if op.acquire {
                acquires.push(op);
            } else {
                releases.push(op);
            }
        }
        self.pending.drain(..taken);
        if releases.is_empty() && acquires.is_empty() {
            return None;
        }
        releases.extend(acquires);
        self.in_flight = releases.clone();
        Some(releases)
    }

    /// The ops of the batch on the wire (empty if none).
    pub fn in_flight(&self) -> &[Op] {
        &self.in_flight
    }

    /// The batch answered: `results[i]` is the server's boolean for op `i` (lock granted / unlock
    /// done).
    pub fn batch_done(&mut self, results: &[bool]) {
        let ops = std::mem::take(&mut self.in_flight);
        assert_eq!(ops.len(), results.len(), "one result per op");
        for (op, ok) in ops.into_iter().zip(results.iter().copied()) {
            let Some(st) = self.keys.get_mut(&op.key) else {
                continue;
            };
            if op.acquire {
                if ok {
                    st.server = Server::Held(op.mode);
                    self.pump(op.key);
                } else {
                    st.server = Server::Idle;
                    self.refused(op.key, op.mode);
                }
            } else {
                st.server = Server::Idle;
                self.pump(op.key);
            }
        }
    }

    /// The batch failed with `kind` but the session is alive; `held[i]` says whether the session
    /// holds op `i`'s key in its mode now (the shell asked [`sql::BATCH_HELD`]). The requests whose
    /// acquire was in it fail with `kind`; holds nobody wants are released in a later batch.
    pub fn batch_failed(&mut self, kind: ErrorKind, held: &[bool]) {
        let ops = std::mem::take(&mut self.in_flight);
        assert_eq!(ops.len(), held.len(), "one answer per op");
        for (op, held) in ops.into_iter().zip(held.iter().copied()) {
            let Some(st) = self.keys.get_mut(&op.key) else {
                continue;
            };
            st.server = if held {
                Server::Held(op.mode)
            } else {
                Server::Idle
            };
            if op.acquire {
                // the callers this acquire was for: the head, and the shared ones after it
                while let Some(&head) = st.queue.front() {
                    let r = self.reqs[&head];
                    if r.mode != op.mode {
                        break;
                    }
                    st.queue.pop_front();
                    self.reqs.remove(&head);
                    self.events.push_back(Event::Failed(head, kind));
                    if op.mode == Mode::Exclusive {
                        break;
                    }
                }
            }
            self.pump(op.key);
        }
    }

    /// The session is gone (connection closed or errored, backend terminated, keepalive failed):
    /// every lease it held is lost. Returns their ids. Requests still queued, including the ones
    /// whose acquire was on the wire, stay queued for the next session.
    pub fn session_lost(&mut self) -> Vec<LeaseId> {
        self.in_flight.clear();
        self.pending.clear();
        let mut lost = Vec::new();
        let keys: Vec<Key> = self.keys.keys().copied().collect();
        for key in keys {
            let st = self.keys.get_mut(&key).unwrap();
            for h in st.holders.drain(..) {
                self.reqs.remove(&h);
                lost.push(h);
            }
            st.server = Server::Idle;
            self.pump(key);
        }
        lost
    }

    /// No session can be opened: every queued request fails with `kind` (leases are untouched).
    pub fn fail_queued(&mut self, kind: ErrorKind) {
        let keys: Vec<Key> = self.keys.keys().copied().collect();
        for key in keys {
            let st = self.keys.get_mut(&key).unwrap();
            for q in st.queue.drain(..) {
                self.reqs.remove(&q);
                self.events.push_back(Event::Failed(q, kind));
            }
            self.pump(key);
        }
    }

    /// A server-side wait for `key` ended.
    pub fn wait_done(&mut self, key: Key, outcome: WaitOutcome) {
        let Some(st) = self.keys.get_mut(&key) else {
            return;
        };
        st.wait = None;
        if let WaitOutcome::Failed(kind) = outcome
            && let Some(head) = st.queue.pop_front()
        {
            self.reqs.remove(&head);
            self.events.push_back(Event::Failed(head, kind));
        }
        self.pump(key);
    }

    /// A grant, refusal or failure to deliver.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// A key to wait for server-side, in this mode (at most one wait per key at a time).
    pub fn poll_wait_start(&mut self) -> Option<(Key, Mode)> {
        self.wait_start.pop_front()
    }

    /// A key whose server-side wait nobody needs any more: cancel it, then report
    /// [`Engine::wait_done`] as usual.
    pub fn poll_wait_cancel(&mut self) -> Option<Key> {
        self.wait_cancel.pop_front()
    }

    /// What the session holds (or will hold once the ops on the wire answer), for checks.
    pub fn session_holds(&self) -> Vec<(Key, Mode)> {
        let mut v: Vec<(Key, Mode)> = self
            .keys
            .iter()
            .filter_map(|(k, st)| match st.server {
                Server::Held(m) => Some((*k, m)),
                Server::Pending(op) if !op.acquire => Some((*k, op.mode)),
                _ => None,
            })
            .collect();
        v.sort();
        v
    }

    /// `true` while an unlock of `key` is scheduled or on the wire: a release that asked to be
    /// told waits for that batch's answer.
    pub fn releasing(&self, key: Key) -> bool {
        self.keys.get(&key).is_some_and(
            |st| matches!(st.server, Server::Pending(op) | Server::InFlight(op) if !op.acquire),
        )
    }

    /// Granted leases, for checks.
    pub fn leases(&self) -> usize {
        self.reqs.values().filter(|r| r.granted).count()
    }

    /// Keys with any state (held, queued or waited for).
    pub fn keys(&self) -> usize {
        self.keys.len()
    }

    /// `true` when nothing is held, queued, on the wire or waited for.
    pub fn is_idle(&self) -> bool {
        self.keys.is_empty() && self.in_flight.is_empty()
    }

    fn refused(&mut self, key: Key, mode: Mode) {
        let st = self.keys.get_mut(&key).unwrap();
        while let Some(&head) = st.queue.front() {
            let r = self.reqs[&head];
            if r.attempt != Attempt::Try {
                break;
            }
            st.queue.pop_front();
            self.reqs.remove(&head);
            self.events.push_back(Event::Refused(head));
        }
        if let Some(&head) = st.queue.front()
            && st.wait.is_none()
        {
            let m = self.reqs[&head].mode;
            let _ = mode;
            st.wait = Some((m, false));
            self.wait_start.push_back((key, m));
            return;
        }
        self.pump(key);
    }

    fn grant(&mut self, key: Key, id: LeaseId) {
        let st = self.keys.get_mut(&key).unwrap();
        st.holders.push(id);
        self.reqs.get_mut(&id).unwrap().granted = true;
        self.events.push_back(Event::Granted(id));
    }

    /// Move `key` forward: grant local waiters its hold allows, schedule the op it needs next,
    /// cancel a wait nobody needs, forget it when nothing is left.
    fn pump(&mut self, key: Key) {
        let Some(st) = self.keys.get_mut(&key) else {
            return;
        };
        match st.server {
            Server::InFlight(_) => {}
            Server::Pending(op) => {
                // an acquire scheduled for callers who all left: take it back
                if op.acquire && st.queue.is_empty() {
                    st.server = Server::Idle; // its `pending` entry is now stale
                    self.pump(key);
                }
            }
            Server::Held(m) => {
                loop {
                    let st = self.keys.get_mut(&key).unwrap();
                    let Some(&head) = st.queue.front() else { break };
                    let r = self.reqs[&head];
                    let ok = r.mode == m && (st.holders.is_empty() || m == Mode::Shared);
                    if !ok {
                        break;
                    }
                    st.queue.pop_front();
                    self.grant(key, head);
                    if m == Mode::Exclusive {
                        break;
                    }
                }
                let st = self.keys.get_mut(&key).unwrap();
                if st.holders.is_empty() {
                    let op = Op {
                        acquire: false,
                        key,
                        mode: m,
                    };
                    st.server = Server::Pending(op);
                    self.pending.push(key);
                }
                self.cancel_needless_wait(key);
            }
            Server::Idle => {
                if let Some(&head) = st.queue.front() {
                    if st.wait.is_none() {
                        let op = Op {
                            acquire: true,
                            key,
                            mode: self.reqs[&head].mode,
                        };
                        st.server = Server::Pending(op);
                        self.pending.push(key);
                    }
                } else {
                    self.cancel_needless_wait(key);
                    self.gc(key);
                }
            }
        }
    }

    fn cancel_needless_wait(&mut self, key: Key) {
        let Some(st) = self.keys.get_mut(&key) else {
            return;
        };
        let waiting = st
            .queue
            .iter()
            .any(|q| self.reqs[q].attempt == Attempt::Wait);
        if let Some((m, false)) = st.wait
            && !waiting
        {
            st.wait = Some((m, true));
            self.wait_cancel.push_back(key);
        }
    }

    fn gc(&mut self, key: Key) {
        if let Some(st) = self.keys.get(&key)
            && st.server == Server::Idle
            && st.holders.is_empty()
            && st.queue.is_empty()
            && st.wait.is_none()
            && let Some(st) = self.keys.remove(&key)
            && self.spare.len() < SPARE
        {
            self.spare.push(st);
        }
    }
}
