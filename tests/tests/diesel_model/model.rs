//! The model: which session should hold which key in which mode, how many times, compared with
//! `pg_locks` (read on the independent observer session) after every step.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use advisory_common::sql::Mode;
use advisory_common::{Key, LockMode};
use advisory_tests::{advisory_locks, wait_until};
use rand::Rng;
use rand::rngs::StdRng;

use super::support::SOON;

/// `(pid, key, mode)`: one session's hold of a key in a mode, as `pg_locks` shows it (one row,
/// however many times the session holds it).
pub type Hold = (i32, Key, Mode);

fn mode_of(m: LockMode) -> Mode {
    match m {
        LockMode::Exclusive => Mode::Exclusive,
        LockMode::Shared => Mode::Shared,
    }
}

/// What the model says, and where the test is (for every failure message).
pub struct Model {
    pub keys: Vec<Key>,
    pub rng: StdRng,
    pub seed: u64,
    pub kind: &'static str,
    pub step: usize,
    pub op: String,
    /// Holds that must be there: live guards (session level, counted) and transaction locks.
    expected: BTreeMap<Hold, u32>,
    /// Holds that may be there until this session completes a round trip (a cancelled acquire's
    /// lock and queued unlock in flight, a queued drop-time unlock) or, for a session marked
    /// broken, until it closes.
    maybe: BTreeSet<Hold>,
    /// Holds of sessions that are closing or whose release runs in a spawned task: they must go
    /// by themselves, [`Model::converge`] waits for that.
    closing: BTreeSet<(Key, Mode)>,
    /// Operations run, for the summary.
    pub ops: usize,
    /// The last steps, printed when the invariant breaks.
    trail: std::collections::VecDeque<String>,
}

impl Model {
    pub fn new(kind: &'static str, seed: u64, rng: StdRng, keys: Vec<Key>) -> Model {
        Model {
            keys,
            rng,
            seed,
            kind,
            step: 0,
            op: String::new(),
            expected: BTreeMap::new(),
            maybe: BTreeSet::new(),
            closing: BTreeSet::new(),
            ops: 0,
            trail: Default::default(),
        }
    }

    /// `seed=.. kind=.. step=.. op=..`: printed with every failure.
    pub fn at(&self) -> String {
        format!(
            "seed={} kind={} step={} op={} (replay: ADVISORY_MODEL_SEED={} cargo test -p advisory-tests --test diesel_model {})",
            self.seed, self.kind, self.step, self.op, self.seed, self.kind
        )
    }

    /// Start the next step, recording what it does.
    pub fn begin(&mut self, op: impl Into<String>) {
        self.step += 1;
        self.ops += 1;
        self.op = op.into();
        if self.trail.len() == 40 {
            self.trail.pop_front();
        }
        self.trail
            .push_back(format!("{:>4} {}", self.step, self.op));
    }

    /// The last steps, one per line.
    pub fn trail(&self) -> String {
        self.trail.iter().map(|s| format!("\n    {s}")).collect()
    }

    pub fn key(&mut self) -> Key {
        let i = self.rng.gen_range(0..self.keys.len());
        self.keys[i]
    }

    pub fn mode(&mut self) -> Mode {
        if self.rng.gen_bool(0.4) {
            Mode::Shared
        } else {
            Mode::Exclusive
        }
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.rng.gen_bool(p)
    }

    pub fn add(&mut self, hold: Hold) {
        *self.expected.entry(hold).or_insert(0) += 1;
    }

    pub fn remove(&mut self, hold: Hold) {
        let at = self.at();
        let n = self
            .expected
            .get_mut(&hold)
            .unwrap_or_else(|| panic!("{at}: model error, {hold:?} not held"));
        *n -= 1;
        if *n == 0 {
            self.expected.remove(&hold);
        }
    }

    /// The hold may linger (see [`Model::maybe`]).
    pub fn maybe(&mut self, hold: Hold) {
        self.maybe.insert(hold);
    }

    /// Every hold of `pid` (expected or maybe) is going away with its session.
    pub fn close_session(&mut self, pid: i32) {
        let gone: Vec<Hold> = self
            .expected
            .keys()
            .chain(self.maybe.iter())
            .filter(|h| h.0 == pid)
            .copied()
            .collect();
        for h in gone {
            self.expected.remove(&h);
            self.maybe.remove(&h);
            self.closing.insert((h.1, h.2));
        }
    }

    /// A hold that may or may not be there (`maybe`) now goes away by itself.
    pub fn forget(&mut self, hold: Hold) {
        self.maybe.remove(&hold);
        self.closing.insert((hold.1, hold.2));
    }

    /// A hold whose release runs elsewhere (a pool guard's spawned release task).
    pub fn releasing(&mut self, key: Key, mode: Mode) {
        self.closing.insert((key, mode));
    }

    /// `pid` completed a round trip and is not marked broken: whatever was queued before has run.
    pub fn settle(&mut self, pid: i32) {
        self.maybe.retain(|h| h.0 != pid);
    }

    /// Does a session other than `pid` hold (or maybe hold) `key` in a mode conflicting with
    /// `mode`? `(certain, maybe)`.
    pub fn conflict(&self, pid: i32, key: Key, mode: Mode) -> (bool, bool) {
        let hits = |h: &&Hold| {
            h.0 != pid && h.1 == key && (mode == Mode::Exclusive || h.2 == Mode::Exclusive)
        };
        let certain = self.expected.keys().filter(hits).count() > 0;
        let maybe = self.maybe.iter().filter(hits).count() > 0
            || self
                .closing
                .iter()
                .any(|(k, m)| *k == key && (mode == Mode::Exclusive || *m == Mode::Exclusive));
        (certain, maybe)
    }

    /// Is there a conflicting hold (certain or maybe) by a session other than `pid` and `besides`?
    pub fn conflict_besides(&self, pid: i32, besides: i32, key: Key, mode: Mode) -> bool {
        let hits = |h: &&Hold| {
            h.0 != pid
                && h.0 != besides
                && h.1 == key
                && (mode == Mode::Exclusive || h.2 == Mode::Exclusive)
        };
        self.expected.keys().any(|h| hits(&h))
            || self.maybe.iter().any(|h| hits(&h))
            || self
                .closing
                .iter()
                .any(|(k, m)| *k == key && (mode == Mode::Exclusive || *m == Mode::Exclusive))
    }

    fn observed(&self) -> BTreeSet<Hold> {
        advisory_locks()
            .into_iter()
            .filter(|l| l.granted && self.keys.contains(&l.key))
            .map(|l| (l.pid, l.key, mode_of(l.mode)))
            .collect()
    }

    /// The invariant, now: every expected hold is there (I3: no live guard's hold is ever gone),
    /// nothing is there that is neither expected nor allowed to linger (I1).
    pub fn check(&self) {
        let observed = self.observed();
        for h in self.expected.keys() {
            assert!(
                observed.contains(h),
                "{}: hold {h:?} is gone; pg_locks: {observed:?}; last steps:{}",
                self.at(),
                self.trail()
            );
        }
        for h in &observed {
            let allowed = self.expected.contains_key(h)
                || self.maybe.contains(h)
                || self.closing.contains(&(h.1, h.2));
            assert!(
                allowed,
                "{}: unexpected hold {h:?}; expected {:?}, maybe {:?}; last steps:{}",
                self.at(),
                self.expected,
                self.maybe,
                self.trail()
            );
        }
    }

    /// Wait (deadline [`SOON`]) until the closing sessions' holds are gone, then check.
    pub fn converge(&mut self) {
        let keys = self.keys.clone();
        let at = self.at();
        wait_until(
            &keys,
            SOON,
            &format!("{at}: closing sessions gone"),
            |rows| {
                rows.iter().filter(|l| l.granted).all(|l| {
                    let h = (l.pid, l.key, mode_of(l.mode));
                    self.expected.contains_key(&h) || self.maybe.contains(&h)
                })
            },
        );
        self.closing.clear();
        self.check();
    }

    /// I1 for pools: a connection handed to the pool's next user holds no lock at all, now.
    pub fn assert_fresh_checkout_holds_nothing(&self, pid: i32) {
        let held: Vec<_> = advisory_locks()
            .into_iter()
            .filter(|l| l.pid == pid && l.granted)
            .collect();
        assert!(
            held.is_empty(),
            "{}: the pool handed out backend {pid} holding {held:?}",
            self.at()
        );
    }

    /// The sequence is over and every session closed: nothing of ours is left anywhere.
    pub fn finish(&mut self) {
        assert!(
            self.expected.is_empty(),
            "{}: model still expects {:?}",
            self.at(),
            self.expected
        );
        self.maybe.clear();
        self.converge();
        let left = self.observed();
        assert!(left.is_empty(), "{}: left behind {left:?}", self.at());
    }
}

/// A random small duration, for timed acquires and cancellation pauses.
pub fn micros(rng: &mut StdRng, max: u64) -> Duration {
    Duration::from_micros(rng.gen_range(0..max))
}

/// Another session that takes and releases keys with raw SQL (never waiting), so that the
/// adapter's try and timed acquires meet contention.
pub struct Contender {
    conn: diesel::PgConnection,
    pub pid: i32,
    held: Vec<(Key, Mode)>,
}

impl Contender {
    pub fn new() -> Contender {
        let mut conn = super::support::conn();
        let pid = super::support::pid(&mut conn);
        Contender {
            conn,
            pid,
            held: Vec::new(),
        }
    }

    fn run(&mut self, f: &str, key: Key) -> bool {
        use diesel::RunQueryDsl;
        #[derive(diesel::QueryableByName)]
        struct B {
            #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Bool>)]
            b: Option<bool>,
        }
        let args = match key.value() {
            advisory_common::KeyValue::BigInt(k) => format!("{k}"),
            advisory_common::KeyValue::Pair(a, b) => format!("{a}, {b}"),
        };
        diesel::sql_query(format!("SELECT {f}({args}) AS b"))
            .get_result::<B>(&mut self.conn)
            .expect("contender statement")
            .b
            .unwrap_or(true)
    }

    /// One random move: take a key (`pg_try_advisory_lock[_shared]`, predicted by the model) or
    /// release one it holds.
    pub fn step(&mut self, m: &mut Model) {
        if !self.held.is_empty() && m.chance(0.5) {
            let i = m.rng.gen_range(0..self.held.len());
            let (key, mode) = self.held.swap_remove(i);
            m.begin(format!("contender releases {key} {mode:?}"));
            self.release(m, key, mode);
            return;
        }
        let (key, mode) = (m.key(), m.mode());
        m.begin(format!("contender tries {key} {mode:?}"));
        let (certain, maybe) = m.conflict(self.pid, key, mode);
        let f = match mode {
            Mode::Exclusive => "pg_try_advisory_lock",
            Mode::Shared => "pg_try_advisory_lock_shared",
        };
        let got = self.run(f, key);
        if !maybe {
            assert_eq!(got, !certain, "{}: contender's try", m.at());
        }
        if got {
            m.add((self.pid, key, mode));
            self.held.push((key, mode));
        }
        m.check();
    }

    fn release(&mut self, m: &mut Model, key: Key, mode: Mode) {
        let f = match mode {
            Mode::Exclusive => "pg_advisory_unlock",
            Mode::Shared => "pg_advisory_unlock_shared",
        };
        assert!(self.run(f, key), "{}: contender's unlock", m.at());
        m.remove((self.pid, key, mode));
        m.check();
    }

    /// Release everything the contender holds on `key` (a cancelled acquire may be waiting for it).
    pub fn release_key(&mut self, m: &mut Model, key: Key) {
        let mine: Vec<_> = self.held.iter().filter(|h| h.0 == key).copied().collect();
        self.held.retain(|h| h.0 != key);
        for (key, mode) in mine {
            self.release(m, key, mode);
        }
    }

    pub fn release_all(&mut self, m: &mut Model) {
        for (key, mode) in std::mem::take(&mut self.held) {
            self.release(m, key, mode);
        }
    }
}
