//! Correctness under load: 32 tasks × 500 lock-protected read-modify-write increments through
//! lockers in **two OS processes** sharing the keys = exactly 16,000 (the child is this test binary
//! run again on the `load::child` test, pointed at the same server).

use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, PgPool};
use sqlx_advisory::Key;

const TASKS_PER_PROCESS: usize = 16;
const PER_TASK: usize = 500;
const KEYS: usize = 4;

async fn increments(url: &str, table: &str, ns: i32, app: &str) {
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect(url)
        .await
        .unwrap();
    let opts: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
    let locker =
        sqlx_advisory::Locker::with_options(opts.application_name(app), Default::default());
    let mut js = Vec::new();
    for t in 0..TASKS_PER_PROCESS {
        let (pool, locker, table) = (pool.clone(), locker.clone(), table.to_owned());
        js.push(tokio::spawn(async move {
            for i in 0..PER_TASK {
                let row = ((t + i) % KEYS) as i32;
                let lease = locker.lock(Key::Pair(ns, row)).await.unwrap();
                rmw(&pool, &table, row).await;
                if i % 2 == 0 {
                    lease.release().await.unwrap();
                } else {
                    drop(lease);
                }
            }
        }));
    }
    for j in js {
        j.await.unwrap();
    }
}

async fn rmw(pool: &PgPool, table: &str, row: i32) {
    let n: i32 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT n FROM {table} WHERE id = $1"
    )))
    .bind(row)
    .fetch_one(pool)
    .await
    .unwrap();
    tokio::task::yield_now().await;
    sqlx::query(AssertSqlSafe(format!(
        "UPDATE {table} SET n = $2 WHERE id = $1"
    )))
    .bind(row)
    .bind(n + 1)
    .execute(pool)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_32_tasks_500_increments_is_exactly_16000() {
    let url = tokio::task::spawn_blocking(|| advisory_tests::db().url().to_owned())
        .await
        .unwrap();
    let table = format!("locker_load_{:08x}", rand::random::<u32>());
    let ns = advisory_tests::unique_i32();
    let pool = PgPool::connect(&url).await.unwrap();
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, n int NOT NULL)"
    )))
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {table} SELECT g, 0 FROM generate_series(0, {}) g",
        KEYS - 1
    )))
    .execute(&pool)
    .await
    .unwrap();
    let child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "load::child", "--ignored", "--nocapture"])
        .env("LOCKER_LOAD", format!("{url} {table} {ns}"))
        .spawn()
        .unwrap();
    increments(&url, &table, ns, "locker-load-parent").await;
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the child process finishes")
        .unwrap();
    assert!(out.status.success(), "child failed: {:?}", out.status);
    let total: i64 = sqlx::query_scalar(AssertSqlSafe(format!("SELECT sum(n)::int8 FROM {table}")))
        .fetch_one(&pool)
        .await
        .unwrap();
    sqlx::query(AssertSqlSafe(format!("DROP TABLE {table}")))
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        total,
        (2 * TASKS_PER_PROCESS * PER_TASK) as i64,
        "lost updates"
    );
}

/// The second process (run by the test above; does nothing when run on its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by two_processes_32_tasks_500_increments_is_exactly_16000"]
async fn child() {
    let Ok(spec) = std::env::var("LOCKER_LOAD") else {
        return;
    };
    let mut it = spec.split(' ');
    let (url, table, ns) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
    increments(url, table, ns.parse().unwrap(), "locker-load-child").await;
}
