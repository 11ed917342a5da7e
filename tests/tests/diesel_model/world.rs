//! What the drivers of every kind share: the state of one session as the model sees it, the
//! acquire variants and what the model allows them to return, deliberate panics, and the
//! "poisoned" sessions that make the grant-at-timeout race deterministic.

use std::sync::OnceLock;
use std::time::Duration;

use advisory_common::Key;
use advisory_common::sql::Mode;
use diesel_advisory::Error;
use rand::Rng;

use super::model::{Model, micros};
use super::support::conn;

/// How a level of the guard stack ends (LIFO, as borrows force).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Drop,
    Release,
    /// The sequence is over: unwind every level (each guard dropped or released at random).
    End,
}

/// A session's transaction as the model knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tx {
    None,
    /// Left open by a panic (sync, diesel does not roll back) or a cancelled/panicked diesel-async
    /// `transaction` future: `aborted` if a statement failed inside it.
    Dangling {
        aborted: bool,
    },
    /// diesel-async only: a `transaction` future was dropped at an unknown point (maybe inside
    /// `BEGIN` / `COMMIT`): the server may be in a transaction, aborted or not, or idle.
    Unknown,
}

/// One session (connection) under test.
#[derive(Debug)]
pub struct Session {
    pub pid: i32,
    pub tx: Tx,
    /// Marked broken by the adapter (a guard dropped where its unlock may fail): diesel refuses
    /// transactions, pools discard it, and holds left behind last until it closes.
    pub broken: bool,
    /// Transaction-level locks taken in the dangling transaction (released when it ends).
    pub xact: Vec<(Key, Mode)>,
    /// diesel rolled a savepoint back in that transaction: `ROLLBACK TO SAVEPOINT` leaves the
    /// savepoint (and so a subtransaction) in place, and an error then aborts only that
    /// subtransaction, not the locks taken before it.
    pub lingering: bool,
}

impl Session {
    pub fn new(pid: i32) -> Session {
        Session {
            pid,
            tx: Tx::None,
            broken: false,
            xact: Vec::new(),
            lingering: false,
        }
    }
}

/// How an acquire waits.
#[derive(Clone, Copy, Debug)]
pub enum How {
    Block,
    Try,
    Timeout(Duration),
}

/// What the model allows an acquire to return.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    Grant,
    Refuse,
    Either,
    AlreadyInTx,
    /// `Error::Database(BrokenTransactionManager)` or `AlreadyInTransaction`: the session's
    /// transaction state is unknown or broken.
    Refused,
    /// A poisoned session whose post-timeout `held` check fails: `Error::Database`.
    HeldCheckFails,
}

/// What an acquire returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Got {
    Grant,
    Refuse,
    AlreadyInTx,
    Broken,
    Database,
}

pub fn got<G>(r: &Result<Option<G>, Error>) -> Got {
    match r {
        Ok(Some(_)) => Got::Grant,
        Ok(None) | Err(Error::Timeout { .. }) => Got::Refuse,
        Err(Error::AlreadyInTransaction { .. }) => Got::AlreadyInTx,
        Err(Error::Database(diesel::result::Error::BrokenTransactionManager)) => Got::Broken,
        Err(Error::Database(_)) => Got::Database,
        Err(e) => panic!("unexpected error {e:?}"),
    }
}

/// Does `got` match `expect`? On a `HeldFails` session any try or timed acquire may also fail
/// with `Error::Database`: a borrowed `try_` acquire learns its answer from `pg_locks` (the same
/// `held` check) when another guard of the process holds the key in that mode.
pub fn allowed(expect: Expect, got: Got, how: How, poison: Poison) -> bool {
    let held_check = poison == Poison::HeldFails && !matches!(how, How::Block);
    (held_check
        && got == Got::Database
        && expect != Expect::AlreadyInTx
        && expect != Expect::Refused)
        || matches!(
            (expect, got),
            (Expect::Grant, Got::Grant)
                | (Expect::Refuse, Got::Refuse)
                | (Expect::Either, Got::Grant | Got::Refuse)
                | (Expect::AlreadyInTx, Got::AlreadyInTx)
                | (Expect::Refused, Got::AlreadyInTx | Got::Broken)
                | (Expect::HeldCheckFails, Got::Database)
        )
}

/// Pick an acquire variant that cannot block the (single-threaded) test for good: a waiting one
/// only on a key nobody else may hold in a conflicting mode, unless `may_block` (it will be
/// cancelled, and its blocker released right after).
pub fn pick_how(m: &mut Model, conflict: (bool, bool), may_block: bool) -> How {
    let free = !conflict.0 && !conflict.1;
    match m.rng.gen_range(0..10) {
        0..=3 if free || may_block => How::Block,
        0..=5 => How::Try,
        _ => How::Timeout(Duration::from_millis(1) + micros(&mut m.rng, 20_000)),
    }
}

/// The model's prediction for an acquire of `(key, mode)` on `s`.
pub fn predict(m: &Model, s: &Session, key: Key, mode: Mode, how: How, poison: Poison) -> Expect {
    if s.tx == Tx::Unknown || (s.broken && s.tx != Tx::None) {
        return Expect::Refused;
    }
    if s.broken {
        return Expect::Refused;
    }
    if s.tx != Tx::None {
        return Expect::AlreadyInTx;
    }
    let (certain, maybe) = m.conflict(s.pid, key, mode);
    let timed = matches!(how, How::Timeout(_));
    match (timed, poison) {
        (true, Poison::HeldFails) => Expect::HeldCheckFails,
        _ if maybe => Expect::Either,
        _ if certain => Expect::Refuse,
        _ => Expect::Grant,
    }
}

/// A sequence's sessions may be poisoned: a schema before `pg_catalog` in their `search_path`
/// overrides `set_config` so that restoring `lock_timeout` after a granted timed lock raises
/// 55P03 (the grant-at-timeout race, made deterministic) and, for `HeldFails`, overrides
/// `pg_backend_pid()` so that the adapter's post-timeout `held` check fails too (the lock may be
/// held and the adapter cannot know).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Poison {
    None,
    Boundary,
    HeldFails,
}

impl Poison {
    pub fn pick(m: &mut Model) -> Poison {
        match m.rng.gen_range(0..6) {
            0 => Poison::Boundary,
            1 => Poison::HeldFails,
            _ => Poison::None,
        }
    }

    /// The statement that poisons a session (none for `Poison::None`).
    pub fn sql(self) -> Option<String> {
        static SCHEMAS: OnceLock<(String, String)> = OnceLock::new();
        let (boundary, held) = SCHEMAS.get_or_init(|| {
            use diesel::connection::SimpleConnection;
            let tag = format!("{:08x}", rand::random::<u32>());
            let (b, h) = (format!("model_boundary_{tag}"), format!("model_held_{tag}"));
            let set_config = "(name text, value text, is_local boolean) RETURNS text \
                 LANGUAGE plpgsql AS $$ BEGIN \
                 IF name = 'lock_timeout' AND pg_catalog.current_setting('lock_timeout') <> '0' THEN \
                 RAISE EXCEPTION 'canceling statement due to lock timeout' USING ERRCODE = 'lock_not_available'; \
                 END IF; RETURN pg_catalog.set_config(name, value, is_local); END $$";
            conn()
                .batch_execute(&format!(
                    "CREATE SCHEMA {b}; CREATE FUNCTION {b}.set_config{set_config}; \
                     CREATE SCHEMA {h}; CREATE FUNCTION {h}.set_config{set_config}; \
                     CREATE FUNCTION {h}.pg_backend_pid() RETURNS int LANGUAGE sql AS 'SELECT 1/0'"
                ))
                .expect("poisoned schemas");
            (b, h)
        });
        match self {
            Poison::None => None,
            Poison::Boundary => Some(format!("SET search_path = {boundary}, pg_catalog")),
            Poison::HeldFails => Some(format!("SET search_path = {held}, pg_catalog")),
        }
    }
}

/// The payload of a deliberate panic inside a transaction; `at_guard`: caught by the scope that
/// owns the guard of the transaction's connection (dropped while unwinding), else by the
/// transaction call itself.
pub struct ModelPanic {
    pub at_guard: bool,
}

/// Deliberate panics print nothing; every other panic goes to the previous hook.
pub fn quiet_model_panics() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !info.payload().is::<ModelPanic>() {
                previous(info);
            }
        }));
    });
}

/// `SELECT <n>` for a random `n`, and the `n`: I2 (the caller's statement gets its own answer).
pub fn numbered(m: &mut Model) -> (String, i32) {
    let n = m.rng.gen_range(1..1_000_000);
    (format!("SELECT {n}::int4 AS n"), n)
}

/// One row, one `n`.
#[derive(diesel::QueryableByName)]
pub struct N {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pub n: i32,
}

/// The backend pid, qualified so that a poisoned `search_path` does not matter.
pub const PID_SQL: &str = "SELECT pg_catalog.pg_backend_pid() AS n";
