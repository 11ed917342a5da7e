//! The statements sent as simple-protocol text, with the key (and the milliseconds of a timed
//! wait) written as integer literals: the few paths that cannot bind parameters (a guard's `Drop`
//! queueing an unlock, the savepoint batch of a timed attempt inside a transaction, the
//! lock-then-`BEGIN` batch). Only integers produced by this crate are ever spliced, never caller
//! text; [`push_call`] is the one place a key is.

use std::fmt::Write as _;

use super::{Mode, Scope, Wait, function_name};
use crate::key::Key;
use crate::label::KeyValue;

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

/// A session-scope acquire as a self-contained simple-protocol statement, with the key (and the
/// milliseconds of a timed wait) written as integers: [`lock_sql`](super::lock_sql) for [`Scope::Session`] with its
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
