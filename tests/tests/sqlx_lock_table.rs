//! Issue 3, behaviour 7 (second half): exhausting the server's shared lock table gives
//! `Error::LockTableFull`, and the adapter's connection stays usable afterwards. A binary of its own
//! (a full lock table would break parallel tests), and its tests are serialized.

use std::time::Duration;

use advisory_common::ErrorKind;
use advisory_tests::{unique_i32, unique_key};
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection};
use sqlx_advisory::Error;
use sqlx_advisory::prelude::*;

/// Serializes this binary's tests (each `#[tokio::test]` has its own runtime; tokio's mutex does not
/// care which).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn url() -> String {
    tokio::task::spawn_blocking(|| advisory_tests::db().url().to_owned())
        .await
        .unwrap()
}

/// Fill the lock table from `filler` until the server runs out of shared memory for locks.
async fn fill(filler: &mut PgConnection) {
    let ns = unique_i32();
    filler
        .execute(AssertSqlSafe(format!(
            "DO $$ BEGIN FOR i IN 1..10000000 LOOP BEGIN PERFORM pg_advisory_lock({ns}, i); \
             EXCEPTION WHEN out_of_memory THEN EXIT; END; END LOOP; END $$"
        )))
        .await
        .unwrap();
}

/// Wait until the pool has an idle connection (a returned checkout is put back by a spawned task).
async fn idle(pool: &sqlx::PgPool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while pool.num_idle() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no pooled connection came back"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn assert_full(r: Result<(), Error>, key: advisory_common::Key) {
    match r {
        Err(Error::LockTableFull { key: k, source }) => {
            assert_eq!(k, key);
            assert_eq!(source.as_database_error().unwrap().code().unwrap(), "53200");
        }
        other => panic!("expected Error::LockTableFull, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_lock_table_is_error_lock_table_full_and_the_connection_stays_usable() {
    let _serial = SERIAL.lock().await;
    let url = url().await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .unwrap();
    let mut c = PgConnection::connect(&url).await.unwrap();
    let mut filler = PgConnection::connect(&url).await.unwrap();
    let key = unique_key();
    // new sessions cannot start while the table is full (FATAL 53200 at startup, which the pool
    // reports as Error::Pool): make sure the pool has an idle connection to reuse
    drop(pool.acquire().await.unwrap());
    idle(&pool).await;
    fill(&mut filler).await;

    let r = c.advisory_lock(key).await.map(drop);
    assert_eq!(
        r.as_ref().unwrap_err().kind(),
        Some(ErrorKind::LockTableFull)
    );
    assert_full(r, key);
    assert_full(c.try_advisory_lock_shared(key).await.map(drop), key);
    assert_full(pool.advisory_lock(key).await.map(drop), key);
    idle(&pool).await; // the refused checkout went back to the pool (not closed)
    assert_full(
        pool.advisory_lock_timeout(key, Duration::from_secs(1))
            .await
            .map(drop),
        key,
    );
    // inside a transaction the timed attempt runs in a savepoint: the transaction survives
    let mut tx = c.begin().await.unwrap();
    assert_full(tx.xact_lock_timeout(key, Duration::from_secs(1)).await, key);
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(one, 1);
    tx.commit().await.unwrap();

    filler
        .execute("SELECT pg_advisory_unlock_all()")
        .await
        .unwrap();

    // the same connection (and the pool) work again
    let g = c.advisory_lock(key).await.unwrap();
    assert_eq!(advisory_tests::granted(key).len(), 1);
    g.release().await.unwrap();
    let g = pool.advisory_lock(key).await.unwrap();
    g.release().await.unwrap();
    advisory_tests::assert_no_locks(&[key], Duration::from_secs(10));
}
