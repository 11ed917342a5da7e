//! Connections, pools and `pg_stat_activity` look-ups shared by the model and the regressions.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use advisory_common::{Key, LockInfo, sql};
use advisory_tests::{advisory_locks, db};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer};
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::{AsyncConnection, AsyncPgConnection};

pub type R2d2 = diesel::r2d2::Pool<diesel::r2d2::ConnectionManager<PgConnection>>;
pub type Bb8 = diesel_async::pooled_connection::bb8::Pool<AsyncPgConnection>;
pub type Deadpool = diesel_async::pooled_connection::deadpool::Pool<AsyncPgConnection>;

/// Generous deadline for releases that travel asynchronously (a spawned unlock, a closed session).
pub const SOON: Duration = Duration::from_secs(10);

#[derive(QueryableByName)]
struct Pid {
    #[diesel(sql_type = Integer)]
    pid: i32,
}

pub fn conn() -> PgConnection {
    PgConnection::establish(db().url()).expect("connect")
}

pub async fn aconn() -> AsyncPgConnection {
    AsyncPgConnection::establish(db().url())
        .await
        .expect("connect")
}

pub fn pid(c: &mut PgConnection) -> i32 {
    diesel::RunQueryDsl::get_result::<Pid>(diesel::sql_query(sql::BACKEND_PID), c)
        .expect("pid")
        .pid
}

pub async fn apid(c: &mut AsyncPgConnection) -> i32 {
    diesel_async::RunQueryDsl::get_result::<Pid>(diesel::sql_query(sql::BACKEND_PID), c)
        .await
        .expect("pid")
        .pid
}

pub fn r2d2_pool(size: u32) -> R2d2 {
    diesel::r2d2::Pool::builder()
        .max_size(size)
        .min_idle(Some(0))
        .connection_timeout(Duration::from_secs(30))
        .build(diesel::r2d2::ConnectionManager::new(db().url()))
        .expect("r2d2 pool")
}

pub async fn bb8_pool(size: u32) -> Bb8 {
    Bb8::builder()
        .max_size(size)
        .connection_timeout(Duration::from_secs(30))
        .build(AsyncDieselConnectionManager::new(db().url()))
        .await
        .expect("bb8 pool")
}

pub fn deadpool_pool(size: usize) -> Deadpool {
    Deadpool::builder(AsyncDieselConnectionManager::new(db().url()))
        .max_size(size)
        .build()
        .expect("deadpool pool")
}

/// Is backend `pid` still connected? (One fresh observer session.)
pub fn backend_alive(pid: i32) -> bool {
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    diesel::sql_query("SELECT count(*) AS n FROM pg_stat_activity WHERE pid = $1")
        .bind::<Integer, _>(pid)
        .get_result::<N>(&mut conn())
        .expect("pg_stat_activity")
        .n
        > 0
}

/// Wait (with a deadline) until backend `pid` has exited.
pub fn wait_backend_gone(pid: i32) {
    let deadline = Instant::now() + SOON;
    while backend_alive(pid) {
        assert!(Instant::now() < deadline, "backend {pid} still connected");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Granted advisory locks of `pid`.
pub fn held_by(pid: i32) -> Vec<LockInfo> {
    advisory_locks()
        .into_iter()
        .filter(|l| l.pid == pid && l.granted)
        .collect()
}

/// Pids holding `key` (one entry per session and mode).
pub fn holders(key: Key) -> Vec<i32> {
    advisory_tests::granted(key)
        .into_iter()
        .map(|l| l.pid)
        .collect()
}

/// Poll `fut` exactly once with a waker that does nothing (the way a `select!` or a timeout
/// drops a future after its first `Pending`).
pub fn poll_once<F: Future + ?Sized>(fut: Pin<&mut F>) -> Poll<F::Output> {
    fut.poll(&mut Context::from_waker(Waker::noop()))
}
