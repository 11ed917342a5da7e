//! The I/O of the adapter: how a statement of the protocol (`advisory_common::protocol`) reaches
//! the server and its reply comes back, the drop-time queued unlock, and discarding a pooled
//! connection safely with or without a runtime.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use std::borrow::Cow;

use advisory_common::protocol::{Acquire, Answer, Finish, Prepared, Statement, Step};
use advisory_common::sql::{self, Mode};
use advisory_common::{Key, KeyValue, LockInfo};
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection, Postgres, Row, SqlSafeStr};

use crate::error::{Error, kind_of};

/// A prepared statement of `advisory_common::sql` with the key (and for timed acquires the
/// milliseconds) bound as parameters.
fn bind(p: &Prepared) -> Query<'static, Postgres, PgArguments> {
    let q = sqlx::query(p.sql());
    let q = match p.key.value() {
        KeyValue::BigInt(k) => q.bind(k),
        KeyValue::Pair(k1, k2) => q.bind(k1).bind(k2),
    };
    match p.ms {
        Some(ms) => q.bind(ms),
        None => q,
    }
}

/// Make sure `sql` is in the connection's statement cache. After the first use on a connection
/// this costs one cache lookup and no round trip (sqlx's `get_or_prepare` returns the cached
/// statement), and it means that once [`send`] is polled, the next thing the server receives is
/// the statement itself: `release()` uses that to know exactly when the unlock "may have been
/// sent" (cancel safety).
pub(crate) async fn prepare(conn: &mut PgConnection, sql: &'static str) -> Result<(), sqlx::Error> {
    conn.prepare(sql.into_sql_str()).await.map(drop)
}

/// Send one statement of the protocol and reduce the reply to an [`Answer`]: a prepared
/// statement's one `boolean` column, or a simple-protocol batch's completion. The first poll
/// writes a prepared statement that is already in the cache.
pub(crate) async fn send(conn: &mut PgConnection, statement: Statement) -> Answer<sqlx::Error> {
    let result = match statement {
        Statement::Prepared(p) => match bind(&p).fetch_one(&mut *conn).await {
            Ok(row) => row.try_get::<bool, _>(0).map(Answer::Row),
            Err(e) => Err(e),
        },
        Statement::Simple(Cow::Borrowed(text)) => conn.execute(text).await.map(|_| Answer::Done),
        Statement::Simple(Cow::Owned(text)) => conn
            .execute(AssertSqlSafe(text))
            .await
            .map(|_| Answer::Done),
    };
    result.unwrap_or_else(|e| {
        let kind = kind_of(&e);
        Answer::Failed(e, kind)
    })
}

/// Run an acquire's conversation from its `first` statement to the end.
pub(crate) async fn drive(
    conn: &mut PgConnection,
    acquire: &mut Acquire<sqlx::Error>,
    first: Statement,
) -> Finish<sqlx::Error> {
    let mut next = first;
    loop {
        let answer = send(conn, next).await;
        match acquire.answer(answer) {
            Step::Send(statement) => next = statement,
            Step::Finish(finish) => return finish,
        }
    }
}

/// Every advisory lock in the current database, held or awaited, by any session.
pub(crate) async fn advisory_locks(conn: &mut PgConnection) -> Result<Vec<LockInfo>, Error> {
    let rows = sqlx::query(sql::LOCKS_SQL).fetch_all(&mut *conn).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        if let Some(info) = LockInfo::from_row(
            r.try_get("classid")?,
            r.try_get("objid")?,
            r.try_get("objsubid")?,
            r.try_get::<&str, _>("mode")?,
            r.try_get("granted")?,
            r.try_get("pid")?,
            r.try_get("application_name")?,
            r.try_get("usename")?,
            r.try_get("state")?,
            r.try_get("wait_seconds")?,
            r.try_get("xact_seconds")?,
            r.try_get("query")?,
        ) {
            out.push(info);
        }
    }
    Ok(out)
}

/// What [`queue`] did with a statement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Queued {
    /// In the connection's write buffer or on the wire; the connection's next use (or a pool's
    /// release check) reads its answer, and a failure there closes a pooled connection.
    Yes,
    /// It could not be queued, or it (or an earlier pending answer) failed: the connection is
    /// broken or in a state where the statement cannot run.
    No,
}

/// Put a simple-protocol statement on the connection **now**, behind whatever the connection is
/// still waiting for, without awaiting its answer: the drop-time release of a guard, and the undo
/// of a cancelled acquire.
///
/// sqlx's own `PgAdvisoryLockGuard` does this with the crate-private `queue_simple_query`. The one
/// public path to that call is `Connection::begin_with(statement)` (`Transaction::begin` ->
/// `PgTransactionManager::begin`), which at transaction depth 0 queues the statement **before**
/// its first await (sqlx-postgres `transaction.rs`: `queue_simple_query(statement)`, then
/// `wait_until_ready().await`). So the statement is written
/// even when the connection still awaits earlier answers (a failed query's `ReadyForQuery`, a
/// dropped `Transaction`'s queued `ROLLBACK`, another guard's queued unlock), which polling
/// `Connection::flush` first could not do. It is polled exactly once with a no-op waker; dropping
/// it then leaves the message queued (`pending_ready_for_query_count` counts it, so every later use
/// of the connection, and the pool's release `ping`, reads its answer first). sqlx's `Rollback`
/// guard and the half-built `Transaction` in that future do nothing at depth 0 (`start_rollback`
/// only acts at depth > 0). If that one poll happens to read every answer
/// including ours, it ends in `BeginFailed` (the session is outside a transaction, as expected).
///
/// At transaction depth > 0 `begin` refuses a custom statement without sending anything, so this
/// returns [`Queued::No`]; no guard of this crate is created at depth > 0 (session locks inside a
/// transaction are refused), and a `Transaction` opened on a guard ends before the guard does.
pub(crate) fn queue(conn: &mut PgConnection, statement: String, key: Key) -> Queued {
    if conn.is_in_transaction() {
        tracing::warn!(%key, "cannot queue the advisory-lock statement: the connection is inside a sqlx transaction (was a Transaction leaked with mem::forget?)");
        return Queued::No;
    }
    let mut cx = Context::from_waker(Waker::noop());
    let begin = conn.begin_with(AssertSqlSafe(statement));
    // Tokio's cooperative budget could make the socket write return Pending for no I/O reason;
    // what is not written stays in sqlx's write buffer and goes out first on the next use.
    match pin!(tokio::task::unconstrained(begin)).poll(&mut cx) {
        Poll::Pending | Poll::Ready(Err(sqlx::Error::BeginFailed)) => Queued::Yes,
        Poll::Ready(Ok(tx)) => {
            // Only if the session was inside a transaction sqlx did not open (a raw `BEGIN`
            // through `execute`, unsupported with guards): the statement ran there. Dropping this
            // `Transaction` would queue a ROLLBACK of the caller's transaction; forgetting it
            // (it owns no heap memory: a borrowed connection and a flag) leaves sqlx counting
            // that transaction, which is what the server is in.
            tracing::warn!(%key, "advisory-lock statement ran inside a transaction opened with raw SQL; sqlx now counts that transaction");
            std::mem::forget(tx);
            Queued::Yes
        }
        Poll::Ready(Err(error)) => {
            tracing::warn!(%key, %error, "queueing the advisory-lock statement failed (or an earlier pending answer did)");
            Queued::No
        }
    }
}

/// The drop-time release of a guard: [`queue`] the unlock of one hold.
pub(crate) fn queue_unlock(conn: &mut PgConnection, mode: Mode, key: Key) -> Queued {
    let queued = queue(conn, sql::unlock_literal(mode, key), key);
    tracing::debug!(%key, mode = mode.as_str(), ?queued, "advisory lock guard dropped: unlock queued");
    queued
}

/// Read and discard every answer the connection still owes (a cancelled query's rows or error,
/// a queued unlock's result), so that what is sent next gets its own answer. Errors that belong to
/// those earlier requests are skipped; a connection-level error is returned.
pub(crate) async fn drain(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    loop {
        match conn.flush().await {
            Ok(()) => return Ok(()),
            Err(sqlx::Error::Database(error)) => {
                tracing::debug!(%error, "discarded the error answer of an earlier request");
            }
            Err(error) => return Err(error),
        }
    }
}

/// Throw a pooled connection away instead of returning it to the pool: the session ends, and the
/// server releases every lock it held.
///
/// Inside a tokio runtime: `close_on_drop()`, so sqlx's `PoolConnection::drop` spawns a graceful
/// close (`Terminate`) and never reuses it. Outside any runtime that would panic: sqlx's
/// `PoolConnection::drop` calls `sqlx_core::rt::spawn`, which in a tokio-only build panics with no
/// runtime (`rt/mod.rs`, `missing_rt`); it does so on `detach()` as well when the pool has
/// `min_connections > 0`. So the drop runs inside a throwaway current-thread runtime (no drivers,
/// no threads) whose tasks are dropped unrun; the raw connection is detached and dropped, which
/// closes the socket, and the pool's size is decremented by sqlx's own guard.
pub(crate) fn discard(mut conn: PoolConnection<Postgres>) {
    if tokio::runtime::Handle::try_current().is_ok() {
        conn.close_on_drop();
        drop(conn);
        return;
    }
    in_throwaway_runtime(|| drop(conn.detach()));
}

/// Run `f` inside a throwaway current-thread runtime (no drivers, no threads) whose tasks are
/// dropped unrun: for drops outside any runtime of values whose sqlx `Drop` spawns a task (and
/// would panic without a runtime). If no such runtime can be built, `f` runs as it is.
pub(crate) fn in_throwaway_runtime<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Builder::new_current_thread().build() {
        Ok(rt) => {
            let _entered = rt.enter();
            f()
        }
        Err(error) => {
            tracing::warn!(%error, "cannot build a runtime context for a drop outside any runtime");
            f()
        }
    }
}

/// Owns a pooled connection while something is in flight on it; unless [`keep`](Self::keep) is
/// called, dropping it (the future was cancelled, the release failed) discards the connection.
pub(crate) struct CloseUnlessKept {
    conn: Option<PoolConnection<Postgres>>,
    key: Key,
    /// `false` while nothing that could change the session's locks has been sent: dropping returns
    /// the connection to the pool.
    pub(crate) armed: bool,
}

impl CloseUnlessKept {
    pub(crate) fn new(conn: PoolConnection<Postgres>, key: Key, armed: bool) -> Self {
        CloseUnlessKept {
            conn: Some(conn),
            key,
            armed,
        }
    }

    pub(crate) fn conn(&mut self) -> &mut PgConnection {
        self.conn.as_mut().expect("connection present until kept")
    }

    /// The connection and the armed flag, borrowed together.
    pub(crate) fn parts(&mut self) -> (&mut PgConnection, &mut bool) {
        (
            self.conn.as_mut().expect("connection present until kept"),
            &mut self.armed,
        )
    }

    /// Hand the connection back (to the caller, or to the pool by dropping it).
    pub(crate) fn keep(mut self) -> PoolConnection<Postgres> {
        self.conn.take().expect("connection present until kept")
    }
}

impl Drop for CloseUnlessKept {
    fn drop(&mut self) {
        // Not armed: the connection is dropped with `self` and goes back to the pool.
        if self.armed
            && let Some(conn) = self.conn.take()
        {
            tracing::warn!(key = %self.key, "advisory lock request or release did not complete (cancelled or failed): closing the pooled connection instead of reusing it");
            discard(conn);
        }
    }
}

/// A session-scope acquire in flight on a borrowed connection. Armed only once the connection is
/// idle and the lock statement is prepared, right before the statement's first poll (which writes
/// it synchronously); dropped armed (the acquire was cancelled, or its post-timeout check failed),
/// it queues [`sql::unlock_if_held_literal`] behind the request: the hold the request added, if
/// any, is released as soon as the server has answered it, and nothing else is touched.
pub(crate) struct Acquiring<'c> {
    conn: Option<&'c mut PgConnection>,
    key: Key,
    mode: Mode,
    armed: bool,
}

impl<'c> Acquiring<'c> {
    pub(crate) fn new(conn: &'c mut PgConnection, key: Key, mode: Mode) -> Self {
        Acquiring {
            conn: Some(conn),
            key,
            mode,
            armed: false,
        }
    }

    /// The connection and the armed flag, borrowed together.
    pub(crate) fn parts(&mut self) -> (&mut PgConnection, &mut bool) {
        (
            self.conn
                .as_mut()
                .expect("connection present until finished"),
            &mut self.armed,
        )
    }

    /// The request is decided and left no hold that is not accounted for: give the connection
    /// back without queueing anything.
    pub(crate) fn finish(mut self) -> &'c mut PgConnection {
        self.conn.take().expect("connection present until finished")
    }
}

impl Drop for Acquiring<'_> {
    fn drop(&mut self) {
        if let (true, Some(conn)) = (self.armed, self.conn.as_mut()) {
            tracing::debug!(key = %self.key, "advisory lock acquire cancelled after its request went out: queueing its undo");
            queue(
                conn,
                sql::unlock_if_held_literal(self.mode, self.key),
                self.key,
            );
        }
    }
}
