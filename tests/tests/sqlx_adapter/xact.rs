//! Issue 6: transaction locks are held until COMMIT / ROLLBACK and released by both;
//! `NotInTransaction` outside one (nothing sent); session locks taken inside a transaction
//! survive its rollback.

use advisory_common::LockMode;
use advisory_tests::unique_key;
use sqlx::{Connection, Row};
use sqlx_advisory::Error;
use sqlx_advisory::prelude::*;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_locks_are_held_until_commit_or_rollback() {
    let p = pool(2).await;
    for commit in [true, false] {
        let (k1, k2, k3, k4) = (unique_key(), unique_key(), unique_key(), unique_key());
        let mut tx = p.begin().await.unwrap();
        let my_pid = pid(&mut tx).await;
        tx.xact_lock(k1).await.unwrap();
        tx.xact_lock_shared(k2).await.unwrap();
        assert!(tx.try_xact_lock(k3).await.unwrap());
        assert!(tx.try_xact_lock_shared(k4).await.unwrap());
        let rows = wait_until(&[k1, k2, k3, k4], SOON, "four transaction locks", |r| {
            r.len() == 4
        })
        .await;
        assert!(rows.iter().all(|r| r.pid == my_pid && r.granted));
        let shared = rows.iter().filter(|r| r.mode == LockMode::Shared).count();
        assert_eq!(shared, 2);
        // other sessions are excluded while the transaction is open
        let mut other = p.begin().await.unwrap();
        assert!(!other.try_xact_lock(k1).await.unwrap());
        assert!(other.try_xact_lock_shared(k2).await.unwrap());
        other.rollback().await.unwrap();
        if commit {
            tx.commit().await.unwrap();
        } else {
            tx.rollback().await.unwrap();
        }
        assert_no_locks(&[k1, k2, k3, k4], SOON).await;
    }
    // a dropped Transaction (sqlx queues its ROLLBACK) releases too
    let key = unique_key();
    let mut tx = p.begin().await.unwrap();
    tx.xact_lock(key).await.unwrap();
    drop(tx);
    assert_no_locks(&[key], SOON).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_a_transaction_nothing_is_sent() {
    let mut c = conn().await;
    let my_pid = pid(&mut c).await;
    let key = unique_key();
    sqlx::query("SELECT 'marker-before-xact-lock'")
        .execute(&mut c)
        .await
        .unwrap();
    for r in [
        c.xact_lock(key).await,
        c.xact_lock_shared(key).await,
        c.try_xact_lock(key).await.map(drop),
        c.try_xact_lock_shared(key).await.map(drop),
        c.xact_lock_timeout(key, SOON).await,
        c.xact_lock_shared_timeout(key, SOON).await,
    ] {
        assert!(
            matches!(r, Err(Error::NotInTransaction { key: k }) if k == key),
            "{r:?}"
        );
    }
    // the server's last statement for this session is still the marker: nothing was sent
    let mut observer = conn().await;
    let last: String = sqlx::query("SELECT query FROM pg_stat_activity WHERE pid = $1")
        .bind(my_pid)
        .fetch_one(&mut observer)
        .await
        .unwrap()
        .get(0);
    assert_eq!(last, "SELECT 'marker-before-xact-lock'");
    assert_no_locks(&[key], SOON).await;
    // on a PoolConnection outside a transaction as well
    let p = pool(1).await;
    let mut pc = p.acquire().await.unwrap();
    assert!(matches!(
        pc.xact_lock(key).await,
        Err(Error::NotInTransaction { .. })
    ));
}

/// A session lock inside a transaction is refused, nothing sent: if the transaction aborted, the
/// guard's unlock would be refused by the server until the transaction ended, and the lock would
/// outlive its guard. The transaction stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_locks_are_refused_inside_a_transaction() {
    let mut c = conn().await;
    let my_pid = pid(&mut c).await;
    let key = unique_key();
    let mut tx = c.begin().await.unwrap();
    sqlx::query("SELECT 'marker-before-session-lock'")
        .execute(&mut *tx)
        .await
        .unwrap();
    for res in [
        tx.advisory_lock(key).await.map(drop),
        tx.advisory_lock_shared(key).await.map(drop),
        tx.try_advisory_lock(key).await.map(drop),
        tx.advisory_lock_timeout(key, SOON).await.map(drop),
    ] {
        assert!(
            matches!(res, Err(Error::AlreadyInTransaction { key: k }) if k == key),
            "{res:?}"
        );
    }
    // the server's last statement for this session is still the marker: nothing was sent
    let mut observer = conn().await;
    let last: String = sqlx::query("SELECT query FROM pg_stat_activity WHERE pid = $1")
        .bind(my_pid)
        .fetch_one(&mut observer)
        .await
        .unwrap()
        .get(0);
    assert_eq!(last, "SELECT 'marker-before-session-lock'");
    tx.xact_lock(key).await.unwrap();
    tx.rollback().await.unwrap();
    assert_no_locks(&[key], SOON).await;
}
