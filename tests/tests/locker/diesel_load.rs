//! Correctness under load for the **diesel-async** locker: 32 tasks × 500 lock-protected
//! read-modify-write increments (through a bb8 pool of `AsyncPgConnection`s) in **two OS
//! processes** sharing the keys = exactly 16,000 (the child is this test binary run again on the
//! `diesel_load::child` test, pointed at the same server). The same shape as `load` for sqlx.

use std::time::Duration;

use diesel::sql_types::Integer;
use diesel_advisory::Key;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::bb8::Pool;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

const TASKS_PER_PROCESS: usize = 16;
const PER_TASK: usize = 500;
const KEYS: usize = 4;

#[derive(diesel::QueryableByName)]
struct N {
    #[diesel(sql_type = Integer)]
    n: i32,
}

async fn pool(url: &str, size: u32) -> Pool<AsyncPgConnection> {
    Pool::builder()
        .max_size(size)
        .build(AsyncDieselConnectionManager::new(url))
        .await
        .unwrap()
}

async fn increments(url: &str, table: &str, ns: i32, app: &str) {
    let pool = pool(url, 8).await;
    let mut config: tokio_postgres::Config = url.parse().unwrap();
    config.application_name(app);
    let locker = diesel_advisory::Locker::with_config(config, Default::default());
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

async fn rmw(pool: &Pool<AsyncPgConnection>, table: &str, row: i32) {
    let mut conn = pool.get().await.unwrap();
    let n = diesel::sql_query(format!("SELECT n FROM {table} WHERE id = $1"))
        .bind::<Integer, _>(row)
        .get_result::<N>(&mut *conn)
        .await
        .unwrap()
        .n;
    drop(conn); // the write may use another connection: only the lease protects the row
    tokio::task::yield_now().await;
    let mut conn = pool.get().await.unwrap();
    diesel::sql_query(format!("UPDATE {table} SET n = $2 WHERE id = $1"))
        .bind::<Integer, _>(row)
        .bind::<Integer, _>(n + 1)
        .execute(&mut *conn)
        .await
        .unwrap();
}

async fn exec(url: &str, sql: String) {
    let p = pool(url, 1).await;
    let mut conn = p.get().await.unwrap();
    diesel::sql_query(sql).execute(&mut *conn).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_32_tasks_500_increments_is_exactly_16000() {
    let url = tokio::task::spawn_blocking(|| advisory_tests::db().url().to_owned())
        .await
        .unwrap();
    let table = format!("dlocker_load_{:08x}", rand::random::<u32>());
    let ns = advisory_tests::unique_i32();
    exec(
        &url,
        format!("CREATE TABLE {table} (id int PRIMARY KEY, n int NOT NULL)"),
    )
    .await;
    exec(
        &url,
        format!(
            "INSERT INTO {table} SELECT g, 0 FROM generate_series(0, {}) g",
            KEYS - 1
        ),
    )
    .await;
    let child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "diesel_load::child", "--ignored", "--nocapture"])
        .env("DLOCKER_LOAD", format!("{url} {table} {ns}"))
        .spawn()
        .unwrap();
    increments(&url, &table, ns, "dlocker-load-parent").await;
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the child process finishes")
        .unwrap();
    assert!(out.status.success(), "child failed: {:?}", out.status);
    let p = pool(&url, 1).await;
    let mut conn = p.get().await.unwrap();
    let total = diesel::sql_query(format!("SELECT sum(n)::int4 AS n FROM {table}"))
        .get_result::<N>(&mut *conn)
        .await
        .unwrap()
        .n;
    diesel::sql_query(format!("DROP TABLE {table}"))
        .execute(&mut *conn)
        .await
        .unwrap();
    assert_eq!(
        total as usize,
        2 * TASKS_PER_PROCESS * PER_TASK,
        "lost updates"
    );
}

/// The second process (run by the test above; does nothing when run on its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by two_processes_32_tasks_500_increments_is_exactly_16000"]
async fn child() {
    let Ok(spec) = std::env::var("DLOCKER_LOAD") else {
        return;
    };
    let mut it = spec.split(' ');
    let (url, table, ns) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
    increments(url, table, ns.parse().unwrap(), "dlocker-load-child").await;
}
