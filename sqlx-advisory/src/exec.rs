//! How statements reach the server: prepared lock/unlock statements, the savepoint batch, the
//! drop-time queued unlock, and discarding a pooled connection safely with or without a runtime.

use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use advisory_common::sql::{self, Mode, Scope, Wait};
use advisory_common::{Key, LockInfo};
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection, Postgres, Row, SqlSafeStr};

use crate::error::{Error, classify};

/// A statement from `advisory_common::sql` with the key (and for timed acquires the milliseconds)
/// bound as parameters.
fn bind(sql: &'static str, key: Key, ms: Option<i32>) -> Query<'static, Postgres, PgArguments> {
    let q = sqlx::query(sql);
    let q = match key {
        Key::BigInt(k) => q.bind(k),
        Key::Pair(k1, k2) => q.bind(k1).bind(k2),
    };
    match ms {
        Some(ms) => q.bind(ms),
        None => q,
    }
}

/// Make sure `sql` is in the connection's statement cache. After the first use on a connection
/// this costs one cache lookup and no round trip (sqlx's `get_or_prepare` returns the cached
/// statement), and it means that once [`fetch_bool`] is polled, the next thing the server
/// receives is the statement itself: `release()` uses that to know exactly when the unlock "may
/// have been sent" (cancel safety).
pub(crate) async fn prepare(conn: &mut PgConnection, sql: &'static str) -> Result<(), sqlx::Error> {
    conn.prepare(sql.into_sql_str()).await.map(drop)
}

/// Run a prepared lock / unlock / held statement and read its one `boolean` column.
pub(crate) async fn fetch_bool(
    conn: &mut PgConnection,
    sql: &'static str,
    key: Key,
    ms: Option<i32>,
) -> Result<bool, sqlx::Error> {
    let row = bind(sql, key, ms).fetch_one(&mut *conn).await?;
    row.try_get::<bool, _>(0)
}

/// A timed acquire inside an open transaction: one simple-protocol round trip
/// (`SAVEPOINT; lock; RELEASE SAVEPOINT`); on failure the savepoint is rolled back so the caller's
/// transaction stays usable, then the failure is classified.
pub(crate) async fn savepoint_attempt(
    conn: &mut PgConnection,
    scope: Scope,
    mode: Mode,
    key: Key,
    timeout: Duration,
    ms: i32,
) -> Result<(), Error> {
    let batch = sql::savepoint_batch(scope, mode, key, ms);
    match conn.execute(AssertSqlSafe(batch)).await {
        Ok(_) => Ok(()),
        Err(err) => {
            let err = classify(err, key, Some(timeout));
            if let Err(rb) = conn.execute(sql::SAVEPOINT_ROLLBACK).await {
                tracing::warn!(%key, error = %rb, "could not roll back the advisory-lock savepoint; the transaction is aborted");
            }
            Err(err)
        }
    }
}

/// The statement for an acquire, its milliseconds parameter, and the caller's timeout.
pub(crate) fn lock_statement(
    scope: Scope,
    mode: Mode,
    wait: Wait,
    key: Key,
    timeout: Option<Duration>,
) -> Result<(&'static str, Option<i32>), Error> {
    let ms = timeout.map(advisory_common::timeout_millis).transpose()?;
    Ok((sql::lock_sql(scope, mode, wait, key.space()), ms))
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

/// The drop-time release of a borrowed guard: put the unlock on the wire **now**, without awaiting
/// its reply, so the server runs it at once and the connection's next use consumes the reply.
///
/// sqlx has no public "queue a statement" call (its own `PgAdvisoryLockGuard` uses the crate-private
/// `queue_simple_query`). The same effect through public API: an unprepared `execute` polled
/// exactly once. On its first poll, on an idle connection, sqlx-postgres
/// (`connection/executor.rs`, `PgConnection::run`) returns from `wait_until_ready` at once, writes
/// the `Query` message and increments `pending_ready_for_query_count` (`queue_simple_query`), then
/// flushes; the future is then dropped while awaiting the reply. Every later use of the connection
/// starts with `wait_until_ready`, which reads and discards that reply up to its `ReadyForQuery`.
/// A flush cut short (socket buffer full) leaves the rest in sqlx's write buffer, which the next use
/// flushes first (`BufferedSocket::flush` consumes only what was written).
///
/// "Idle" is checked first by polling `Connection::flush` (sqlx's `wait_until_ready`) once: if the
/// connection still awaits the reply of an earlier request (a query future on it was cancelled),
/// the unlock cannot be queued behind it through public API. Returns whether it was queued.
pub(crate) fn queue_unlock(conn: &mut PgConnection, mode: Mode, key: Key) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    // Tokio's cooperative budget could make the socket write return Pending for no I/O reason.
    match pin!(tokio::task::unconstrained(conn.flush())).poll(&mut cx) {
        Poll::Ready(Ok(())) => {}
        Poll::Ready(Err(error)) => {
            tracing::warn!(%key, %error, "advisory lock guard dropped on a broken connection; the server releases its locks when the session ends");
            return false;
        }
        Poll::Pending => {
            tracing::warn!(%key, "advisory lock guard dropped while its connection was still busy with an earlier, cancelled request: the unlock could not be queued and the lock stays with the session until it is unlocked or the connection is closed");
            return false;
        }
    }
    let unlock = AssertSqlSafe(sql::unlock_literal(mode, key));
    match pin!(tokio::task::unconstrained(conn.execute(unlock))).poll(&mut cx) {
        Poll::Pending | Poll::Ready(Ok(_)) => {
            tracing::debug!(%key, "advisory lock guard dropped: unlock sent");
            true
        }
        Poll::Ready(Err(error)) => {
            tracing::warn!(%key, %error, "advisory lock guard dropped: sending the unlock failed");
            false
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

/// Marks a lock request in flight on a borrowed connection; dropping it armed (the acquire future
/// was cancelled after the request went out) logs what that means.
pub(crate) struct InFlight {
    pub(crate) key: Key,
    pub(crate) armed: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.armed {
            tracing::warn!(key = %self.key, "advisory lock acquire cancelled after the request may have been sent on a borrowed connection: the server completes it, and if it is granted the lock stays with that session (no guard exists to release it) until unlocked or the connection is closed; use the PgPool methods for cancel-safe acquires");
        }
    }
}
