//! diesel-async `AsyncPgConnection` (borrowed).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use advisory_common::{Key, LockMode};
use advisory_tests::{assert_no_locks, granted, unique_key, wait_until};
use diesel::sql_types::Text;
use diesel::{IntoSql, QueryableByName};
use diesel_advisory::Error;
use diesel_advisory::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use rand::Rng;

use super::{ASYNC_RELEASE, aconn, apid};

#[derive(QueryableByName)]
struct Setting {
    #[diesel(sql_type = Text)]
    lock_timeout: String,
}

async fn lock_timeout(c: &mut AsyncPgConnection) -> String {
    diesel::sql_query(advisory_common::sql::SHOW_LOCK_TIMEOUT)
        .get_result::<Setting>(c)
        .await
        .unwrap()
        .lock_timeout
}

async fn select_one(c: &mut AsyncPgConnection) -> i32 {
    diesel::select(1.into_sql::<diesel::sql_types::Integer>())
        .get_result(c)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guard_release_shared_and_not_held() {
    let (mut a, mut b) = (aconn().await, aconn().await);
    let key = unique_key();
    let a_pid = apid(&mut a).await;
    let mut g = a.advisory_lock(key).await.unwrap();
    assert!(g.is_held().await.unwrap());
    assert_eq!(
        granted(key).iter().map(|l| l.pid).collect::<Vec<_>>(),
        vec![a_pid]
    );
    assert!(b.try_advisory_lock_shared(key).await.unwrap().is_none());
    g.release().await.unwrap();
    assert!(granted(key).is_empty());
    let g1 = a.advisory_lock_shared(key).await.unwrap();
    let g2 = b.try_advisory_lock_shared(key).await.unwrap().unwrap();
    assert!(granted(key).iter().all(|l| l.mode == LockMode::Shared));
    assert_eq!(granted(key).len(), 2);
    g2.release().await.unwrap();
    let mut g1 = g1;
    g1.batch_execute(advisory_common::sql::UNLOCK_ALL)
        .await
        .unwrap();
    assert!(matches!(g1.release().await, Err(Error::NotHeld { .. })));
}

/// Drop cannot await: it queues the unlock on the connection's background task. The lock is
/// released without the connection ever being used again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_guard_releases_without_further_use_of_the_connection() {
    let mut c = aconn().await;
    for key in [unique_key(), Key::Pair(advisory_tests::unique_i32(), 5)] {
        let g = c.advisory_lock(key).await.unwrap();
        assert_eq!(granted(key).len(), 1);
        drop(g);
        assert_no_locks(&[key], ASYNC_RELEASE);
        let g = c.advisory_lock_shared(key).await.unwrap();
        drop(g);
        assert_no_locks(&[key], ASYNC_RELEASE);
    }
    // and the connection is in sync afterwards
    assert_eq!(select_one(&mut c).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_typed_setting_unchanged_transaction_usable() {
    let (mut c, mut holder) = (aconn().await, aconn().await);
    let key = unique_key();
    let held = holder.advisory_lock(key).await.unwrap();
    c.batch_execute("SET lock_timeout = '7s'").await.unwrap();
    let t = Duration::from_millis(30);
    match c.advisory_lock_timeout(key, t).await {
        Err(Error::Timeout { key: k, timeout }) => assert_eq!((k, timeout), (key, t)),
        other => panic!("{other:?}"),
    }
    assert_eq!(lock_timeout(&mut c).await, "7s");
    c.transaction::<_, Error, _>(async |c| {
        assert!(matches!(
            c.xact_lock_timeout(key, t).await,
            Err(Error::Timeout { .. })
        ));
        // a session lock is refused inside a transaction, nothing sent
        assert!(matches!(
            c.advisory_lock_shared_timeout(key, t).await,
            Err(Error::AlreadyInTransaction { .. })
        ));
        assert_eq!(lock_timeout(c).await, "7s");
        diesel::sql_query("INSERT INTO advisory_test_counters (id, value) VALUES ($1, 1)")
            .bind::<Text, _>(format!("atimeout-{key}"))
            .execute(c)
            .await?;
        Ok(())
    })
    .await
    .unwrap();
    // success when released mid-wait
    let c_pid = apid(&mut c).await;
    let waiter = tokio::spawn(async move {
        let g = c.advisory_lock_timeout(key, Duration::from_secs(20)).await;
        g.map(|g| g.key())
    });
    tokio::task::spawn_blocking(move || {
        wait_until(&[key], Duration::from_secs(10), "waiter queued", |rows| {
            rows.iter().any(|l| l.pid == c_pid && !l.granted)
        })
    })
    .await
    .unwrap();
    held.release().await.unwrap();
    assert_eq!(waiter.await.unwrap().unwrap(), key);
    assert_no_locks(&[key], ASYNC_RELEASE);
}

/// Inside a diesel-async transaction a session lock is refused, nothing sent, the transaction
/// still usable (the guard could not release it once the transaction aborts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_lock_inside_a_transaction_is_refused_and_nothing_is_sent() {
    let mut c = aconn().await;
    let c_pid = apid(&mut c).await;
    let key = unique_key();
    let t = Duration::from_millis(5);
    c.transaction::<_, Error, _>(async |c| {
        c.batch_execute("SELECT 'marker-before-session-lock'")
            .await?;
        for r in [
            c.advisory_lock(key).await.map(drop),
            c.advisory_lock_shared(key).await.map(drop),
            c.try_advisory_lock(key).await.map(drop),
            c.try_advisory_lock_shared(key).await.map(drop),
            c.advisory_lock_timeout(key, t).await.map(drop),
            c.advisory_lock_shared_timeout(key, t).await.map(drop),
        ] {
            assert!(
                matches!(r, Err(Error::AlreadyInTransaction { key: k }) if k == key),
                "{r:?}"
            );
        }
        let last = tokio::task::spawn_blocking(move || super::begin::activity(c_pid).query)
            .await
            .unwrap();
        assert_eq!(last.as_deref(), Some("SELECT 'marker-before-session-lock'"));
        c.xact_lock(key).await
    })
    .await
    .unwrap();
    assert!(granted(key).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xact_locks_and_question_mark() {
    let mut c = aconn().await;
    let key = unique_key();
    assert!(matches!(
        c.xact_lock(key).await,
        Err(Error::NotInTransaction { key: k }) if k == key
    ));
    c.transaction::<_, diesel::result::Error, _>(async |c| {
        c.xact_lock(key).await?;
        assert!(c.try_xact_lock_shared(Key::Pair(9, 9)).await?);
        assert_eq!(granted(key).len(), 1);
        Ok(())
    })
    .await
    .unwrap();
    assert!(granted(key).is_empty());
    let r = c
        .transaction::<(), Error, _>(async |c| {
            c.xact_lock_shared(key).await?;
            assert_eq!(granted(key).len(), 1);
            Err(Error::NotHeld { key })
        })
        .await;
    assert!(matches!(r, Err(Error::NotHeld { .. })));
    assert!(granted(key).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_are_prepared_once_and_cached() {
    let mut c = aconn().await;
    for _ in 0..3 {
        c.advisory_lock(unique_key())
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
    }
    #[derive(QueryableByName)]
    struct S {
        #[diesel(sql_type = Text)]
        statement: String,
    }
    let prepared: Vec<String> = diesel::sql_query("SELECT statement FROM pg_prepared_statements")
        .load::<S>(&mut c)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.statement)
        .collect();
    use advisory_common::KeySpace;
    use advisory_common::sql::{Mode, Scope, Wait, lock_sql, unlock_sql};
    for text in [
        lock_sql(
            Scope::Session,
            Mode::Exclusive,
            Wait::Block,
            KeySpace::BigInt,
        ),
        unlock_sql(Mode::Exclusive, KeySpace::BigInt),
    ] {
        assert_eq!(
            prepared.iter().filter(|s| *s == text).count(),
            1,
            "{prepared:#?}"
        );
    }
}

/// What a caller of a cancelled waiting acquire on a borrowed connection observes: the server
/// keeps waiting, the caller's next query runs after that wait, the lock is granted then and
/// released at once by the queued unlock; nothing stays held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_wait_on_borrowed_connection_is_released_when_granted() {
    let (mut c, mut holder) = (aconn().await, aconn().await);
    let key = unique_key();
    let c_pid = apid(&mut c).await;
    let held = holder.advisory_lock(key).await.unwrap();
    let r = tokio::time::timeout(Duration::from_millis(50), c.advisory_lock(key)).await;
    assert!(r.is_err(), "timed out client-side");
    drop(r);
    wait_until(
        &[key],
        ASYNC_RELEASE,
        "the server still waits for c",
        |rows| rows.iter().any(|l| l.pid == c_pid && !l.granted),
    );
    let next = tokio::spawn(async move {
        let one = select_one(&mut c).await;
        (one, c)
    });
    held.release().await.unwrap();
    let (one, mut c) = next.await.unwrap();
    assert_eq!(one, 1, "the next query works, after the wait ended");
    assert_no_locks(&[key], ASYNC_RELEASE);
    assert!(c.try_advisory_lock(key).await.unwrap().is_some());
}

/// Holds and releases `key` on its own connection in a loop until stopped.
pub(crate) fn contend(key: Key) -> (Arc<AtomicBool>, tokio::task::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let task = tokio::spawn(async move {
        let mut c = aconn().await;
        while !AtomicBool::load(&flag, Ordering::Relaxed) {
            let (hold, pause) = {
                let mut rng = rand::thread_rng();
                (rng.gen_range(0..1500), rng.gen_range(0..1500))
            };
            let g = c.advisory_lock(key).await.unwrap();
            tokio::time::sleep(Duration::from_micros(hold)).await;
            g.release().await.unwrap();
            tokio::time::sleep(Duration::from_micros(pause)).await;
        }
    });
    (stop, task)
}

/// Stops a [`contend`] task; fails (instead of hanging) if it cannot finish because a lock leaked.
pub(crate) async fn stop_contending(stop: Arc<AtomicBool>, holder: tokio::task::JoinHandle<()>) {
    stop.store(true, Ordering::Relaxed);
    tokio::time::timeout(ASYNC_RELEASE, holder)
        .await
        .expect("the contending session is stuck: a lock leaked")
        .unwrap();
}

/// One random acquire variant against `target`, under a random tiny deadline.
pub(crate) async fn random_cancelled_acquire<L>(target: L, key: Key) -> Option<L::Guard>
where
    L: AsyncLockExt,
{
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_entropy();
    let deadline = Duration::from_micros(rng.gen_range(0..3000));
    let shared = rng.gen_bool(0.5);
    let variant = rng.gen_range(0..3);
    let t = Duration::from_micros(rng.gen_range(0..4000));
    let fut = async move {
        match (variant, shared) {
            (0, false) => target.advisory_lock(key).await.map(Some),
            (0, true) => target.advisory_lock_shared(key).await.map(Some),
            (1, false) => target.try_advisory_lock(key).await,
            (1, true) => target.try_advisory_lock_shared(key).await,
            (_, false) => target.advisory_lock_timeout(key, t).await.map(Some),
            (_, true) => target.advisory_lock_shared_timeout(key, t).await.map(Some),
        }
    };
    match tokio::time::timeout(deadline, fut).await {
        Ok(Ok(g)) => g,
        Ok(Err(Error::Timeout { .. })) | Err(_) => None,
        Ok(Err(e)) => panic!("unexpected error {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_loop_on_borrowed_connection_leaks_nothing() {
    let key = unique_key();
    let (stop, holder) = contend(key);
    let mut c = aconn().await;
    for i in 0..500 {
        if let Some(g) = random_cancelled_acquire(&mut c, key).await {
            if i % 2 == 0 {
                g.release().await.unwrap();
            } else {
                drop(g);
            }
        }
    }
    stop_contending(stop, holder).await;
    assert_no_locks(&[key], ASYNC_RELEASE);
    assert_eq!(select_one(&mut c).await, 1);
    assert!(c.try_advisory_lock(key).await.unwrap().is_some());
}
