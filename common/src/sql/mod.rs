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

use crate::key::KeySpace;

mod literal;
#[cfg(test)]
mod tests;

pub use literal::{
    SAVEPOINT_ROLLBACK, lock_then_begin, request_tag, savepoint_batch, session_lock_literal,
    unlock_if_held_literal, unlock_literal,
};

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
pub use crate::mode::LockMode as Mode;

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
