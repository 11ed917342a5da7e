//! The model: what every session should hold, the contender session, and the check of the model
//! against `pg_locks`, read on an independent observer session with raw SQL.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use advisory_common::Key;
use advisory_common::sql::Mode;
use advisory_tests::events;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::{Connection, PgConnection, Row};

/// Holds of one session: (key, mode) -> count.
pub type Holds = BTreeMap<(i64, Mode), u32>;

pub struct World {
    pub seed: u64,
    pub rng: StdRng,
    pub keys: Vec<i64>,
    observer: PgConnection,
    contender: PgConnection,
    pub contender_pid: i32,
    /// pid -> the holds the session should have (session and transaction scope together).
    pub held: BTreeMap<i32, Holds>,
    /// Sessions whose holds are checked exactly; any other pid must hold nothing (within a
    /// deadline: a closed session's backend exits when its wait ends).
    pub live: BTreeSet<i32>,
    /// Holds whose release is queued on their connection but not yet confirmed by an answer on
    /// it: other sessions may still see them for a moment (I1 only promises they are gone before
    /// that connection's next answer). Cleared by [`World::synced`].
    pub maybe: BTreeSet<(i32, i64, Mode)>,
    pub ops: usize,
    pub log: Vec<String>,
}

pub async fn connect(url: &str) -> PgConnection {
    PgConnection::connect(url).await.expect("connect")
}

pub async fn pid_of(c: &mut PgConnection) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(c)
        .await
        .unwrap()
}

fn conflicts(a: Mode, b: Mode) -> bool {
    a == Mode::Exclusive || b == Mode::Exclusive
}

impl World {
    pub async fn new(url: &str, seed: u64) -> World {
        // the adapter's own decisions (queued, undone, drained) go into a failure's log
        events::keep_lines();
        events::take_lines();
        let mut contender = connect(url).await;
        let contender_pid = pid_of(&mut contender).await;
        let mut live = BTreeSet::new();
        live.insert(contender_pid);
        World {
            seed,
            rng: StdRng::seed_from_u64(seed),
            keys: (0..3).map(|_| rand::random::<i64>()).collect(),
            observer: connect(url).await,
            contender,
            contender_pid,
            held: BTreeMap::new(),
            live,
            maybe: BTreeSet::new(),
            ops: 0,
            log: Vec::new(),
        }
    }

    pub fn note(&mut self, what: impl Into<String>) {
        self.ops += 1;
        self.log.append(&mut events::take_lines());
        self.log.push(what.into());
    }

    pub fn fail(&self, what: &str) -> ! {
        let mut log = self.log.clone();
        log.append(&mut events::take_lines());
        let tail: Vec<_> = log.iter().rev().take(60).rev().collect();
        panic!(
            "seed={} (replay: ADVISORY_MODEL_SEED={}): {what}\nlast steps:\n  {}",
            self.seed,
            self.seed,
            tail.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n  ")
        );
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.rng.gen_bool(p)
    }

    pub fn key(&mut self) -> i64 {
        self.keys[self.rng.gen_range(0..self.keys.len())]
    }

    pub fn mode(&mut self) -> Mode {
        if self.chance(0.5) {
            Mode::Exclusive
        } else {
            Mode::Shared
        }
    }

    /// Would a request of `pid` for `key` in `mode` have to wait? (A session never conflicts with
    /// its own holds.)
    pub fn blocked(&self, pid: i32, key: i64, mode: Mode) -> bool {
        self.held.iter().any(|(p, h)| {
            *p != pid
                && h.iter()
                    .any(|((k, m), n)| *k == key && *n > 0 && conflicts(*m, mode))
        })
    }

    /// Could a request of `pid` have to wait because of a hold whose release is still queued?
    pub fn maybe_blocked(&self, pid: i32, key: i64, mode: Mode) -> bool {
        self.blocked(pid, key, mode)
            || self
                .maybe
                .iter()
                .any(|(p, k, m)| *p != pid && *k == key && conflicts(*m, mode))
    }

    /// A hold whose release is queued (a dropped guard, a dropped transaction's ROLLBACK).
    pub fn release_queued(&mut self, pid: i32, key: i64, mode: Mode) {
        self.remove(pid, key, mode);
        self.maybe.insert((pid, key, mode));
    }

    /// Every connection has just answered a statement: queued releases have run.
    pub fn synced(&mut self) {
        self.maybe.clear();
    }

    pub fn add(&mut self, pid: i32, key: i64, mode: Mode) {
        *self
            .held
            .entry(pid)
            .or_default()
            .entry((key, mode))
            .or_default() += 1;
    }

    pub fn remove(&mut self, pid: i32, key: i64, mode: Mode) {
        let h = self.held.entry(pid).or_default();
        match h.get_mut(&(key, mode)) {
            Some(n) if *n > 0 => *n -= 1,
            _ => self.fail(&format!("model: removing a hold pid {pid} does not have")),
        }
    }

    /// The contender takes (with a try, whose answer must match the model) or releases a hold.
    pub async fn contender_step(&mut self) {
        let (key, mode) = (self.key(), self.mode());
        let pid = self.contender_pid;
        let mine = self
            .held
            .get(&pid)
            .and_then(|h| h.get(&(key, mode)))
            .copied();
        if mine.unwrap_or(0) > 0 && self.chance(0.6) {
            self.contender_unlock(key, mode).await;
            return;
        }
        let f = match mode {
            Mode::Exclusive => "pg_try_advisory_lock",
            Mode::Shared => "pg_try_advisory_lock_shared",
        };
        let waiter_before = self.conflicting_waiter(pid, key, mode).await;
        let got: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT {f}($1)")))
            .bind(key)
            .fetch_one(&mut self.contender)
            .await
            .unwrap();
        self.note(format!("contender try {key} {mode:?} -> {got}"));
        // granted: nothing certain was in the way; refused: something was (maybe a release still
        // queued on another connection, or a conflicting request still *waiting*: PostgreSQL
        // refuses a try that conflicts with a waiter, so that waiters are not starved)
        let refused_by_a_waiter =
            !got && (waiter_before || self.conflicting_waiter(pid, key, mode).await);
        if (got && self.blocked(pid, key, mode))
            || (!got && !self.maybe_blocked(pid, key, mode) && !refused_by_a_waiter)
        {
            self.fail("the contender's try disagrees with the model (mutual exclusion)");
        }
        if got {
            self.add(pid, key, mode);
        }
    }

    async fn contender_unlock(&mut self, key: i64, mode: Mode) {
        let f = match mode {
            Mode::Exclusive => "pg_advisory_unlock",
            Mode::Shared => "pg_advisory_unlock_shared",
        };
        let ok: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT {f}($1)")))
            .bind(key)
            .fetch_one(&mut self.contender)
            .await
            .unwrap();
        self.note(format!("contender unlock {key} {mode:?}"));
        if !ok {
            self.fail("the contender lost a hold");
        }
        self.remove(self.contender_pid, key, mode);
    }

    /// The contender gives up every hold of `key` (so a request waiting for it can finish).
    pub async fn free(&mut self, key: i64) {
        for mode in [Mode::Exclusive, Mode::Shared] {
            while self
                .held
                .get(&self.contender_pid)
                .and_then(|h| h.get(&(key, mode)))
                .is_some_and(|n| *n > 0)
            {
                self.contender_unlock(key, mode).await;
            }
        }
    }

    async fn actual(&mut self) -> BTreeSet<(i32, i64, Mode)> {
        let rows = sqlx::query(
            "SELECT pid, ((classid::int8 << 32) | objid::int8) AS k, mode FROM pg_locks \
             WHERE locktype = 'advisory' AND objsubid = 1 AND granted",
        )
        .fetch_all(&mut self.observer)
        .await
        .unwrap();
        rows.iter()
            .filter_map(|r| {
                let k: i64 = r.get("k");
                let m: &str = r.get("mode");
                let mode = if m == "ExclusiveLock" {
                    Mode::Exclusive
                } else {
                    Mode::Shared
                };
                self.keys.contains(&k).then(|| (r.get("pid"), k, mode))
            })
            .collect()
    }

    /// Is another session waiting (not granted) for `key` in a mode that conflicts with `mode`?
    async fn conflicting_waiter(&mut self, pid: i32, key: i64, mode: Mode) -> bool {
        let modes: Vec<String> = sqlx::query_scalar(
            "SELECT mode FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 AND NOT granted \
             AND ((classid::int8 << 32) | objid::int8) = $1 AND pid <> $2",
        )
        .bind(key)
        .bind(pid)
        .fetch_all(&mut self.observer)
        .await
        .unwrap();
        modes.iter().any(|m| {
            let waiting = if m == "ExclusiveLock" {
                Mode::Exclusive
            } else {
                Mode::Shared
            };
            conflicts(waiting, mode)
        })
    }

    /// Requests on the keys still waiting in sessions that are closed or returned: a waiting
    /// request blocks later conflicting ones (PostgreSQL queues them behind it), so the model is
    /// exact only once they are gone.
    async fn ghost_waiters(&mut self) -> Vec<i32> {
        let pids: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 AND NOT granted \
             AND ((classid::int8 << 32) | objid::int8) = ANY($1)",
        )
        .bind(&self.keys)
        .fetch_all(&mut self.observer)
        .await
        .unwrap();
        pids.into_iter()
            .filter(|p| !self.live.contains(p))
            .collect()
    }

    fn expected(&self) -> BTreeSet<(i32, i64, Mode)> {
        self.held
            .iter()
            .flat_map(|(p, h)| {
                h.iter()
                    .filter(|(_, n)| **n > 0)
                    .map(|((k, m), _)| (*p, *k, *m))
            })
            .collect()
    }

    /// Compare the model with `pg_locks`. `exact`: every live session holds exactly what the model
    /// says, at once (I1 for borrowed connections: the caller has just had an answer on each), and
    /// every other session holds nothing within a deadline. Otherwise only I3: every hold the
    /// model says a live guard owns is there.
    pub async fn check(&mut self, exact: bool) {
        let expected = self.expected();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let actual = self.actual().await;
            let missing: Vec<_> = expected.difference(&actual).collect();
            if !missing.is_empty() {
                self.fail(&format!(
                    "I3: holds owned by live guards are gone: {missing:?}; server: {actual:?}"
                ));
            }
            if !exact {
                return;
            }
            let extra: Vec<_> = actual
                .difference(&expected)
                .copied()
                .filter(|h| !(self.live.contains(&h.0) && self.maybe.contains(h)))
                .collect();
            if let Some(e) = extra.iter().find(|(p, _, _)| self.live.contains(p)) {
                self.fail(&format!(
                    "I1: live session {} holds {:?} beyond its guards; server: {actual:?}",
                    e.0,
                    (e.1, e.2)
                ));
            }
            let ghosts = self.ghost_waiters().await;
            if extra.is_empty() && ghosts.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                self.fail(&format!(
                    "I1: closed/returned sessions still hold {extra:?} or wait ({ghosts:?}) after 10 s"
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Which of the keys a session holds right now, for a strict check of one pid (a pooled
    /// connection just handed out must hold nothing).
    pub async fn assert_pid_holds_nothing(&mut self, pid: i32, what: &str) {
        let actual = self.actual().await;
        if let Some(h) = actual.iter().find(|(p, _, _)| *p == pid) {
            self.fail(&format!("I1: {what}: pid {pid} already holds {h:?}"));
        }
    }
}

/// Poll `fut` up to `polls` times with the task's waker; `None` if it is still pending (the caller
/// then drops it: a cancellation at that await point).
pub async fn poll_n<F: std::future::Future>(
    fut: std::pin::Pin<&mut F>,
    polls: u32,
) -> Option<F::Output> {
    let mut fut = fut;
    for _ in 0..polls {
        if let std::task::Poll::Ready(v) = futures::poll!(fut.as_mut()) {
            return Some(v);
        }
        tokio::task::yield_now().await;
    }
    None
}

/// Await `fut`, failing if it takes 10 s: every wait the model expects is short, so a longer one
/// means a lock the model does not know about (one that outlived its guard).
pub async fn within<F: std::future::Future>(w: &World, fut: F) -> F::Output {
    match tokio::time::timeout(Duration::from_secs(10), fut).await {
        Ok(v) => v,
        Err(_) => w.fail("I1: a request waited 10 s for a lock the model says is free (a lock outlived its guard)"),
    }
}

pub fn key(k: i64) -> Key {
    Key::BigInt(k)
}
