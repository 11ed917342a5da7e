//! Issue 4: server-side timeouts. `Error::Timeout` within timeout + margin, `lock_timeout`
//! unchanged afterwards (inside and outside a transaction), a wait the holder ends mid-way
//! succeeds, and failed timed / try transaction attempts leave the transaction usable.

use std::time::{Duration, Instant};

use advisory_common::Key;
use advisory_common::sql::SHOW_LOCK_TIMEOUT;
use advisory_tests::{unique_key, unique_name};
use sqlx::{Connection, PgConnection};
use sqlx_advisory::Error;
use sqlx_advisory::prelude::*;

use crate::support::*;

const T: Duration = Duration::from_millis(150);
const MARGIN: Duration = Duration::from_millis(600);

async fn show_lock_timeout(c: &mut PgConnection) -> String {
    sqlx::query_scalar(SHOW_LOCK_TIMEOUT)
        .fetch_one(c)
        .await
        .unwrap()
}

fn assert_timeout(res: Result<(), Error>, key: Key, started: Instant) {
    let elapsed = started.elapsed();
    match res {
        Err(Error::Timeout { key: k, timeout }) => {
            assert_eq!((k, timeout), (key, T));
        }
        other => panic!("expected Error::Timeout, got {other:?}"),
    }
    assert!(
        elapsed >= T - Duration::from_millis(5),
        "gave up too early: {elapsed:?}"
    );
    assert!(elapsed < T + MARGIN, "gave up too late: {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_arrives_in_time_and_lock_timeout_is_unchanged_outside_a_transaction() {
    let key = unique_key();
    let p = pool(2).await;
    let mut holder = conn().await;
    let h = holder.advisory_lock(key).await.unwrap();

    let started = Instant::now();
    assert_timeout(
        p.advisory_lock_timeout(key, T).await.map(drop),
        key,
        started,
    );
    let started = Instant::now();
    assert_timeout(
        p.advisory_lock_shared_timeout(key, T).await.map(drop),
        key,
        started,
    );

    let mut c = conn().await;
    sqlx::query("SET lock_timeout = '7s'")
        .execute(&mut c)
        .await
        .unwrap();
    let started = Instant::now();
    assert_timeout(
        c.advisory_lock_timeout(key, T).await.map(drop),
        key,
        started,
    );
    assert_eq!(show_lock_timeout(&mut c).await, "7s");
    h.release().await.unwrap();
    let g = c.advisory_lock_timeout(key, T).await.unwrap();
    drop(g);
    assert_eq!(show_lock_timeout(&mut c).await, "7s");
    assert_no_locks(&[key], SOON).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_attempts_inside_a_transaction_keep_it_usable_and_its_lock_timeout() {
    let key = unique_key();
    let id = unique_name("timeout-tx");
    let mut holder = conn().await;
    let h = holder.advisory_lock(key).await.unwrap();
    let mut c = conn().await;
    let mut tx = c.begin().await.unwrap();
    sqlx::query("SET lock_timeout = '7s'")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("INSERT INTO advisory_test_counters (id, value) VALUES ($1, 1)")
        .bind(&id)
        .execute(&mut *tx)
        .await
        .unwrap();

    let started = Instant::now();
    assert_timeout(tx.xact_lock_timeout(key, T).await, key, started);
    let started = Instant::now();
    assert_timeout(tx.xact_lock_shared_timeout(key, T).await, key, started);
    let started = Instant::now();
    assert_timeout(
        tx.advisory_lock_timeout(key, T).await.map(drop),
        key,
        started,
    );
    assert!(!tx.try_xact_lock(key).await.unwrap());
    assert!(!tx.try_xact_lock_shared(key).await.unwrap());
    assert_eq!(show_lock_timeout(&mut tx).await, "7s");

    // the transaction is not doomed: a statement after the failures succeeds, and it commits
    sqlx::query("UPDATE advisory_test_counters SET value = value + 1 WHERE id = $1")
        .bind(&id)
        .execute(&mut *tx)
        .await
        .unwrap();
    h.release().await.unwrap();
    tx.xact_lock_timeout(key, T).await.unwrap(); // free now: succeeds inside the savepoint
    assert_eq!(show_lock_timeout(&mut tx).await, "7s");
    let rows = granted(key).await;
    assert_eq!(rows.len(), 1);
    tx.commit().await.unwrap();
    assert_no_locks(&[key], SOON).await;
    let v: i64 = sqlx::query_scalar("SELECT value FROM advisory_test_counters WHERE id = $1")
        .bind(&id)
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(v, 2, "the committed transaction kept both writes");
    assert_eq!(show_lock_timeout(&mut c).await, "7s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_wait_succeeds_when_the_holder_releases_mid_wait() {
    let key = unique_key();
    let p = pool(2).await;
    let mut holder = conn().await;
    let h = holder.advisory_lock(key).await.unwrap();
    let p2 = p.clone();
    let started = Instant::now();
    let waiter =
        tokio::spawn(async move { p2.advisory_lock_timeout(key, Duration::from_secs(10)).await });
    let w = wait_for_any_waiter(key).await;
    h.release().await.unwrap();
    let g = tokio::time::timeout(SOON, waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(holders(key).await, vec![w]);
    g.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_and_zero_timeouts() {
    let key = unique_key();
    let p = pool(1).await;
    let huge = Duration::from_secs(u64::MAX);
    assert!(matches!(
        p.advisory_lock_timeout(key, huge).await,
        Err(Error::InvalidTimeout(_))
    ));
    let mut c = conn().await;
    let mut tx = c.begin().await.unwrap();
    assert!(matches!(
        tx.xact_lock_timeout(key, huge).await,
        Err(Error::InvalidTimeout(_))
    ));
    tx.commit().await.unwrap();
    // zero: waits at most 1 ms, succeeds on a free key
    let g = p.advisory_lock_timeout(key, Duration::ZERO).await.unwrap();
    assert_eq!(granted(key).await.len(), 1);
    g.release().await.unwrap();
}
