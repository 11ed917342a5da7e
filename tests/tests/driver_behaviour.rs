//! The driver behaviour the adapters rely on beyond the drivers' documented API (README, "Internal
//! and `#[doc(hidden)]` driver APIs relied on"). If an upgrade of sqlx, diesel or diesel-async
//! changes any of it, these tests fail here, loudly, rather than the guarantees failing quietly.

use std::task::Poll;
use std::time::Duration;

use advisory_common::Key;
use advisory_tests::unique_key;
use diesel::connection::{AnsiTransactionManager, TransactionManager};
use diesel::prelude::*;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection as _, PgConnection as SqlxConn};

const SOON: Duration = Duration::from_secs(5);

async fn url() -> String {
    tokio::task::spawn_blocking(|| advisory_tests::db().url().to_owned())
        .await
        .unwrap()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// Wait (off the async workers) until `key` is held by exactly one session.
async fn held_once(key: Key, what: &'static str) {
    blocking(move || {
        advisory_tests::wait_until(&[key], SOON, what, |r| r.len() == 1 && r[0].granted)
    })
    .await;
}

async fn assert_no_locks(key: Key) {
    blocking(move || advisory_tests::assert_no_locks(&[key], SOON)).await;
}

fn lock_sql(key: Key) -> String {
    match key.value() {
        advisory_common::KeyValue::BigInt(k) => format!("SELECT pg_advisory_lock({k})"),
        advisory_common::KeyValue::Pair(a, b) => format!("SELECT pg_advisory_lock({a}, {b})"),
    }
}

/// sqlx-postgres: the first poll of `begin_with(statement)` queues the statement before awaiting
/// anything, even while the connection still owes the answer of a cancelled query; the
/// connection's next statement then gets its own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlx_begin_with_queues_its_statement_on_the_first_poll_even_when_busy() {
    let mut c = SqlxConn::connect(&url().await).await.unwrap();
    let key = unique_key();
    {
        // busy: a query's answer is still owed
        let mut q = Box::pin(sqlx::query("SELECT pg_sleep(0.3)").execute(&mut c));
        assert!(futures::poll!(q.as_mut()).is_pending());
    }
    {
        let mut b = Box::pin(c.begin_with(sqlx::AssertSqlSafe(lock_sql(key))));
        let first = futures::poll!(b.as_mut());
        assert!(
            matches!(first, Poll::Pending),
            "begin_with completed on its first poll"
        );
    }
    // on the server without any further use of the connection
    held_once(key, "the queued statement ran").await;
    let v: i32 = sqlx::query_scalar("SELECT 11")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(v, 11, "the next statement gets its own answer");
    assert!(!c.is_in_transaction(), "depth 0: nothing counted");
    sqlx::query("SELECT pg_advisory_unlock_all()")
        .execute(&mut c)
        .await
        .unwrap();
    assert_no_locks(key).await;
}

async fn pid(c: &mut SqlxConn) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(c)
        .await
        .unwrap()
}

/// sqlx-core: a `PoolConnection` is checked (every owed answer read) before it is idle in the
/// pool again, and closed if that check fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlx_pool_reads_owed_answers_before_reuse_and_closes_on_error() {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&url().await)
        .await
        .unwrap();
    let key = unique_key();
    let mut pc = pool.acquire().await.unwrap();
    let first = pid(&mut pc).await;
    {
        let mut b = Box::pin(pc.begin_with(sqlx::AssertSqlSafe(lock_sql(key))));
        let _ = futures::poll!(b.as_mut());
    }
    drop(pc);
    let mut pc = pool.acquire().await.unwrap();
    assert_eq!(pid(&mut pc).await, first, "a clean connection is reused");
    held_once(key, "the queued statement ran").await;
    sqlx::query("SELECT pg_advisory_unlock_all()")
        .execute(&mut *pc)
        .await
        .unwrap();
    // The error must still be owed when the connection goes back (if its answer arrives within
    // the one poll, `begin_with` consumes it and there is nothing left to check): retry until so.
    let mut c = pc;
    for attempt in 0.. {
        assert!(
            attempt < 50,
            "the error's answer always arrived within the first poll"
        );
        let before = pid(&mut c).await;
        let owed = {
            let mut b = Box::pin(c.begin_with("SELECT 1/0"));
            futures::poll!(b.as_mut()).is_pending()
        };
        drop(c);
        c = pool.acquire().await.unwrap();
        let now = pid(&mut c).await;
        if owed {
            assert_ne!(
                now, before,
                "a connection whose owed answer was an error is closed, not reused"
            );
            break;
        }
    }
}

/// diesel: `transaction_manager_status_mut` reports the depth of diesel's transactions.
#[test]
fn diesel_transaction_manager_status_reports_the_depth() {
    let mut c = diesel::PgConnection::establish(advisory_tests::db().url()).unwrap();
    let depth = |c: &mut diesel::PgConnection| {
        AnsiTransactionManager::transaction_manager_status_mut(c)
            .transaction_depth()
            .unwrap()
            .map(|d| d.get())
    };
    assert_eq!(depth(&mut c), None);
    c.transaction::<_, diesel::result::Error, _>(|c| {
        assert_eq!(depth(c), Some(1));
        Ok(())
    })
    .unwrap();
    assert_eq!(depth(&mut c), None);
}

/// diesel-async: the first poll of `batch_execute` hands the whole statement to the connection,
/// so dropping the future after that poll still runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diesel_async_batch_execute_is_sent_on_its_first_poll() {
    use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
    let mut c = AsyncPgConnection::establish(&url().await).await.unwrap();
    let key = unique_key();
    {
        let sql = lock_sql(key);
        let mut f = Box::pin(c.batch_execute(&sql));
        let _ = futures::poll!(f.as_mut());
    }
    held_once(key, "the statement ran").await;
    c.batch_execute("SELECT pg_advisory_unlock_all()")
        .await
        .unwrap();
    assert_no_locks(key).await;
}
