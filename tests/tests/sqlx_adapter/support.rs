//! Connections, pools and async wrappers around the harness's (synchronous) `pg_locks` observer.

use std::time::Duration;

use advisory_common::{Key, LockInfo, sql};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};

/// The server URL (starting the throwaway cluster on first use, off the async workers).
pub async fn url() -> String {
    tokio::task::spawn_blocking(|| advisory_tests::db().url().to_owned())
        .await
        .unwrap()
}

/// A pool of at most `max` connections.
pub async fn pool(max: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(20))
        .connect(&url().await)
        .await
        .expect("pool")
}

/// A bare connection.
pub async fn conn() -> PgConnection {
    PgConnection::connect(&url().await).await.expect("connect")
}

/// The backend pid of a connection.
pub async fn pid(c: &mut PgConnection) -> i32 {
    sqlx::query_scalar(sql::BACKEND_PID)
        .fetch_one(c)
        .await
        .unwrap()
}

/// How many advisory locks this session holds, asked on the session itself.
pub async fn own_locks(c: &mut PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
    )
    .fetch_one(c)
    .await
    .unwrap()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// Granted holds of `key`.
pub async fn granted(key: Key) -> Vec<LockInfo> {
    blocking(move || advisory_tests::granted(key)).await
}

/// Poll `pg_locks` until `cond` holds for `keys` (panics after `within`).
pub async fn wait_until(
    keys: &[Key],
    within: Duration,
    what: &'static str,
    cond: impl FnMut(&[LockInfo]) -> bool + Send + 'static,
) -> Vec<LockInfo> {
    let keys = keys.to_vec();
    blocking(move || advisory_tests::wait_until(&keys, within, what, cond)).await
}

/// Nobody holds or waits for any of `keys`, allowing `within` for asynchronous releases.
pub async fn assert_no_locks(keys: &[Key], within: Duration) {
    let keys = keys.to_vec();
    blocking(move || advisory_tests::assert_no_locks(&keys, within)).await
}

/// Wait until session `pid` waits for `key`.
pub async fn wait_for_waiter(key: Key, pid: i32) {
    wait_until(
        &[key],
        Duration::from_secs(10),
        "the session waiting",
        move |rows| rows.iter().any(|r| r.pid == pid && !r.granted),
    )
    .await;
}

/// Wait until some session other than `not` waits for `key`; returns its pid.
pub async fn wait_for_any_waiter(key: Key) -> i32 {
    let rows = wait_until(&[key], Duration::from_secs(10), "a waiter", |rows| {
        rows.iter().any(|r| !r.granted)
    })
    .await;
    rows.iter().find(|r| !r.granted).unwrap().pid
}

/// The pids granted `key`.
pub async fn holders(key: Key) -> Vec<i32> {
    let mut p: Vec<i32> = granted(key).await.iter().map(|l| l.pid).collect();
    p.sort();
    p
}

pub const SOON: Duration = Duration::from_secs(10);
