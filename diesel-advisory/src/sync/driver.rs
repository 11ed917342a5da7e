//! The I/O of the sync half: how a statement of the protocol (`advisory_common::protocol`) reaches
//! the server through diesel's `PgConnection` and its reply comes back, and what diesel's own
//! transaction bookkeeping says about the connection.

use advisory_common::protocol::{Acquire, After, Answer, Finish, Request, Statement, Step};
use advisory_common::sql::{Mode, Scope};
use advisory_common::{Key, LockInfo};
use diesel::connection::{AnsiTransactionManager, SimpleConnection, TransactionManager};
use diesel::result::Error as DieselError;
use diesel::{PgConnection, RunQueryDsl};

use crate::error::{Error, Failed, kind_of};
use crate::stmt::{BoolStmt, LocksRow, decode_locks, held_stmt, locks_stmt, unlock_stmt};

/// diesel's own bookkeeping: is a transaction (or savepoint) open? No round trip.
pub(crate) fn transaction_depth(conn: &mut PgConnection) -> Result<u32, Error> {
    AnsiTransactionManager::transaction_manager_status_mut(conn)
        .transaction_depth()
        .map(|d| d.map_or(0, |d| d.get()))
        .map_err(Error::Database)
}

/// Session locks are taken outside transactions only: inside one, a guard could not release its
/// lock once the transaction is aborted ([`Error::AlreadyInTransaction`], nothing sent).
pub(crate) fn session_allowed(conn: &mut PgConnection, key: Key) -> Result<(), Error> {
    if transaction_depth(conn)? > 0 {
        return Err(Error::AlreadyInTransaction { key });
    }
    Ok(())
}

/// Run one acquire (see [`Acquire`] for the conversation: the grant-at-timeout check after a
/// session-scope timeout and the savepoint of a timed transaction-scope attempt are decided
/// there); `Ok(true)` when granted. A failed post-timeout check is reported in
/// [`Failed::maybe_held`].
pub(crate) fn lock(conn: &mut PgConnection, scope: Scope, req: &Request) -> Result<bool, Failed> {
    let mut acquire = match scope {
        Scope::Session => Acquire::session(*req),
        Scope::Transaction => Acquire::xact(*req),
    };
    let first = acquire.start();
    let finish = drive(conn, &mut acquire, first);
    if finish.kept_at_timeout {
        tracing::debug!(key = %req.key(), "lock_timeout fired as the lock was granted; keeping it");
    }
    if finish.after == After::TransactionAborted {
        tracing::warn!(key = %req.key(), "could not roll back the lock attempt's savepoint; the transaction stays aborted");
    }
    let locked = Failed::outcome(finish, req)?;
    tracing::debug!(key = %req.key(), mode = req.mode().as_str(), ?scope, locked, "advisory lock");
    Ok(locked)
}

/// Send one statement of the protocol and reduce the reply to an [`Answer`].
fn send(conn: &mut PgConnection, statement: Statement) -> Answer<DieselError> {
    let result = match statement {
        Statement::Prepared(p) => BoolStmt::from(p).get(conn).map(Answer::Row),
        Statement::Simple(text) => conn.batch_execute(&text).map(|()| Answer::Done),
    };
    result.unwrap_or_else(|e| {
        let kind = kind_of(&e);
        Answer::Failed(e, kind)
    })
}

/// Run an acquire's conversation from its `first` statement to the end.
fn drive(
    conn: &mut PgConnection,
    acquire: &mut Acquire<DieselError>,
    first: Statement,
) -> Finish<DieselError> {
    let mut next = first;
    loop {
        match acquire.answer(send(conn, next)) {
            Step::Send(statement) => next = statement,
            Step::Finish(finish) => return finish,
        }
    }
}

/// Release one session-level hold: `Ok(false)` if the server says it was not held.
pub(crate) fn unlock(conn: &mut PgConnection, key: Key, mode: Mode) -> Result<bool, Error> {
    let unlocked = unlock_stmt(key, mode)
        .get(conn)
        .map_err(|e| crate::error::classify(e, key, None))?;
    tracing::debug!(key = %key, mode = mode.as_str(), unlocked, "advisory unlock");
    Ok(unlocked)
}

/// Does this session hold `key` in `mode`, according to `pg_locks`?
pub(crate) fn held(conn: &mut PgConnection, key: Key, mode: Mode) -> Result<bool, Error> {
    held_stmt(key, mode)
        .get(conn)
        .map_err(|e| crate::error::classify(e, key, None))
}

pub(crate) fn locks(conn: &mut PgConnection) -> Result<Vec<LockInfo>, Error> {
    Ok(decode_locks(locks_stmt().load::<LocksRow>(conn)?))
}

/// Make diesel (and every pool) treat this connection as broken: its transaction manager goes
/// `InError`, so r2d2 discards it at check-in and `transaction()` fails with
/// `BrokenTransactionManager` instead of running on a session in an unknown lock state.
pub(crate) fn mark_broken(conn: &mut PgConnection) {
    AnsiTransactionManager::transaction_manager_status_mut(conn).set_in_error();
}
