//! diesel-advisory against a real server: every assertion is about what `pg_locks` says.
//!
//! * `sync_api`: `PgConnection` guards, drop, xact locks, timeouts, deadlock, error conversions,
//!   statement caching; `sync_tx`: session locks and transactions (refused inside, guards dropped
//!   inside by a panic or an aborted transaction).
//! * `async_api`: `AsyncPgConnection` guards, the queued unlock on drop and on cancellation,
//!   timeouts, xact locks, statement caching.
//! * `pools`: r2d2 / bb8 / deadpool guards, drop without release, no runtime, cancellation loops,
//!   a lock held across a workflow, mutual exclusion between adapters.
//! * `race`: timed acquires racing their timeout on every path (the grant-at-timeout race, counted).
//! * `begin`, `begin_async`, `begin_faults`: `transaction_with_xact_lock` (lock + `BEGIN` in one batch), sync and
//!   async: held from the start, exclusion, timeouts leaving no transaction behind,
//!   `AlreadyInTransaction`, `?`, and cancellation on bare and pooled connections.

use std::time::Duration;

use advisory_common::sql;
use advisory_tests::db;
use diesel::prelude::*;
use diesel::sql_types::Integer;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::{AsyncConnection, AsyncPgConnection};

#[path = "diesel_adapter/async_api.rs"]
mod async_api;
#[path = "diesel_adapter/begin.rs"]
mod begin;
#[path = "diesel_adapter/begin_async.rs"]
mod begin_async;
#[path = "diesel_adapter/begin_faults.rs"]
mod begin_faults;
#[path = "diesel_adapter/pools.rs"]
mod pools;
#[path = "diesel_adapter/race.rs"]
mod race;
#[path = "diesel_adapter/sync_api.rs"]
mod sync_api;
#[path = "diesel_adapter/sync_tx.rs"]
mod sync_tx;

/// Generous deadline for releases that travel asynchronously (a spawned unlock, a closed session).
const ASYNC_RELEASE: Duration = Duration::from_secs(10);

#[derive(QueryableByName)]
struct Pid {
    #[diesel(sql_type = Integer)]
    pid: i32,
}

fn conn() -> PgConnection {
    PgConnection::establish(db().url()).expect("connect")
}

async fn aconn() -> AsyncPgConnection {
    AsyncPgConnection::establish(db().url())
        .await
        .expect("connect")
}

fn pid(conn: &mut PgConnection) -> i32 {
    diesel::RunQueryDsl::get_result::<Pid>(diesel::sql_query(sql::BACKEND_PID), conn)
        .expect("pid")
        .pid
}

async fn apid(conn: &mut AsyncPgConnection) -> i32 {
    diesel_async::RunQueryDsl::get_result::<Pid>(diesel::sql_query(sql::BACKEND_PID), conn)
        .await
        .expect("pid")
        .pid
}

fn r2d2_pool(size: u32) -> diesel::r2d2::Pool<diesel::r2d2::ConnectionManager<PgConnection>> {
    diesel::r2d2::Pool::builder()
        .max_size(size)
        .min_idle(Some(0))
        .build(diesel::r2d2::ConnectionManager::new(db().url()))
        .expect("r2d2 pool")
}

async fn bb8_pool(size: u32) -> diesel_async::pooled_connection::bb8::Pool<AsyncPgConnection> {
    diesel_async::pooled_connection::bb8::Pool::builder()
        .max_size(size)
        .build(AsyncDieselConnectionManager::new(db().url()))
        .await
        .expect("bb8 pool")
}

fn deadpool_pool(
    size: usize,
) -> diesel_async::pooled_connection::deadpool::Pool<AsyncPgConnection> {
    diesel_async::pooled_connection::deadpool::Pool::builder(AsyncDieselConnectionManager::new(
        db().url(),
    ))
    .max_size(size)
    .build()
    .expect("deadpool pool")
}

/// Is `pid` still connected?
fn backend_alive(observer: &mut PgConnection, pid: i32) -> bool {
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    diesel::sql_query("SELECT count(*) AS n FROM pg_stat_activity WHERE pid = $1")
        .bind::<Integer, _>(pid)
        .get_result::<N>(observer)
        .expect("pg_stat_activity")
        .n
        > 0
}

/// Wait (with a deadline) until backend `pid` has exited.
fn wait_backend_gone(pid: i32, within: Duration) {
    let mut observer = conn();
    let deadline = std::time::Instant::now() + within;
    while backend_alive(&mut observer, pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "backend {pid} still connected after {within:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
