//! The locker's I/O on diesel-async's own transport (`tokio-postgres`; the session is private, so
//! no diesel layer is needed on it): each connection is driven by its own task, which always reads
//! the socket and tells us the moment it closes (terminated backend, server restart); a waiter's
//! wait is cancelled with the protocol's cancel request.

use std::time::Duration;

use advisory_common::shell::{Batch, Driver, LockerError};
use advisory_common::sql as csql;
use advisory_common::{ErrorKind, Key, KeyValue, classify_sqlstate};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use tokio::sync::oneshot;
use tokio::task::AbortHandle;
use tokio_postgres::types::ToSql;
use tokio_postgres::{CancelToken, Client, Config, NoTls, Row};

use crate::error::Error;

/// The tokio-postgres side of a [`Locker`](super::Locker): the configuration of its connections.
#[derive(Debug)]
pub struct TokioPostgresDriver {
    config: Config,
}

impl TokioPostgresDriver {
    pub(super) fn new(config: Config) -> TokioPostgresDriver {
        TokioPostgresDriver { config }
    }
}

/// The locker's session.
#[derive(Debug)]
pub struct Session {
    client: Client,
    /// Fires when the connection task ends: the socket closed or failed.
    closed: oneshot::Receiver<String>,
    driver: AbortHandle,
}

/// Open a connection and drive it on its own task; `closed` fires when that task ends.
async fn open(config: &Config) -> Result<Session, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    let (tx, closed) = oneshot::channel();
    let driver = tokio::spawn(async move {
        let why = match connection.await {
            Ok(()) => "the session's connection closed".to_owned(),
            Err(e) => format!("the session's connection failed: {e}"),
        };
        let _ = tx.send(why);
    });
    Ok(Session {
        client,
        closed,
        driver: driver.abort_handle(),
    })
}

/// The SQLSTATE kind of a driver error (`ConnectionLost` for a closed connection).
fn kind_of(e: &tokio_postgres::Error) -> Option<ErrorKind> {
    if e.is_closed() {
        return Some(ErrorKind::ConnectionLost);
    }
    match e.code() {
        Some(code) => classify_sqlstate(code.code()),
        None => Some(ErrorKind::ConnectionLost), // I/O
    }
}

/// One row of `sql` with `key` bound.
async fn query_key(
    client: &Client,
    sql: &'static str,
    key: Key,
) -> Result<Row, tokio_postgres::Error> {
    match key.value() {
        KeyValue::BigInt(v) => client.query_one(sql, &[&v]).await,
        KeyValue::Pair(x, y) => client.query_one(sql, &[&x, &y]).await,
    }
}

/// One row of a batch statement with its arrays bound.
async fn query_batch(client: &Client, b: Batch<'_>) -> Result<Row, tokio_postgres::Error> {
    match b.pairs {
        None => {
            let params: [&(dyn ToSql + Sync); 2] = [&b.codes, &b.keys];
            client.query_one(b.sql, &params).await
        }
        Some((x, y)) => {
            let params: [&(dyn ToSql + Sync); 4] = [&b.codes, &b.keys, &x, &y];
            client.query_one(b.sql, &params).await
        }
    }
}

impl Driver for TokioPostgresDriver {
    type Error = Error;
    type DriverError = tokio_postgres::Error;
    type Session = Session;
    type Waiter = Client;
    type Canceller = CancelToken;

    async fn connect(&self) -> Result<(Session, i32), tokio_postgres::Error> {
        let s = open(&self.config).await?;
        let pid: i32 = s.client.query_one(csql::BACKEND_PID, &[]).await?.get(0);
        Ok((s, pid))
    }

    async fn lock_one(
        s: &mut Session,
        sql: &'static str,
        key: Key,
    ) -> Result<bool, tokio_postgres::Error> {
        query_key(&s.client, sql, key).await.map(|r| r.get(0))
    }

    async fn batch(s: &mut Session, b: Batch<'_>) -> Result<Vec<i64>, tokio_postgres::Error> {
        query_batch(&s.client, b).await.map(|r| r.get(0))
    }

    async fn batch_held(s: &mut Session, b: Batch<'_>) -> Result<Vec<bool>, tokio_postgres::Error> {
        query_batch(&s.client, b).await.map(|r| r.get(0))
    }

    async fn execute(s: &mut Session, sql: &'static str) -> Result<(), tokio_postgres::Error> {
        s.client.batch_execute(sql).await
    }

    async fn execute_int(
        s: &mut Session,
        sql: &'static str,
        value: i32,
    ) -> Result<(), tokio_postgres::Error> {
        s.client.query_one(sql, &[&value]).await.map(|_| ())
    }

    async fn lost(s: &mut Session) -> String {
        (&mut s.closed)
            .await
            .unwrap_or_else(|_| "the session's connection task ended".to_owned())
    }

    async fn close(s: Session) {
        drop(s.client); // the connection task sends Terminate and ends
    }

    fn discard(s: Session) {
        s.driver.abort();
        drop(s.client);
    }

    async fn open_waiter(&self) -> Result<Client, tokio_postgres::Error> {
        open(&self.config).await.map(|s| s.client)
    }

    fn waiter_usable(client: &Client) -> bool {
        !client.is_closed()
    }

    async fn wait_free(
        client: &mut Client,
        sql: &'static str,
        key: Key,
    ) -> Result<(), tokio_postgres::Error> {
        query_key(client, sql, key).await.map(|_| ())
    }

    fn canceller(client: &Client) -> CancelToken {
        client.cancel_token()
    }

    async fn cancel(&self, token: &mut CancelToken) {
        let _ = token.cancel_query(NoTls).await;
    }

    fn classify(e: tokio_postgres::Error) -> (Option<ErrorKind>, String) {
        let msg = e
            .as_db_error()
            .map(|d| d.message().to_owned())
            .unwrap_or_else(|| e.to_string());
        (kind_of(&e), msg)
    }

    advisory_common::locker_tracing!();
}

fn db_error(msg: String) -> DieselError {
    DieselError::DatabaseError(DatabaseErrorKind::Unknown, Box::new(msg))
}

#[doc(hidden)]
impl LockerError for Error {
    fn connection_lost(why: &str) -> Error {
        Error::ConnectionLost {
            source: DieselError::DatabaseError(
                DatabaseErrorKind::ClosedConnection,
                Box::new(why.to_owned()),
            ),
        }
    }

    fn timeout(key: Key, timeout: Duration) -> Error {
        Error::Timeout { key, timeout }
    }

    fn failed(kind: ErrorKind, key: Key, msg: String) -> Error {
        match kind {
            ErrorKind::LockTableFull => Error::LockTableFull {
                key,
                source: db_error(msg),
            },
            ErrorKind::Deadlock => Error::Deadlock {
                key,
                source: db_error(msg),
            },
            _ => Error::Database(db_error(msg)),
        }
    }
}
