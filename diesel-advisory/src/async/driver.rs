//! The statements of the diesel-async paths, and what diesel-async's bookkeeping says about the
//! connection they run on.

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use advisory_common::protocol::{Acquire, After, Answer, Request, Statement, Step};
use advisory_common::sql::{self, Mode, Scope};
use advisory_common::{Key, LockInfo};
use diesel::result::Error as DieselError;
use diesel_async::{
    AnsiTransactionManager, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection,
    TransactionManager,
};

use crate::error::{Error, Failed, kind_of};
use crate::stmt::{BoolStmt, LocksRow, decode_locks, held_stmt, locks_stmt, unlock_stmt};

/// diesel-async's own bookkeeping: how deep is the open transaction? No round trip.
pub(crate) fn transaction_depth(conn: &mut AsyncPgConnection) -> Result<u32, Error> {
    AnsiTransactionManager::transaction_manager_status_mut(conn)
        .transaction_depth()
        .map(|d| d.map_or(0, |d| d.get()))
        .map_err(Error::Database)
}

/// Session locks are taken outside transactions only ([`Error::AlreadyInTransaction`], nothing
/// sent): inside one, a guard could not release its lock once the transaction is aborted. A
/// connection whose `BEGIN` / `COMMIT` / `ROLLBACK` was cancelled mid-flight (diesel-async cannot
/// tell whether a transaction is open) is refused too.
pub(crate) fn session_allowed(conn: &mut AsyncPgConnection, key: Key) -> Result<(), Error> {
    if transaction_depth(conn)? > 0 {
        return Err(Error::AlreadyInTransaction { key });
    }
    if AnsiTransactionManager::is_broken_transaction_manager(conn) {
        return Err(Error::Database(DieselError::BrokenTransactionManager));
    }
    Ok(())
}

/// Might the server be inside a transaction block (possibly an aborted one) right now, as far as
/// diesel-async knows: a transaction open, a transaction statement cancelled mid-flight, or its
/// bookkeeping already broken. A drop-time unlock queued there may fail unseen.
pub(crate) fn transaction_unsettled(conn: &mut AsyncPgConnection) -> bool {
    !matches!(transaction_depth(conn), Ok(0))
        || AnsiTransactionManager::is_broken_transaction_manager(conn)
}

/// Run one acquire as a prepared statement (a timed transaction-scope one as the savepoint
/// batch); `Ok(true)` when granted. The conversation is [`Acquire`]'s, as in
/// `crate::sync::driver::lock`; [`Failed::maybe_held`] reports a post-timeout check that failed.
pub(crate) async fn lock(
    conn: &mut AsyncPgConnection,
    scope: Scope,
    req: &Request,
) -> Result<bool, Failed> {
    let acquire = match scope {
        Scope::Session => Acquire::session(*req),
        Scope::Transaction => Acquire::xact(*req),
    };
    run(conn, acquire, || {}).await
}

/// Run an acquire's conversation to its end; `sent` is called once the acquire is on its way (see
/// [`send`]).
pub(crate) async fn run(
    conn: &mut AsyncPgConnection,
    mut acquire: Acquire<DieselError>,
    sent: impl FnOnce(),
) -> Result<bool, Failed> {
    let req = *acquire.request();
    let mut answer = send(conn, acquire.start(), sent).await;
    let finish = loop {
        match acquire.answer(answer) {
            Step::Send(statement) => answer = send(conn, statement, || {}).await,
            Step::Finish(finish) => break finish,
        }
    };
    if finish.kept_at_timeout {
        tracing::debug!(key = %req.key(), "lock_timeout fired as the lock was granted; keeping it");
    }
    if finish.after == After::TransactionAborted {
        tracing::warn!(key = %req.key(), "could not roll back the lock attempt's savepoint; the transaction stays aborted");
    }
    let locked = Failed::outcome(finish, &req)?;
    tracing::debug!(key = %req.key(), mode = req.mode().as_str(), scope = ?acquire.scope(), form = ?acquire.form(), locked, "advisory lock");
    Ok(locked)
}

/// Send one statement of the protocol and reduce the reply to an [`Answer`]. `sent` is called
/// once the statement is on its way: a simple-protocol text after its first poll (see
/// [`batch_then`]), a prepared statement before it is sent.
async fn send(
    conn: &mut AsyncPgConnection,
    statement: Statement,
    sent: impl FnOnce(),
) -> Answer<DieselError> {
    let result = match statement {
        Statement::Prepared(p) => {
            sent();
            BoolStmt::from(p).get_async(conn).await.map(Answer::Row)
        }
        Statement::Simple(text) => batch_then(conn, &text, sent).await.map(|()| Answer::Done),
    };
    result.unwrap_or_else(|e| {
        let kind = kind_of(&e);
        Answer::Failed(e, kind)
    })
}

/// Release one session-level hold: `Ok(false)` if the server says it was not held.
pub(crate) async fn unlock(
    conn: &mut AsyncPgConnection,
    key: Key,
    mode: Mode,
) -> Result<bool, Error> {
    let unlocked = unlock_stmt(key, mode)
        .get_async(conn)
        .await
        .map_err(|e| crate::error::classify(e, key, None))?;
    tracing::debug!(key = %key, mode = mode.as_str(), unlocked, "advisory unlock");
    Ok(unlocked)
}

pub(crate) async fn held(
    conn: &mut AsyncPgConnection,
    key: Key,
    mode: Mode,
) -> Result<bool, Error> {
    held_stmt(key, mode)
        .get_async(conn)
        .await
        .map_err(|e| crate::error::classify(e, key, None))
}

pub(crate) async fn locks(conn: &mut AsyncPgConnection) -> Result<Vec<LockInfo>, Error> {
    Ok(decode_locks(locks_stmt().load::<LocksRow>(conn).await?))
}

/// Mark the connection broken for diesel-async and its pools (`is_broken()` → bb8's
/// `has_broken`, deadpool's `recycle`), and make `transaction()` fail with
/// `BrokenTransactionManager`.
pub(crate) fn mark_broken(conn: &mut AsyncPgConnection) {
    AnsiTransactionManager::transaction_manager_status_mut(conn).set_in_error();
}

/// Hand a simple-protocol statement to the connection without waiting for its answer.
///
/// The first poll of diesel-async's `batch_execute` runs tokio-postgres's
/// `simple_query::batch_execute` up to `InnerClient::send`, an `unbounded_send` into the channel
/// of the connection's background task; nothing before it awaits (no lock, no tokio budget
/// check). Dropping the future then only drops the response receiver: the background task still
/// writes the request, and discards the answer (`Connection::poll_read` keeps paging through
/// responses whose receiver hung up). So the statement runs, in order after everything sent
/// before it, as long as the connection lives, and never answers anybody else's statement.
pub(crate) fn queue(conn: &AsyncPgConnection, sql: &str) {
    let mut shared = conn;
    let fut = pin!(SimpleAsyncConnection::batch_execute(&mut shared, sql));
    match fut.poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(Err(e)) => {
            tracing::warn!(error = %e, sql, "could not queue statement; the connection is closed (its session and locks are gone)");
        }
        Poll::Ready(Ok(())) | Poll::Pending => {}
    }
}

/// Run a simple-protocol statement and call `sent` right after its first poll, which (see
/// [`queue`]) has handed the whole statement to the connection: from then on it runs even if this
/// future is dropped.
pub(crate) async fn batch_then(
    conn: &mut AsyncPgConnection,
    sql: &str,
    sent: impl FnOnce(),
) -> Result<(), DieselError> {
    let mut fut = pin!(conn.batch_execute(sql));
    let first = poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
    sent();
    match first {
        Poll::Ready(result) => result,
        Poll::Pending => fut.await,
    }
}

/// The undo of a borrowed-connection acquire or release cut short (see the trait's
/// `# Cancel safety`): dropped while it still has the connection, it queues the unlock of
/// `(key, mode)` if `armed` (the acquire may have been sent, the release's unlock has not been),
/// and marks the connection broken if diesel-async reports a transaction open or interrupted
/// there (the unlock, queued or in flight, may then fail unseen). Whoever finishes normally takes
/// `conn` out first.
pub(crate) struct QueueUnlockOnDrop<'c> {
    pub(crate) conn: Option<&'c mut AsyncPgConnection>,
    pub(crate) key: Key,
    pub(crate) mode: Mode,
    pub(crate) armed: bool,
}

impl<'c> QueueUnlockOnDrop<'c> {
    pub(crate) fn new(conn: &'c mut AsyncPgConnection, key: Key, mode: Mode, armed: bool) -> Self {
        QueueUnlockOnDrop {
            conn: Some(conn),
            key,
            mode,
            armed,
        }
    }

    pub(crate) fn conn(&mut self) -> &mut AsyncPgConnection {
        self.conn.as_deref_mut().expect("present until dropped")
    }

    /// The outcome is known and nothing is left to undo.
    pub(crate) fn finish(&mut self) {
        self.conn = None;
    }
}

impl Drop for QueueUnlockOnDrop<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        if self.armed {
            tracing::warn!(key = %self.key, "advisory lock call on a borrowed connection cancelled (or of unknown outcome); queueing the matching unlock");
            queue(conn, &sql::unlock_literal(self.mode, self.key));
        }
        if transaction_unsettled(conn) {
            tracing::warn!(key = %self.key, "advisory unlock cut short while diesel-async reports a transaction open or interrupted; marking the connection broken");
            mark_broken(conn);
        }
    }
}
