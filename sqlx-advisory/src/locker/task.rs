//! The locker's I/O on sqlx: the session is a `PgListener` on a private one-connection pool (so a
//! read is pending whenever no statement is: a terminated backend or a closed socket is seen at
//! once); waiters are plain connections, cancelled with `pg_cancel_backend` from another one.

use std::io;
use std::time::Duration;

use advisory_common::locker::sql as lsql;
use advisory_common::shell::{Batch, Driver, LockerError};
use advisory_common::sql as csql;
use advisory_common::{ErrorKind, Key, KeyValue};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool, Postgres, Row};

use crate::error::Error;

/// The sqlx side of a [`Locker`](super::Locker): the connect options of its connections.
#[derive(Debug)]
pub struct SqlxDriver {
    opts: PgConnectOptions,
}

impl SqlxDriver {
    pub(super) fn new(opts: PgConnectOptions) -> SqlxDriver {
        SqlxDriver { opts }
    }
}

/// The locker's session.
#[derive(Debug)]
pub struct Session {
    /// Declared first, so dropped first (before its pool).
    listener: PgListener,
    /// A private one-connection pool: the session's connection never goes back to the user's pool.
    pool: PgPool,
}

/// A waiter connection and its backend pid.
#[derive(Debug)]
pub struct Waiter {
    conn: PgConnection,
    pid: i32,
}

/// Cancels a waiter's wait: `pg_cancel_backend(pid)` from a connection of its own.
#[derive(Debug)]
pub struct Canceller {
    pid: i32,
    conn: Option<PgConnection>,
}

macro_rules! bind_key {
    ($q:expr, $key:expr) => {
        match $key.value() {
            KeyValue::BigInt(v) => $q.bind(v),
            KeyValue::Pair(x, y) => $q.bind(x).bind(y),
        }
    };
}

/// The one column of a batch statement's one row, its arrays bound.
async fn fetch_batch<T>(s: &mut Session, b: Batch<'_>) -> Result<T, sqlx::Error>
where
    T: for<'r> sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres> + Send + Unpin,
{
    let q = sqlx::query_scalar::<_, T>(b.sql).bind(b.codes).bind(b.keys);
    let q = match b.pairs {
        Some((x, y)) => q.bind(x).bind(y),
        None => q,
    };
    q.fetch_one(&mut s.listener).await
}

impl Driver for SqlxDriver {
    type Error = Error;
    type DriverError = sqlx::Error;
    type Session = Session;
    type Waiter = Waiter;
    type Canceller = Canceller;

    async fn connect(&self) -> Result<(Session, i32), sqlx::Error> {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .max_lifetime(None)
            .idle_timeout(None)
            .test_before_acquire(false)
            .connect_with(self.opts.clone())
            .await?;
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.ignore_pool_close_event(true);
        listener.eager_reconnect(false);
        let pid: i32 = sqlx::query(csql::BACKEND_PID)
            .fetch_one(&mut listener)
            .await?
            .try_get(0)?;
        Ok((Session { listener, pool }, pid))
    }

    async fn lock_one(s: &mut Session, sql: &'static str, key: Key) -> Result<bool, sqlx::Error> {
        let q = sqlx::query_scalar::<_, bool>(sql);
        bind_key!(q, key).fetch_one(&mut s.listener).await
    }

    async fn batch(s: &mut Session, b: Batch<'_>) -> Result<Vec<i64>, sqlx::Error> {
        fetch_batch(s, b).await
    }

    async fn batch_held(s: &mut Session, b: Batch<'_>) -> Result<Vec<bool>, sqlx::Error> {
        fetch_batch(s, b).await
    }

    async fn execute(s: &mut Session, sql: &'static str) -> Result<(), sqlx::Error> {
        sqlx::query(sql).execute(&mut s.listener).await.map(|_| ())
    }

    async fn execute_int(
        s: &mut Session,
        sql: &'static str,
        value: i32,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(sql)
            .bind(value)
            .execute(&mut s.listener)
            .await
            .map(|_| ())
    }

    async fn lost(s: &mut Session) -> String {
        loop {
            match s.listener.try_recv().await {
                Ok(Some(_)) => {} // a notification: nothing listens, ignore
                Ok(None) => return "the session's connection closed".to_owned(),
                Err(e) => return format!("the session's connection failed: {e}"),
            }
        }
    }

    async fn close(s: Session) {
        drop(s.listener);
        s.pool.close().await;
    }

    async fn open_waiter(&self) -> Result<Waiter, sqlx::Error> {
        let mut conn = PgConnection::connect_with(&self.opts).await?;
        let pid: i32 = sqlx::query_scalar(csql::BACKEND_PID)
            .fetch_one(&mut conn)
            .await?;
        Ok(Waiter { conn, pid })
    }

    async fn wait_free(w: &mut Waiter, sql: &'static str, key: Key) -> Result<(), sqlx::Error> {
        let q = sqlx::query(sql);
        bind_key!(q, key).execute(&mut w.conn).await.map(|_| ())
    }

    fn canceller(w: &Waiter) -> Canceller {
        Canceller {
            pid: w.pid,
            conn: None,
        }
    }

    async fn cancel(&self, c: &mut Canceller) {
        if c.conn.is_none() {
            c.conn = PgConnection::connect_with(&self.opts).await.ok();
        }
        if let Some(conn) = c.conn.as_mut()
            && sqlx::query(lsql::CANCEL_WAIT)
                .bind(c.pid)
                .execute(&mut *conn)
                .await
                .is_err()
        {
            c.conn = None;
        }
    }

    fn classify(e: sqlx::Error) -> (Option<ErrorKind>, String) {
        let err = Error::from(e);
        (err.kind(), err.to_string())
    }

    advisory_common::locker_tracing!();
}

#[doc(hidden)]
impl LockerError for Error {
    fn connection_lost(why: &str) -> Error {
        Error::ConnectionLost {
            source: sqlx::Error::Io(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                why.to_owned(),
            )),
        }
    }

    fn timeout(key: Key, timeout: Duration) -> Error {
        Error::Timeout { key, timeout }
    }

    fn failed(kind: ErrorKind, key: Key, msg: String) -> Error {
        match kind {
            ErrorKind::LockTableFull => Error::LockTableFull {
                key,
                source: sqlx::Error::Protocol(msg),
            },
            ErrorKind::Deadlock => Error::Deadlock {
                key,
                source: sqlx::Error::Protocol(msg),
            },
            _ => Error::Database(sqlx::Error::Protocol(msg)),
        }
    }
}
