//! The one-statement conversations: release, `is_held`, and lock-then-`BEGIN`.

use super::outcome::Answer;
use super::request::Request;
use super::statement::{Prepared, StatementKind};
use crate::key::Key;
use crate::mode::LockMode;
use crate::sql;

/// The release of one session-level hold: the prepared [`sql::unlock_sql`]; read its answer with
/// [`released`].
pub fn release_statement(key: Key, mode: LockMode) -> Prepared {
    Prepared {
        kind: StatementKind::Unlock(mode),
        key,
        ms: None,
    }
}

/// What a release's answer means: `Ok(true)` released, `Ok(false)` the server says the session
/// did not hold it (the adapters' `NotHeld`), `Err` the driver's error.
pub fn released<E>(answer: Answer<E>) -> Result<bool, E> {
    match answer {
        Answer::Row(unlocked) => Ok(unlocked),
        Answer::Done => Ok(true),
        Answer::Failed(e, _) => Err(e),
    }
}

/// What a [`held_statement`]'s answer means: `Ok(true)` the session holds it, `Err` the driver's
/// error.
pub fn held<E>(answer: Answer<E>) -> Result<bool, E> {
    match answer {
        Answer::Row(held) => Ok(held),
        Answer::Done => Ok(false),
        Answer::Failed(e, _) => Err(e),
    }
}

/// Does this session hold `key` in `mode` (`pg_locks`)? The prepared [`sql::held_sql`], answered
/// with one row.
pub fn held_statement(key: Key, mode: LockMode) -> Prepared {
    Prepared {
        kind: StatementKind::Held(mode),
        key,
        ms: None,
    }
}

/// The statement that opens a transaction already holding the transaction-level lock of `req`, in
/// one simple-protocol round trip ([`sql::lock_then_begin`]; check the connection first with
/// [`begin_allowed`](super::request::begin_allowed)). The driver sends it as its `BEGIN`.
/// Succeeded, the transaction is open and holds the lock; failed (timeout, deadlock, ...),
/// PostgreSQL rolled the implicit transaction back: the connection is idle, outside any
/// transaction, holding nothing, its `lock_timeout` unchanged, so it is fit for use as it is.
pub fn begin_statement(req: &Request) -> String {
    sql::lock_then_begin(req.mode(), req.key(), req.millis())
}
