//! `AsyncBeginXactLockExt` (diesel-async): the promises of `begin`; cancellation is in
//! `begin_faults`. Helpers shared with it.

use std::time::{Duration, Instant};

use advisory_common::sql::{self, Mode};
use advisory_common::{Key, LockMode};
use advisory_tests::{assert_no_locks, granted, unique_i32, unique_key, wait_until};
use diesel::QueryableByName;
use diesel::connection::TransactionManagerStatus;
use diesel::sql_types::{BigInt, Text};
use diesel_advisory::Error;
use diesel_advisory::prelude::*;
use diesel_async::{
    AnsiTransactionManager, AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection,
    TransactionManager,
};
use tokio::sync::oneshot;
use tokio::task::spawn_blocking;

use super::begin::{activity, assert_idle_outside_transaction, locks_of, row_exists};
use super::{ASYNC_RELEASE, aconn, apid};

type Tm = AnsiTransactionManager;

pub(crate) fn status(c: &mut AsyncPgConnection) -> &mut TransactionManagerStatus {
    <Tm as TransactionManager<AsyncPgConnection>>::transaction_manager_status_mut(c)
}

pub(crate) fn depth(c: &mut AsyncPgConnection) -> Option<u32> {
    status(c).transaction_depth().unwrap().map(|d| d.get())
}

pub(crate) fn marked_broken(c: &mut AsyncPgConnection) -> bool {
    matches!(status(c), TransactionManagerStatus::InError)
}

#[derive(QueryableByName)]
struct Setting {
    #[diesel(sql_type = Text)]
    lock_timeout: String,
}

async fn lock_timeout(c: &mut AsyncPgConnection) -> String {
    diesel::sql_query(sql::SHOW_LOCK_TIMEOUT)
        .get_result::<Setting>(c)
        .await
        .unwrap()
        .lock_timeout
}

async fn insert_row(c: &mut AsyncPgConnection, id: &str) -> diesel::QueryResult<usize> {
    diesel::sql_query("INSERT INTO advisory_test_counters (id, value) VALUES ($1, 1)")
        .bind::<Text, _>(id)
        .execute(c)
        .await
}

/// Asked on the connection itself: is it outside any transaction? Two statements get two
/// transaction ids unless a transaction opened earlier spans both (`now()` cannot tell: with the
/// extended protocol the transaction starts at Parse, before the statement's timestamp). Errors
/// inside an aborted transaction.
pub(crate) async fn outside_transaction(c: &mut AsyncPgConnection) -> bool {
    #[derive(QueryableByName)]
    struct Xid {
        #[diesel(sql_type = BigInt)]
        xid: i64,
    }
    let mut xid = async || {
        diesel::sql_query("SELECT pg_current_xact_id()::text::int8 AS xid")
            .get_result::<Xid>(&mut *c)
            .await
            .expect("a usable connection")
            .xid
    };
    xid().await != xid().await
}

pub(crate) fn holder_pids(key: Key) -> Vec<i32> {
    granted(key).into_iter().map(|l| l.pid).collect()
}

pub(crate) async fn wait_waiting(key: Key, pid: i32) {
    spawn_blocking(move || {
        wait_until(
            &[key],
            ASYNC_RELEASE,
            "the batch waiting on the server",
            |r| r.iter().any(|l| l.pid == pid && !l.granted),
        )
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_is_held_from_the_start_in_its_mode_and_released_by_commit_and_rollback() {
    let mut c = aconn().await;
    let c_pid = apid(&mut c).await;
    let t = Duration::from_secs(5);
    for (mode, want) in [
        (Mode::Exclusive, LockMode::Exclusive),
        (Mode::Shared, LockMode::Shared),
    ] {
        for timed in [false, true] {
            let key = if timed {
                Key::Pair(unique_i32(), 4)
            } else {
                unique_key()
            };
            let id = format!("begin-async-{key}-{want:?}-{timed}");
            let batch = sql::lock_then_begin(mode, key, timed.then_some(5000));
            let body = async |c: &mut AsyncPgConnection| -> Result<i32, Error> {
                let a = activity(c_pid);
                assert_eq!(a.query.as_deref(), Some(batch.as_str()));
                assert_eq!(a.state.as_deref(), Some("idle in transaction"));
                let held = granted(key);
                assert_eq!(held.len(), 1, "{held:?}");
                assert_eq!((held[0].pid, held[0].mode), (c_pid, want));
                assert_eq!(depth(c), Some(1));
                insert_row(c, &id).await?;
                Ok(7)
            };
            let r = match (mode, timed) {
                (Mode::Exclusive, false) => c.transaction_with_xact_lock(key, body).await,
                (Mode::Shared, false) => c.transaction_with_xact_lock_shared(key, body).await,
                (Mode::Exclusive, true) => c.transaction_with_xact_lock_timeout(key, t, body).await,
                (Mode::Shared, true) => {
                    c.transaction_with_xact_lock_shared_timeout(key, t, body)
                        .await
                }
            };
            assert_eq!(r.unwrap(), 7);
            assert!(granted(key).is_empty(), "COMMIT released it");
            assert!(row_exists(&id));
            assert_eq!(depth(&mut c), None);
            assert_idle_outside_transaction(c_pid);
        }
    }
    let key = unique_key();
    let id = format!("begin-async-rollback-{key}");
    let r = c
        .transaction_with_xact_lock::<(), diesel::result::Error, _>(key, async |c| {
            insert_row(c, &id).await?;
            assert_eq!(holder_pids(key), vec![c_pid]);
            Err(diesel::result::Error::RollbackTransaction)
        })
        .await;
    assert!(matches!(r, Err(diesel::result::Error::RollbackTransaction)));
    assert!(granted(key).is_empty());
    assert!(!row_exists(&id));
    assert_eq!(depth(&mut c), None);
    assert_idle_outside_transaction(c_pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_transaction_waits_and_shared_ones_coexist() {
    for key in [unique_key(), Key::Pair(unique_i32(), -8)] {
        for shared in [false, true] {
            let (entered, inside) = oneshot::channel();
            let (go, release) = oneshot::channel::<()>();
            let a = tokio::spawn(async move {
                let mut a = aconn().await;
                let body = async move |_: &mut AsyncPgConnection| {
                    entered.send(()).unwrap();
                    release.await.unwrap();
                    Ok::<_, Error>(())
                };
                if shared {
                    a.transaction_with_xact_lock_shared(key, body).await
                } else {
                    a.transaction_with_xact_lock(key, body).await
                }
            });
            inside.await.unwrap();
            let mut b = aconn().await;
            let b_pid = apid(&mut b).await;
            if shared {
                // a shared holder lets a shared one in at once and keeps an exclusive one out
                let both = b
                    .transaction_with_xact_lock_shared_timeout(key, ASYNC_RELEASE, async |_| {
                        Ok::<_, Error>(granted(key))
                    })
                    .await
                    .unwrap();
                assert_eq!(both.len(), 2);
                assert!(both.iter().all(|l| l.mode == LockMode::Shared));
                let r = b
                    .transaction_with_xact_lock_timeout(
                        key,
                        Duration::from_millis(50),
                        async |_| Ok::<_, Error>(()),
                    )
                    .await;
                assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
                go.send(()).unwrap();
            } else {
                let waiter = tokio::spawn(async move {
                    b.transaction_with_xact_lock(key, async |_| Ok::<_, Error>(holder_pids(key)))
                        .await
                });
                wait_waiting(key, b_pid).await;
                go.send(()).unwrap();
                assert_eq!(waiter.await.unwrap().unwrap(), vec![b_pid]);
            }
            a.await.unwrap().unwrap();
            assert_no_locks(&[key], ASYNC_RELEASE);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_out_begin_leaves_no_transaction_no_lock_and_lock_timeout_unchanged() {
    let (mut c, mut holder) = (aconn().await, aconn().await);
    let key = unique_key();
    let c_pid = apid(&mut c).await;
    let held = holder.advisory_lock(key).await.unwrap();
    c.batch_execute("SET lock_timeout = '7s'").await.unwrap();
    let t = Duration::from_millis(200);
    for shared in [false, true] {
        let start = Instant::now();
        let body =
            async |_: &mut AsyncPgConnection| -> Result<(), Error> { panic!("must not run") };
        let r = if shared {
            c.transaction_with_xact_lock_shared_timeout(key, t, body)
                .await
        } else {
            c.transaction_with_xact_lock_timeout(key, t, body).await
        };
        let took = start.elapsed();
        match r {
            Err(Error::Timeout { key: k, timeout }) => assert_eq!((k, timeout), (key, t)),
            other => panic!("{other:?}"),
        }
        assert!(took >= t.mul_f32(0.9), "{took:?}");
        assert!(took < t + Duration::from_secs(2), "{took:?}");
        assert_eq!(depth(&mut c), None);
        assert!(!marked_broken(&mut c));
        assert_idle_outside_transaction(c_pid);
        assert!(locks_of(c_pid).is_empty());
        assert_eq!(lock_timeout(&mut c).await, "7s");
        assert!(outside_transaction(&mut c).await);
    }
    let waiter = tokio::spawn(async move {
        let r = c
            .transaction_with_xact_lock_timeout(key, Duration::from_secs(20), async |c| {
                Ok::<_, Error>((holder_pids(key), lock_timeout(c).await))
            })
            .await;
        (r, c)
    });
    wait_waiting(key, c_pid).await;
    held.release().await.unwrap();
    let (r, mut c) = waiter.await.unwrap();
    assert_eq!(r.unwrap(), (vec![c_pid], "7s".to_owned()));
    assert_eq!(lock_timeout(&mut c).await, "7s");
    assert_no_locks(&[key], ASYNC_RELEASE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn already_in_a_transaction_sends_nothing_and_the_outer_one_stays_usable() {
    let mut c = aconn().await;
    let c_pid = apid(&mut c).await;
    let key = unique_key();
    let id = format!("begin-async-outer-{key}");
    c.transaction::<_, Error, _>(async |c| {
        c.batch_execute("SELECT 'marker-before-async-begin'")
            .await?;
        let t = Duration::from_millis(5);
        let never = async |_: &mut AsyncPgConnection| -> Result<(), Error> { panic!("no") };
        for r in [
            c.transaction_with_xact_lock(key, never).await,
            c.transaction_with_xact_lock_shared(key, never).await,
            c.transaction_with_xact_lock_timeout(key, t, never).await,
            c.transaction_with_xact_lock_shared_timeout(key, t, never)
                .await,
        ] {
            assert!(
                matches!(r, Err(Error::AlreadyInTransaction { key: k }) if k == key),
                "{r:?}"
            );
        }
        assert_eq!(
            activity(c_pid).query.as_deref(),
            Some("SELECT 'marker-before-async-begin'")
        );
        c.xact_lock(key).await?;
        insert_row(c, &id).await?;
        Ok(())
    })
    .await
    .unwrap();
    assert!(row_exists(&id));
    assert!(granted(key).is_empty());
    assert!(!marked_broken(&mut c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn question_mark_works_with_both_error_types() {
    let (mut c, mut other) = (aconn().await, aconn().await);
    let (key, busy) = (unique_key(), unique_key());
    let _held = other.advisory_lock(busy).await.unwrap();
    let t = Duration::from_millis(20);
    let r = c
        .transaction_with_xact_lock::<(), diesel::result::Error, _>(key, async |c| {
            c.xact_lock_timeout(busy, t).await?;
            Ok(())
        })
        .await;
    let r = r.map_err(Error::from);
    assert!(
        matches!(r, Err(Error::Timeout { key: k, .. }) if k == busy),
        "{r:?}"
    );
    let r = c
        .transaction_with_xact_lock_timeout::<(), diesel::result::Error, _>(busy, t, async |_| {
            Ok(())
        })
        .await;
    assert!(matches!(r.map_err(Error::from), Err(Error::Timeout { .. })));
    let r = c
        .transaction_with_xact_lock::<(), Error, _>(key, async |c| {
            diesel::sql_query("SELECT 1/0").execute(c).await?;
            Ok(())
        })
        .await;
    assert!(matches!(r, Err(Error::Database(_))), "{r:?}");
    assert!(granted(key).is_empty());
    assert_eq!(depth(&mut c), None);
}
