//! Every SQL statement the adapters send, in one place.
//!
//! Statements are `&'static str` so that drivers cache the prepared statement (one parse per
//! connection, then one round trip per call), and keys are **always bound parameters**: `$1` for a
//! `bigint` key, `$1, $2` for a pair. A timed statement takes the timeout in milliseconds as the
//! last parameter (`int4`, see [`crate::timeout_millis`]).
//!
//! Every lock statement returns exactly one row with one `boolean` column, `locked`: always `true`
//! for the waiting forms, the result of `pg_try_advisory_*` for the try forms. The waiting forms
//! are written `SELECT pg_advisory_lock($1) IS NOT NULL AS locked` (a `void` result is never NULL):
//! a plain projection, measured about 10 % faster server-side (pgbench, prepared) than
//! `SELECT true FROM pg_advisory_lock($1)`, whose function scan materialises a row. Every unlock statement
//! returns one `boolean`, `unlocked`.
//!
//! The only statements that are not prepared are the [`savepoint_batch`] texts used for a timed
//! attempt inside an open transaction (one simple-protocol round trip: savepoint, lock, release)
//! and the [`lock_then_begin`] texts that open a transaction already holding a lock (one round
//! trip instead of two). They contain only integers produced by this crate, never caller strings.
//!
//! # Timed acquires
//!
//! A timed acquire is one statement that sets PostgreSQL's `lock_timeout` for the duration of the
//! lock call and puts the previous value back, evaluated strictly inside-out by `OFFSET 0` fences:
//!
//! ```sql
//! SELECT set_config('lock_timeout', s.old, true) IS NOT NULL AS locked          -- 4. restore
//! FROM (SELECT s.old, pg_advisory_lock($1) AS l                                  -- 3. lock
//!       FROM (SELECT s.old, set_config('lock_timeout', ($2::int4)::text, true) AS n  -- 2. set
//!             FROM (SELECT current_setting('lock_timeout') AS old OFFSET 0) s   -- 1. remember
//!             OFFSET 0) s
//!       OFFSET 0) s
//! ```
//!
//! * The wait is enforced by the server (SQLSTATE `55P03`), no client polling; one round trip.
//! * Outside a transaction block the statement is its own transaction, so the transaction-local
//!   `set_config` also ends with it. Inside a transaction block step 4 restores the previous value
//!   on success; on failure the adapters roll back the savepoint the attempt ran in, which also
//!   reverts the setting (and keeps the caller's transaction usable), see [`savepoint_batch`].
//! * **The grant/timeout race.** When the lock is granted in the same instant `lock_timeout`
//!   fires, PostgreSQL *keeps* the lock and still raises `55P03` (`LockErrorCleanup` in
//!   `src/backend/storage/lmgr/proc.c` calls `GrantAwaitedLock()` when the wait already ended). A
//!   transaction-scope lock goes away with the failed statement or the rolled-back savepoint, but a
//!   session-scope lock stays with the session. The adapters therefore follow a session-scope
//!   timeout with one [`held_sql`] check (an extra round trip on the timeout path only): a timed
//!   acquire only ever waits for a key the session does not already hold in that mode (re-entrant
//!   requests are granted at once), so "held" means "granted at the instant of the timeout", and
//!   the caller gets the guard instead of `Timeout`. The other race is on the client side: the lock
//!   is granted and the reply is on the wire while the caller's future is dropped; the adapters
//!   treat that like any cancelled acquire (see their `# Cancel safety` sections).
//! * PostgreSQL's `lock_timeout` has millisecond resolution and `0` means "wait forever", so
//!   [`crate::timeout_millis`] rounds up and never returns 0.

use std::fmt::Write as _;

use crate::KeySpace;
use crate::{Key, KeyValue};

/// Who releases a lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Held until unlocked (or the session ends): `pg_advisory_lock`.
    Session,
    /// Held until the transaction ends (COMMIT or ROLLBACK): `pg_advisory_xact_lock`.
    Transaction,
}

/// Exclusive or shared: the crate's one mode type, [`LockMode`](crate::LockMode), under the name
/// the statement builders have always used.
pub use crate::LockMode as Mode;

/// How an acquire waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Wait {
    /// Wait as long as it takes.
    Block,
    /// Never wait: `pg_try_advisory_*`.
    Try,
    /// Wait at most a server-side `lock_timeout` (bound as the last parameter, in ms).
    Timeout,
}

/// All scopes, for table-driven code and tests.
pub const SCOPES: [Scope; 2] = [Scope::Session, Scope::Transaction];
/// All modes.
pub const MODES: [Mode; 2] = [Mode::Exclusive, Mode::Shared];
/// All wait kinds.
pub const WAITS: [Wait; 3] = [Wait::Block, Wait::Try, Wait::Timeout];
/// Both key spaces.
pub const SPACES: [KeySpace; 2] = [KeySpace::BigInt, KeySpace::Pair];

macro_rules! lock_fn {
    ($scope:ident, $mode:ident, $try:literal) => {
        match ($scope, $mode) {
            (Scope::Session, Mode::Exclusive) => concat!("pg_", $try, "advisory_lock"),
            (Scope::Session, Mode::Shared) => concat!("pg_", $try, "advisory_lock_shared"),
            (Scope::Transaction, Mode::Exclusive) => concat!("pg_", $try, "advisory_xact_lock"),
            (Scope::Transaction, Mode::Shared) => concat!("pg_", $try, "advisory_xact_lock_shared"),
        }
    };
}

/// The name of the PostgreSQL function for a scope, mode and wait kind (`Timeout` uses the waiting
/// function), e.g. `pg_try_advisory_xact_lock_shared`.
pub fn function_name(scope: Scope, mode: Mode, wait: Wait) -> &'static str {
    match wait {
        Wait::Try => lock_fn!(scope, mode, "try_"),
        Wait::Block | Wait::Timeout => lock_fn!(scope, mode, ""),
    }
}

macro_rules! timed {
    ($f:literal, $args:literal, $t:literal) => {
        concat!(
            "SELECT set_config('lock_timeout', s.old, true) IS NOT NULL AS locked FROM (SELECT s.old, ",
            $f,
            "(",
            $args,
            ") AS l FROM (SELECT s.old, set_config('lock_timeout', (",
            $t,
            "::int4)::text, true) AS n FROM (SELECT current_setting('lock_timeout') AS old OFFSET 0) s OFFSET 0) s OFFSET 0) s"
        )
    };
}

macro_rules! lock_table {
    ($scope:ident, $mode:ident, $wait:ident, $space:ident; $( ($s:ident, $m:ident, $f:literal, $tf:literal) ),* $(,)?) => {
        match ($scope, $mode, $wait, $space) {
            $(
                (Scope::$s, Mode::$m, Wait::Block, KeySpace::BigInt) => concat!("SELECT ", $f, "($1) IS NOT NULL AS locked"),
                (Scope::$s, Mode::$m, Wait::Block, KeySpace::Pair) => concat!("SELECT ", $f, "($1, $2) IS NOT NULL AS locked"),
                (Scope::$s, Mode::$m, Wait::Try, KeySpace::BigInt) => concat!("SELECT ", $tf, "($1) AS locked"),
                (Scope::$s, Mode::$m, Wait::Try, KeySpace::Pair) => concat!("SELECT ", $tf, "($1, $2) AS locked"),
                (Scope::$s, Mode::$m, Wait::Timeout, KeySpace::BigInt) => timed!($f, "$1", "$2"),
                (Scope::$s, Mode::$m, Wait::Timeout, KeySpace::Pair) => timed!($f, "$1, $2", "$3"),
            )*
        }
    };
}

/// The prepared statement for an acquire. Parameters: the key (`$1` bigint, or `$1, $2` int4), then
/// for [`Wait::Timeout`] the timeout in milliseconds (`int4`). Returns one row, one `boolean` column
/// `locked`.
///
/// ```
/// use advisory_common::{KeySpace, sql::{lock_sql, Mode, Scope, Wait}};
/// assert_eq!(
///     lock_sql(Scope::Transaction, Mode::Shared, Wait::Try, KeySpace::Pair),
///     "SELECT pg_try_advisory_xact_lock_shared($1, $2) AS locked"
/// );
/// ```
pub fn lock_sql(scope: Scope, mode: Mode, wait: Wait, space: KeySpace) -> &'static str {
    lock_table!(scope, mode, wait, space;
        (Session, Exclusive, "pg_advisory_lock", "pg_try_advisory_lock"),
        (Session, Shared, "pg_advisory_lock_shared", "pg_try_advisory_lock_shared"),
        (Transaction, Exclusive, "pg_advisory_xact_lock", "pg_try_advisory_xact_lock"),
        (Transaction, Shared, "pg_advisory_xact_lock_shared", "pg_try_advisory_xact_lock_shared"),
    )
}

/// The prepared statement that releases one session-level hold. Parameters: the key. Returns one
/// row, one `boolean` column `unlocked` (`false`, with a server WARNING, if the session did not hold
/// the lock in that mode). Transaction-level locks have no unlock: COMMIT/ROLLBACK releases them.
pub fn unlock_sql(mode: Mode, space: KeySpace) -> &'static str {
    match (mode, space) {
        (Mode::Exclusive, KeySpace::BigInt) => "SELECT pg_advisory_unlock($1) AS unlocked",
        (Mode::Exclusive, KeySpace::Pair) => "SELECT pg_advisory_unlock($1, $2) AS unlocked",
        (Mode::Shared, KeySpace::BigInt) => "SELECT pg_advisory_unlock_shared($1) AS unlocked",
        (Mode::Shared, KeySpace::Pair) => "SELECT pg_advisory_unlock_shared($1, $2) AS unlocked",
    }
}

/// The unlock as a self-contained simple-protocol statement with the key written as integers, for
/// the paths that must queue a release without binding parameters (a guard's `Drop`). The key is
/// formatted from integers only; no caller text is ever spliced.
///
/// ```
/// use advisory_common::{Key, sql::{unlock_literal, Mode}};
/// assert_eq!(unlock_literal(Mode::Shared, Key::Pair(1, -2)), "SELECT pg_advisory_unlock_shared(1, -2)");
/// ```
pub fn unlock_literal(mode: Mode, key: Key) -> String {
    let f = match mode {
        Mode::Exclusive => "pg_advisory_unlock",
        Mode::Shared => "pg_advisory_unlock_shared",
    };
    let mut s = String::from("SELECT ");
    push_call(&mut s, f, key);
    s
}

/// Append `<function>(<key>)` with the key written as integers (`f(42)`, `f(1, 2)`): the one place
/// the literal statements splice a key.
fn push_call(s: &mut String, f: &str, key: Key) {
    match key.value() {
        KeyValue::BigInt(k) => write!(s, "{f}({k})"),
        KeyValue::Pair(k1, k2) => write!(s, "{f}({k1}, {k2})"),
    }
    .expect("writing to a String cannot fail");
}

/// The undo of a session-scope acquire whose outcome is unknown (its future was dropped after the
/// request went out): release one hold of `key` in `mode` **if** the session holds it, as a
/// self-contained simple-protocol statement queued behind the request. Re-entrancy makes this
/// exact: PostgreSQL grants a session's request at once when the session already holds the key in
/// that mode, so if the request was refused or timed out the session did not hold the key in that
/// mode and nothing is released (no other guard's hold is touched, no server WARNING), and if it
/// was granted exactly the hold it added is released. Only integers are spliced.
///
/// ```
/// use advisory_common::{Key, sql::{unlock_if_held_literal, Mode}};
/// let s = unlock_if_held_literal(Mode::Exclusive, Key::BigInt(-7));
/// assert!(s.starts_with("SELECT pg_advisory_unlock(-7) WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_locks"));
/// assert!(s.contains("mode = 'ExclusiveLock'"));
/// ```
pub fn unlock_if_held_literal(mode: Mode, key: Key) -> String {
    let lock_mode = mode.pg_locks_name();
    let which = match key.value() {
        KeyValue::BigInt(k) => {
            format!("objsubid = 1 AND ((classid::int8 << 32) | objid::int8) = {k}")
        }
        KeyValue::Pair(k1, k2) => format!(
            "objsubid = 2 AND classid::int8 = ({k1}::int4::int8 & 4294967295) AND objid::int8 = ({k2}::int4::int8 & 4294967295)"
        ),
    };
    format!(
        "{} WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted AND mode = '{lock_mode}' AND {which})",
        unlock_literal(mode, key)
    )
}

/// A comment that makes one request recognisable in `pg_stat_activity.query`, put in front of a
/// statement whose future may be abandoned while the server still waits for the lock (a pooled
/// `begin_with_xact_lock`): `/* advisory-lock request <tag> */ `. The tag is an integer.
///
/// ```
/// use advisory_common::sql::request_tag;
/// assert_eq!(request_tag(0x2a), "/* advisory-lock request 000000000000002a */ ");
/// ```
pub fn request_tag(tag: u64) -> String {
    format!("/* advisory-lock request {tag:016x} */ ")
}

/// Cancel the lock wait of the request tagged with [`request_tag`] (parameter: that prefix), from
/// another session: one row per backend signalled. A request that is not (yet, or any longer)
/// waiting for a lock is left alone.
pub const CANCEL_TAGGED_WAIT: &str = "SELECT pg_cancel_backend(pid) AS cancelled FROM pg_catalog.pg_stat_activity \
     WHERE pid <> pg_backend_pid() AND state = 'active' AND wait_event_type = 'Lock' AND starts_with(query, $1)";

/// Cancel the lock wait of one backend (parameter: its pid, `int4`), from another session: for a
/// client that stops waiting (`pg-advisory run` interrupted by a signal) and cannot send a protocol
/// cancel request. Only a backend that is waiting for a lock right now is signalled (one row, or
/// none), so a backend that has moved on is left alone.
pub const CANCEL_LOCK_WAIT: &str = "SELECT pg_cancel_backend(pid) AS cancelled FROM pg_catalog.pg_stat_activity \
     WHERE pid = $1::int4 AND state = 'active' AND wait_event_type = 'Lock'";

/// Releases every session-level advisory lock of the session. Returns no rows of interest.
pub const UNLOCK_ALL: &str = "SELECT pg_advisory_unlock_all()";

/// Ends the open transaction. Sent by an adapter that must end a transaction it cannot reach
/// through its driver's own API (diesel-async: queued behind a `transaction_with_xact_lock` whose
/// future was dropped mid-flight).
pub const ROLLBACK: &str = "ROLLBACK";

/// Sent after a [`savepoint_batch`] failed: undoes the attempt (and its `lock_timeout` change) and
/// leaves the caller's transaction usable, as if the attempt had never been made.
pub const SAVEPOINT_ROLLBACK: &str =
    "ROLLBACK TO SAVEPOINT advisory_lock_attempt; RELEASE SAVEPOINT advisory_lock_attempt";

/// A timed acquire for use **inside an open transaction**, as one simple-protocol round trip:
/// `SAVEPOINT; <timed lock>; RELEASE SAVEPOINT`. If it fails (timeout, deadlock, lock table full),
/// PostgreSQL skips the rest of the batch and the adapter sends [`SAVEPOINT_ROLLBACK`], so the
/// caller's transaction is not doomed. A lock taken inside a released savepoint belongs to the
/// enclosing transaction (transaction scope) or to the session (session scope).
///
/// Only integers are spliced (the key and the millisecond count).
///
/// ```
/// use advisory_common::{Key, sql::{savepoint_batch, Mode, Scope}};
/// let batch = savepoint_batch(Scope::Transaction, Mode::Exclusive, Key::BigInt(-5), 250);
/// assert!(batch.starts_with("SAVEPOINT advisory_lock_attempt; SELECT "));
/// assert!(batch.contains("pg_advisory_xact_lock(-5)"));
/// assert!(batch.contains("set_config('lock_timeout', '250', true)"));
/// assert!(batch.ends_with("; RELEASE SAVEPOINT advisory_lock_attempt"));
/// ```
pub fn savepoint_batch(scope: Scope, mode: Mode, key: Key, timeout_ms: i32) -> String {
    let mut s = String::with_capacity(360);
    s.push_str("SAVEPOINT advisory_lock_attempt; ");
    push_lock_literal(&mut s, scope, mode, key, Some(timeout_ms));
    s.push_str("; RELEASE SAVEPOINT advisory_lock_attempt");
    s
}

/// Append the lock statement with the key (and the milliseconds) as integer literals: the plain
/// `SELECT <function>(<key>)` or the timed form of the module docs.
fn push_lock_literal(s: &mut String, scope: Scope, mode: Mode, key: Key, timeout_ms: Option<i32>) {
    let f = function_name(scope, mode, Wait::Block);
    if timeout_ms.is_some() {
        s.push_str(
            "SELECT set_config('lock_timeout', s.old, true) IS NOT NULL AS locked FROM (SELECT s.old, ",
        );
    } else {
        s.push_str("SELECT ");
    }
    push_call(s, f, key);
    if let Some(ms) = timeout_ms {
        write!(
            s,
            " AS l FROM (SELECT s.old, set_config('lock_timeout', '{ms}', true) AS n FROM \
             (SELECT current_setting('lock_timeout') AS old OFFSET 0) s OFFSET 0) s OFFSET 0) s"
        )
        .expect("writing to a String cannot fail");
    }
}

/// Open a transaction that already holds a transaction-level lock on `key`, in **one
/// simple-protocol round trip**: the adapters' `begin_with_xact_lock` (sqlx) and
/// `transaction_with_xact_lock` (diesel) send this text as their "BEGIN" statement.
///
/// The lock comes **before** `BEGIN`: `SELECT pg_advisory_xact_lock(42); BEGIN`. A multi-statement
/// simple query runs as one implicit transaction block, and a `BEGIN` inside it turns that block
/// into a regular transaction that *retroactively includes* the statements before it
/// (PostgreSQL docs, "Multiple Statements in a Simple Query"), so on success the lock belongs to
/// the transaction the caller commits or rolls back. If the lock fails (timeout, deadlock, lock
/// table full), PostgreSQL skips the rest and rolls the implicit block back: the session is left
/// idle, outside any transaction, holding nothing, and its `lock_timeout` unchanged. With
/// `BEGIN` first, the same failure would leave an aborted transaction behind that the caller
/// (or a pool) would have to roll back.
///
/// With `timeout_ms` the lock is the timed statement of the module docs (`lock_timeout` set for
/// that statement only). Only integers are spliced (the key and the millisecond count).
///
/// ```
/// use advisory_common::{Key, sql::{lock_then_begin, Mode}};
/// assert_eq!(
///     lock_then_begin(Mode::Exclusive, Key::BigInt(-5), None),
///     "SELECT pg_advisory_xact_lock(-5); BEGIN"
/// );
/// assert_eq!(
///     lock_then_begin(Mode::Shared, Key::Pair(1, 2), None),
///     "SELECT pg_advisory_xact_lock_shared(1, 2); BEGIN"
/// );
/// let timed = lock_then_begin(Mode::Exclusive, Key::BigInt(7), Some(250));
/// assert!(timed.contains("pg_advisory_xact_lock(7)"));
/// assert!(timed.contains("set_config('lock_timeout', '250', true)"));
/// assert!(timed.ends_with(" OFFSET 0) s; BEGIN"));
/// ```
pub fn lock_then_begin(mode: Mode, key: Key, timeout_ms: Option<i32>) -> String {
    let mut s = String::with_capacity(if timeout_ms.is_some() { 320 } else { 64 });
    push_lock_literal(&mut s, Scope::Transaction, mode, key, timeout_ms);
    s.push_str("; BEGIN");
    s
}

/// Does this session hold `key` in `mode`? Parameters: the key. Returns one row, one `boolean`
/// column `held`. Asks `pg_locks`, so it notices a lock lost with its connection or released behind
/// the library's back.
pub fn held_sql(mode: Mode, space: KeySpace) -> &'static str {
    macro_rules! held {
        ($m:literal, $k:literal) => {
            concat!(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted AND mode = '",
                $m,
                "' AND ",
                $k,
                ") AS held"
            )
        };
    }
    match (mode, space) {
        (Mode::Exclusive, KeySpace::BigInt) => {
            held!(
                "ExclusiveLock",
                "objsubid = 1 AND ((classid::int8 << 32) | objid::int8) = $1"
            )
        }
        (Mode::Shared, KeySpace::BigInt) => {
            held!(
                "ShareLock",
                "objsubid = 1 AND ((classid::int8 << 32) | objid::int8) = $1"
            )
        }
        (Mode::Exclusive, KeySpace::Pair) => held!(
            "ExclusiveLock",
            "objsubid = 2 AND classid::int8 = ($1::int4::int8 & 4294967295) AND objid::int8 = ($2::int4::int8 & 4294967295)"
        ),
        (Mode::Shared, KeySpace::Pair) => held!(
            "ShareLock",
            "objsubid = 2 AND classid::int8 = ($1::int4::int8 & 4294967295) AND objid::int8 = ($2::int4::int8 & 4294967295)"
        ),
    }
}

/// The current `lock_timeout` setting, one row, one `text` column `lock_timeout` (used by tests and
/// diagnostics).
pub const SHOW_LOCK_TIMEOUT: &str = "SELECT current_setting('lock_timeout') AS lock_timeout";

/// The session's backend process id: one row, one `int4` column `pid`.
pub const BACKEND_PID: &str = "SELECT pg_backend_pid() AS pid";

/// Every advisory lock in the current database (held or awaited, by any session), with what
/// `pg_stat_activity` knows about its session; decode each row with
/// [`LockInfo::from_row`](crate::LockInfo::from_row). Columns, in order:
///
/// | column | type | |
/// |---|---|---|
/// | `classid`, `objid` | `int8` | the key as `pg_locks` stores it |
/// | `objsubid` | `int4` | 1 = bigint key, 2 = pair |
/// | `mode` | `text` | `ExclusiveLock` / `ShareLock` |
/// | `granted` | `bool` | held (`true`) or waited for |
/// | `pid` | `int4` | backend holding / waiting |
/// | `application_name`, `usename`, `state` | `text` (nullable) | from `pg_stat_activity` |
/// | `wait_seconds` | `float8` (nullable) | how long it has been waiting (`pg_locks.waitstart`) |
/// | `xact_seconds` | `float8` (nullable) | age of the session's open transaction |
/// | `query` | `text` (nullable) | the session's current or last query |
pub const LOCKS_SQL: &str = "SELECT l.classid::int8 AS classid, l.objid::int8 AS objid, l.objsubid::int4 AS objsubid, \
     l.mode AS mode, l.granted AS granted, l.pid AS pid, a.application_name AS application_name, \
     a.usename::text AS usename, a.state AS state, \
     extract(epoch FROM clock_timestamp() - l.waitstart)::float8 AS wait_seconds, \
     extract(epoch FROM clock_timestamp() - a.xact_start)::float8 AS xact_seconds, a.query AS query \
     FROM pg_catalog.pg_locks l LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid \
     WHERE l.locktype = 'advisory' AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()) \
     ORDER BY l.granted DESC, l.pid, l.classid, l.objid, l.objsubid";

/// [`LOCKS_SQL`]'s twelve columns (same text, same order: decode them with
/// [`LockInfo::from_row`](crate::LockInfo::from_row)) followed by what a person looking for a stuck
/// lock also wants, for the `pg-advisory list` command. Ordered by key, holders first, then
/// waiters in the order they started waiting. No parameters. Extra columns, in order:
///
/// | column | type | |
/// |---|---|---|
/// | `client_addr` | `text` (nullable) | `host(pg_stat_activity.client_addr)`; NULL for a Unix socket |
/// | `session_seconds` | `float8` (nullable) | age of the session (`backend_start`): an upper bound on how long it has held a session lock |
/// | `blocked_by` | `int4[]` | `pg_blocking_pids(pid)` for a waiting row, empty for a granted one |
pub const LOCKS_DETAIL_SQL: &str = "SELECT l.classid::int8 AS classid, l.objid::int8 AS objid, l.objsubid::int4 AS objsubid, \
     l.mode AS mode, l.granted AS granted, l.pid AS pid, a.application_name AS application_name, \
     a.usename::text AS usename, a.state AS state, \
     extract(epoch FROM clock_timestamp() - l.waitstart)::float8 AS wait_seconds, \
     extract(epoch FROM clock_timestamp() - a.xact_start)::float8 AS xact_seconds, a.query AS query, \
     host(a.client_addr) AS client_addr, \
     extract(epoch FROM clock_timestamp() - a.backend_start)::float8 AS session_seconds, \
     CASE WHEN l.granted THEN '{}'::int4[] ELSE pg_catalog.pg_blocking_pids(l.pid) END AS blocked_by \
     FROM pg_catalog.pg_locks l LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid \
     WHERE l.locktype = 'advisory' AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()) \
     ORDER BY l.classid, l.objid, l.objsubid, l.granted DESC, l.waitstart NULLS FIRST, l.pid";

/// Every statement text this module can produce with its expected number of bound parameters,
/// for tests that execute them all.
pub fn all_statements() -> Vec<(String, usize)> {
    let mut out = Vec::new();
    for scope in SCOPES {
        for mode in MODES {
            for wait in WAITS {
                for space in SPACES {
                    let keys = match space {
                        KeySpace::BigInt => 1,
                        KeySpace::Pair => 2,
                    };
                    let extra = usize::from(wait == Wait::Timeout);
                    out.push((lock_sql(scope, mode, wait, space).to_owned(), keys + extra));
                }
            }
        }
    }
    for mode in MODES {
        for space in SPACES {
            let keys = match space {
                KeySpace::BigInt => 1,
                KeySpace::Pair => 2,
            };
            out.push((unlock_sql(mode, space).to_owned(), keys));
            out.push((held_sql(mode, space).to_owned(), keys));
        }
    }
    for s in [
        UNLOCK_ALL,
        SHOW_LOCK_TIMEOUT,
        BACKEND_PID,
        LOCKS_SQL,
        LOCKS_DETAIL_SQL,
    ] {
        out.push((s.to_owned(), 0));
    }
    out
}

/// A session-scope acquire as a self-contained simple-protocol statement, with the key (and the
/// milliseconds of a timed wait) written as integers: [`lock_sql`] for [`Scope::Session`] with its
/// parameters filled in. For an adapter that must know the acquire is on its way to the server the
/// moment it hands it to the driver, which a simple query guarantees and a statement that may still
/// have to be prepared does not (diesel-async: a borrowed acquire while another guard of the
/// process holds the key in that mode). `timeout_ms` is used for [`Wait::Timeout`] only. Only
/// integers are spliced.
///
/// ```
/// use advisory_common::{Key, sql::{session_lock_literal, Mode, Wait}};
/// assert_eq!(
///     session_lock_literal(Mode::Exclusive, Wait::Block, Key::BigInt(-5), None),
///     "SELECT pg_advisory_lock(-5)"
/// );
/// assert_eq!(
///     session_lock_literal(Mode::Shared, Wait::Try, Key::Pair(1, 2), None),
///     "SELECT pg_try_advisory_lock_shared(1, 2)"
/// );
/// let timed = session_lock_literal(Mode::Exclusive, Wait::Timeout, Key::BigInt(7), Some(250));
/// assert!(timed.contains("pg_advisory_lock(7)"));
/// assert!(timed.contains("set_config('lock_timeout', '250', true)"));
/// ```
pub fn session_lock_literal(mode: Mode, wait: Wait, key: Key, timeout_ms: Option<i32>) -> String {
    let mut s = String::with_capacity(if timeout_ms.is_some() { 320 } else { 48 });
    match (wait, timeout_ms) {
        (Wait::Try, _) => {
            s.push_str("SELECT ");
            push_call(&mut s, function_name(Scope::Session, mode, Wait::Try), key);
        }
        (Wait::Timeout, Some(ms)) => push_lock_literal(&mut s, Scope::Session, mode, key, Some(ms)),
        (Wait::Block | Wait::Timeout, _) => {
            push_lock_literal(&mut s, Scope::Session, mode, key, None)
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn params(sql: &str) -> usize {
        (1..=9)
            .take_while(|i| sql.contains(&format!("${i}")))
            .count()
    }

    #[test]
    fn every_combination_is_distinct_and_well_formed() {
        let mut seen = HashSet::new();
        for scope in SCOPES {
            for mode in MODES {
                for wait in WAITS {
                    for space in SPACES {
                        let sql = lock_sql(scope, mode, wait, space);
                        assert!(seen.insert(sql), "duplicate statement {sql}");
                        let f = function_name(scope, mode, wait);
                        assert!(sql.contains(&format!("{f}(")), "{sql} lacks {f}");
                        // the function name is exact, not a prefix of a longer one
                        let after = &sql[sql.find(&format!("{f}(")).unwrap() + f.len()..];
                        assert!(after.starts_with('('));
                        let keys = if space == KeySpace::Pair { 2 } else { 1 };
                        let expect = keys + usize::from(wait == Wait::Timeout);
                        assert_eq!(params(sql), expect, "{sql}");
                        assert!(!sql.contains(&format!("${}", expect + 1)));
                        assert!(sql.contains("AS locked"), "{sql}");
                        assert_eq!(sql.matches('(').count(), sql.matches(')').count(), "{sql}");
                        assert_eq!(sql.contains("xact"), scope == Scope::Transaction, "{sql}");
                        assert_eq!(sql.contains("shared"), mode == Mode::Shared, "{sql}");
                        assert_eq!(sql.contains("try"), wait == Wait::Try, "{sql}");
                        assert_eq!(sql.contains("lock_timeout"), wait == Wait::Timeout, "{sql}");
                    }
                }
            }
        }
        assert_eq!(seen.len(), 2 * 2 * 3 * 2);
    }

    #[test]
    fn unlock_statements() {
        let all: HashSet<_> = MODES
            .iter()
            .flat_map(|m| SPACES.iter().map(move |s| unlock_sql(*m, *s)))
            .collect();
        assert_eq!(all.len(), 4);
        assert_eq!(
            unlock_sql(Mode::Exclusive, KeySpace::Pair),
            "SELECT pg_advisory_unlock($1, $2) AS unlocked"
        );
        assert_eq!(
            unlock_literal(Mode::Exclusive, Key::BigInt(i64::MIN)),
            format!("SELECT pg_advisory_unlock({})", i64::MIN)
        );
    }

    #[test]
    fn savepoint_batch_shape() {
        for scope in SCOPES {
            for mode in MODES {
                let b = savepoint_batch(scope, mode, Key::Pair(3, 4), 7);
                assert_eq!(b.matches(';').count(), 2);
                assert!(b.contains(&format!(
                    "{}(3, 4)",
                    function_name(scope, mode, Wait::Block)
                )));
                assert_eq!(b.matches('(').count(), b.matches(')').count());
            }
        }
    }

    /// The literal texts are the prepared statements with the integers written in: same
    /// functions, same timeout fences.
    #[test]
    fn literals_match_the_prepared_statements() {
        for mode in MODES {
            let timed = lock_sql(Scope::Transaction, mode, Wait::Timeout, KeySpace::BigInt)
                .replace("$1", "-9")
                .replace("($2::int4)::text", "'250'");
            assert_eq!(
                lock_then_begin(mode, Key::BigInt(-9), Some(250)),
                format!("{timed}; BEGIN")
            );
            let f = function_name(Scope::Transaction, mode, Wait::Block);
            assert_eq!(
                lock_then_begin(mode, Key::Pair(-1, 2), None),
                format!("SELECT {f}(-1, 2); BEGIN")
            );
            for scope in SCOPES {
                let timed = lock_sql(scope, mode, Wait::Timeout, KeySpace::Pair)
                    .replace("$1", "3")
                    .replace("$2", "4")
                    .replace("($3::int4)::text", "'7'");
                assert_eq!(
                    savepoint_batch(scope, mode, Key::Pair(3, 4), 7),
                    format!(
                        "SAVEPOINT advisory_lock_attempt; {timed}; RELEASE SAVEPOINT advisory_lock_attempt"
                    )
                );
            }
        }
    }

    /// `LOCKS_DETAIL_SQL` starts with exactly `LOCKS_SQL`'s columns (so `LockInfo::from_row`
    /// decodes its first twelve), reads the same rows, and binds nothing.
    #[test]
    fn locks_detail_extends_locks() {
        let cols = |s: &'static str| &s[..s.find(" FROM pg_catalog.pg_locks").unwrap()];
        let from = |s: &'static str| {
            let f = &s[s.find(" FROM pg_catalog.pg_locks").unwrap()..];
            &f[..f.find(" ORDER BY").unwrap()]
        };
        let base = cols(LOCKS_SQL);
        let detail = cols(LOCKS_DETAIL_SQL);
        assert!(detail.starts_with(&format!("{base}, ")), "{detail}");
        assert_eq!(from(LOCKS_SQL), from(LOCKS_DETAIL_SQL));
        assert_eq!(
            detail.matches(" AS ").count(),
            base.matches(" AS ").count() + 3
        );
        for c in [
            "client_addr",
            "session_seconds",
            "blocked_by",
            "pg_blocking_pids(l.pid)",
        ] {
            assert!(detail.contains(c), "{c}");
        }
        assert_eq!(params(LOCKS_DETAIL_SQL), 0);
        assert!(all_statements().contains(&(LOCKS_DETAIL_SQL.to_owned(), 0)));
    }

    #[test]
    fn cancel_lock_wait_targets_one_waiting_backend() {
        assert_eq!(params(CANCEL_LOCK_WAIT), 1);
        for c in [
            "pid = $1::int4",
            "wait_event_type = 'Lock'",
            "state = 'active'",
        ] {
            assert!(CANCEL_LOCK_WAIT.contains(c), "{c}");
        }
    }
}
