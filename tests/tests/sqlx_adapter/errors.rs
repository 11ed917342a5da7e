//! Issue 7 (deadlock) and the error conversions: `?` works from `sqlx::Error` into
//! `sqlx_advisory::Error` and back, inside sqlx's transaction closures, without losing SQLSTATEs.

use std::sync::Arc;
use std::time::Duration;

use advisory_common::ErrorKind;
use advisory_tests::unique_key;
use sqlx::Connection;
use sqlx_advisory::Error;
use sqlx_advisory::prelude::*;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlock_between_two_sessions_is_error_deadlock() {
    let (k1, k2) = (unique_key(), unique_key());
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let side = |first, second, barrier: Arc<tokio::sync::Barrier>| {
        tokio::spawn(async move {
            let mut c = conn().await;
            let mut g1 = c.advisory_lock(first).await.unwrap();
            barrier.wait().await;
            let res = g1.advisory_lock(second).await.map(drop);
            // the victim lets go of its first lock so the survivor can finish
            drop(g1);
            res
        })
    };
    let a = side(k1, k2, barrier.clone());
    let b = side(k2, k1, barrier);
    let (ra, rb) = (a.await.unwrap(), b.await.unwrap());
    let (victim, expected_key) = match (&ra, &rb) {
        (Err(e), Ok(())) => (e, k2),
        (Ok(()), Err(e)) => (e, k1),
        other => panic!("expected exactly one deadlock victim: {other:?}"),
    };
    match victim {
        Error::Deadlock { key, source } => {
            assert_eq!(*key, expected_key);
            let code = source.as_database_error().unwrap().code().unwrap();
            assert_eq!(code, "40P01");
        }
        other => panic!("expected Error::Deadlock, got {other:?}"),
    }
    assert_eq!(victim.kind(), Some(ErrorKind::Deadlock));
    assert_no_locks(&[k1, k2], SOON).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn question_mark_works_both_ways_inside_a_sqlx_transaction_closure() {
    let key = unique_key();
    let held = unique_key();
    let p = pool(2).await;
    let _h = p.advisory_lock(held).await.unwrap();
    let mut c = conn().await;

    // sqlx_advisory::Error -> sqlx::Error inside Connection::transaction
    let r: Result<i32, sqlx::Error> = c
        .transaction(|tx| {
            Box::pin(async move {
                tx.xact_lock(key).await?;
                tx.xact_lock_timeout(held, Duration::from_millis(20))
                    .await?;
                Ok(1)
            })
        })
        .await;
    let err = r.unwrap_err();
    assert_eq!(err.as_database_error().unwrap().code().unwrap(), "55P03");
    // ... and back, unchanged
    match Error::from(err) {
        Error::Timeout { key: k, timeout } => {
            assert_eq!((k, timeout), (held, Duration::from_millis(20)))
        }
        other => panic!("{other:?}"),
    }
    assert_no_locks(&[key], SOON).await; // the closure's transaction was rolled back

    // sqlx::Error -> sqlx_advisory::Error keeps the SQLSTATE
    async fn divide(c: &mut sqlx::PgConnection) -> Result<(), Error> {
        sqlx::query("SELECT 1/0").execute(c).await?;
        Ok(())
    }
    match divide(&mut c).await.unwrap_err() {
        Error::Database(e) => {
            assert_eq!(e.as_database_error().unwrap().code().unwrap(), "22012")
        }
        other => panic!("{other:?}"),
    }
    // refused before anything was sent: not presented as a database error, and back unchanged
    let nit = sqlx::Error::from(Error::NotInTransaction { key });
    assert!(nit.as_database_error().is_none());
    assert!(matches!(nit, sqlx::Error::Configuration(_)));
    assert!(!nit.to_string().contains("database"), "{nit}");
    assert!(matches!(Error::from(nit), Error::NotInTransaction { key: k } if k == key));
    let bad = sqlx::Error::from(Error::InvalidTimeout(
        advisory_common::timeout_millis(Duration::from_secs(u64::MAX)).unwrap_err(),
    ));
    assert!(matches!(Error::from(bad), Error::InvalidTimeout(_)));
    // a variant that carries a driver error gives back that very error
    let db = sqlx::Error::from(Error::Database(sqlx::Error::RowNotFound));
    assert!(matches!(db, sqlx::Error::RowNotFound));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_checkout_failure_is_error_pool() {
    let p = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(2))
        .connect(&url().await)
        .await
        .unwrap();
    let key = unique_key();
    let g = p.advisory_lock(key).await.unwrap(); // the only connection
    let err = p.try_advisory_lock(unique_key()).await.unwrap_err();
    assert!(
        matches!(err, Error::Pool(sqlx::Error::PoolTimedOut)),
        "{err:?}"
    );
    drop(g);
    p.close().await;
    let err = p.advisory_lock(key).await.unwrap_err();
    assert!(
        matches!(err, Error::Pool(sqlx::Error::PoolClosed)),
        "{err:?}"
    );
}
