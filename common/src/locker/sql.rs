//! The lock service's statements. Keys travel as bound array parameters (see [`encode`]), never
//! spliced into the text.

use crate::key::{Key, KeySpace};
use crate::label::KeyValue;
use crate::sql::Mode;

use super::Op;

macro_rules! unnest {
    () => {
        "FROM unnest($1::int2[], $2::int8[], $3::int4[], $4::int4[]) WITH ORDINALITY AS t(op, k, a, b, i)"
    };
}

/// One round trip for a whole batch: try-lock or unlock every op, each key once. Parameters: the
/// four arrays of [`encode`]. Returns one row, one `bigint[]` column `refused`: the 1-based
/// positions of the ops whose function returned `false` (`pg_try_advisory_lock*`: not granted;
/// `pg_advisory_unlock*`: was not held), in any order; every other op returned `true`. Read it
/// with [`results`].
///
/// `CASE` evaluates only the branch of each op and the `WHERE` clause runs once per row, so every
/// key gets exactly one function call. Answering with the exceptions (usually none) instead of one
/// boolean per op in op order saves the server a sort and the client the decoding (about 25 %
/// of the statement's time for 1,000 keys here; [`BATCH_BIGINT`] saves more).
pub const BATCH: &str = concat!(
    "SELECT coalesce(array_agg(t.i), '{}') AS refused ",
    unnest!(),
    " WHERE NOT CASE t.op ",
    "WHEN 1 THEN pg_try_advisory_lock(t.k) ",
    "WHEN 3 THEN pg_try_advisory_lock_shared(t.k) ",
    "WHEN 5 THEN pg_try_advisory_lock(t.a, t.b) ",
    "WHEN 7 THEN pg_try_advisory_lock_shared(t.a, t.b) ",
    "WHEN 0 THEN pg_advisory_unlock(t.k) ",
    "WHEN 2 THEN pg_advisory_unlock_shared(t.k) ",
    "WHEN 4 THEN pg_advisory_unlock(t.a, t.b) ",
    "WHEN 6 THEN pg_advisory_unlock_shared(t.a, t.b) ",
    "END"
);

/// [`BATCH`] for a batch whose keys are all in the `bigint` space (see [`is_bigint`]): two
/// parameters, the op codes and the keys of [`encode`] (`$1`, `$2`); the same answer. About 40 %
/// cheaper than [`BATCH`] on the server for 1,000 keys.
pub const BATCH_BIGINT: &str = concat!(
    "SELECT coalesce(array_agg(t.i), '{}') AS refused ",
    "FROM unnest($1::int2[], $2::int8[]) WITH ORDINALITY AS t(op, k, i) ",
    "WHERE NOT CASE t.op ",
    "WHEN 1 THEN pg_try_advisory_lock(t.k) ",
    "WHEN 3 THEN pg_try_advisory_lock_shared(t.k) ",
    "WHEN 0 THEN pg_advisory_unlock(t.k) ",
    "WHEN 2 THEN pg_advisory_unlock_shared(t.k) ",
    "END"
);

/// `true` when every op's key is in the `bigint` space: [`BATCH_BIGINT`] serves the batch.
pub fn is_bigint(ops: &[Op]) -> bool {
    ops.iter().all(|op| op.key.space() == KeySpace::BigInt)
}

/// The per-op results of a [`BATCH`] / [`BATCH_BIGINT`] answer (`refused`: 1-based positions of
/// the ops that returned `false`) for a batch of `n` ops; `None` if a position is out of range
/// (the answer cannot be trusted).
///
/// ```
/// use advisory_common::locker::sql::results;
/// assert_eq!(results(3, &[2]), Some(vec![true, false, true]));
/// assert_eq!(results(2, &[]), Some(vec![true, true]));
/// assert_eq!(results(2, &[3]), None);
/// ```
pub fn results(n: usize, refused: &[i64]) -> Option<Vec<bool>> {
    let mut out = vec![true; n];
    for &i in refused {
        let i = usize::try_from(i).ok()?.checked_sub(1)?;
        *out.get_mut(i)? = false;
    }
    Some(out)
}

/// After a failed [`BATCH`] (e.g. lock table full): does the session hold each op's key in its
/// mode now? Same parameters; one row, one `boolean[]` column `held`, in op order.
pub const BATCH_HELD: &str = concat!(
    "WITH mine AS (SELECT classid::int8 AS c, objid::int8 AS o, objsubid::int4 AS s, mode ",
    "FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted) ",
    "SELECT coalesce(array_agg(m.c IS NOT NULL ORDER BY t.i), '{}') AS held ",
    unnest!(),
    " LEFT JOIN mine m ON m.mode = CASE WHEN t.op & 2 = 2 THEN 'ShareLock' ELSE 'ExclusiveLock' END ",
    "AND m.s = CASE WHEN t.op & 4 = 4 THEN 2 ELSE 1 END ",
    "AND m.c = CASE WHEN t.op & 4 = 4 THEN t.a::int8 & 4294967295 ELSE (t.k >> 32) & 4294967295 END ",
    "AND m.o = CASE WHEN t.op & 4 = 4 THEN t.b::int8 & 4294967295 ELSE t.k & 4294967295 END"
);

/// Set the session's `idle_session_timeout` (PostgreSQL 14+) to `$1` milliseconds (`int4`), so the
/// server ends the session if this process stops talking to it (see
/// [`super::server_idle_timeout_ms`]). One row, one `text` column `idle_session_timeout`.
pub const SET_IDLE_SESSION_TIMEOUT: &str =
    "SELECT set_config('idle_session_timeout', $1::int4::text, false) AS idle_session_timeout";

/// The session's keepalive: one row, one `int4` column `alive`.
pub const KEEPALIVE: &str = "SELECT 1 AS alive";

/// Cancel a waiter connection's wait: `$1` is its backend pid (`int4`). One row, one `boolean`
/// column `cancelled`.
pub const CANCEL_WAIT: &str = "SELECT pg_cancel_backend($1) AS cancelled";

/// The waiter's statement: block until `key` can be taken in `mode`, then let it go at once
/// (the session takes it in its next batch). Parameters: the key (`$1` or `$1, $2`). One row, one
/// `boolean` column `free`. The `OFFSET 0` fence makes the lock run before the unlock.
pub fn wait_free_sql(mode: Mode, space: KeySpace) -> &'static str {
    match (mode, space) {
        (Mode::Exclusive, KeySpace::BigInt) => {
            "SELECT pg_advisory_unlock($1) AS free FROM (SELECT pg_advisory_lock($1) AS l OFFSET 0) s"
        }
        (Mode::Shared, KeySpace::BigInt) => {
            "SELECT pg_advisory_unlock_shared($1) AS free FROM (SELECT pg_advisory_lock_shared($1) AS l OFFSET 0) s"
        }
        (Mode::Exclusive, KeySpace::Pair) => {
            "SELECT pg_advisory_unlock($1, $2) AS free FROM (SELECT pg_advisory_lock($1, $2) AS l OFFSET 0) s"
        }
        (Mode::Shared, KeySpace::Pair) => {
            "SELECT pg_advisory_unlock_shared($1, $2) AS free FROM (SELECT pg_advisory_lock_shared($1, $2) AS l OFFSET 0) s"
        }
    }
}

/// The four bound arrays for [`BATCH`] / [`BATCH_HELD`]: op codes (`int2`: bit 0 acquire, bit 1
/// shared, bit 2 pair key), `bigint` keys, pair keys' two halves (unused slots are 0).
#[allow(clippy::type_complexity)]
pub fn encode(ops: &[Op]) -> (Vec<i16>, Vec<i64>, Vec<i32>, Vec<i32>) {
    let mut code = Vec::with_capacity(ops.len());
    let mut k = Vec::with_capacity(ops.len());
    let mut a = Vec::with_capacity(ops.len());
    let mut b = Vec::with_capacity(ops.len());
    for op in ops {
        let mut c = i16::from(op.acquire);
        if op.mode == Mode::Shared {
            c |= 2;
        }
        match op.key.value() {
            KeyValue::BigInt(v) => {
                k.push(v);
                a.push(0);
                b.push(0);
            }
            KeyValue::Pair(x, y) => {
                c |= 4;
                k.push(0);
                a.push(x);
                b.push(y);
            }
        }
        code.push(c);
    }
    (code, k, a, b)
}

/// The key's parameters for [`wait_free_sql`]: `(Some(bigint), None)` or `(None, Some((a, b)))`.
pub fn key_params(key: Key) -> (Option<i64>, Option<(i32, i32)>) {
    match key.value() {
        KeyValue::BigInt(v) => (Some(v), None),
        KeyValue::Pair(x, y) => (None, Some((x, y))),
    }
}
