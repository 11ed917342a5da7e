//! Failure paths of `transaction_with_xact_lock`: a deadlock or a lost connection in the begin
//! batch (sync), and cancellation of the async form on a bare connection and on bb8 / deadpool
//! checkouts, checked against the `# Cancel safety` docs.

use std::ops::DerefMut;
use std::thread;
use std::time::{Duration, Instant};

use advisory_common::sql::{self, Mode};
use advisory_tests::{assert_no_locks, unique_key, wait_until};
use diesel::RunQueryDsl as _;
use diesel::sql_types::Integer;
use diesel_advisory::Error;
use diesel_advisory::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use rand::Rng;
use tokio::task::spawn_blocking;
use tokio::time::timeout;

use super::async_api::{contend, stop_contending};
use super::begin::{activity, assert_idle_outside_transaction, locks_of, sync_depth};
use super::begin_async::{depth, holder_pids, marked_broken, outside_transaction, wait_waiting};
use super::{ASYNC_RELEASE, aconn, apid, bb8_pool, conn, deadpool_pool, pid, wait_backend_gone};

/// Wait (with a deadline) until the server reports `pid` idle outside any transaction.
fn wait_idle_outside_transaction(pid: i32) {
    let deadline = Instant::now() + ASYNC_RELEASE;
    loop {
        let a = activity(pid);
        if a.state.as_deref() == Some("idle") && !a.in_xact {
            return;
        }
        assert!(Instant::now() < deadline, "{pid} never became idle: {a:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The begin batch losing a deadlock, and its connection being terminated while it waits, are
/// typed like every other acquire and leave nothing behind.
#[test]
fn deadlock_and_connection_loss_in_the_begin_batch_are_typed() {
    // b's batch waits for k1 (held by a), then a waits for k2 (held by b): the backend that waited
    // first runs the deadlock check first and is failed, normally b. If a was slower than
    // deadlock_timeout to queue, a is the victim instead: try again.
    let mut b_was_victim = false;
    for _ in 0..5 {
        let (mut a, mut b) = (conn(), conn());
        let (k1, k2) = (unique_key(), unique_key());
        let b_pid = pid(&mut b);
        let mut a_k1 = a.advisory_lock(k1).unwrap();
        let tb = thread::spawn(move || {
            let mut b_k2 = b.advisory_lock(k2).unwrap();
            let r = b_k2.transaction_with_xact_lock(k1, |_| Ok::<_, Error>(()));
            (r, sync_depth(&mut b_k2))
        });
        wait_until(&[k1], ASYNC_RELEASE, "b's batch waits for k1", |rows| {
            rows.iter().any(|l| l.pid == b_pid && !l.granted)
        });
        let ra = (&mut *a_k1)
            .advisory_lock_timeout(k2, Duration::from_secs(20))
            .map(drop);
        if ra.is_err() {
            assert!(matches!(ra, Err(Error::Deadlock { .. })), "{ra:?}");
            drop(a_k1);
            let (rb, _) = tb.join().unwrap();
            rb.unwrap();
            continue;
        }
        let (rb, b_depth) = tb.join().unwrap();
        assert!(
            matches!(rb, Err(Error::Deadlock { key, .. }) if key == k1),
            "{rb:?}"
        );
        assert_eq!(b_depth, None);
        assert!(
            locks_of(b_pid).is_empty(),
            "b's session lock went with its guard"
        );
        drop(a_k1);
        assert_no_locks(&[k1, k2], ASYNC_RELEASE);
        b_was_victim = true;
        break;
    }
    assert!(
        b_was_victim,
        "the begin batch was never the deadlock victim in 5 tries"
    );

    let k1 = unique_key();
    let mut holder = conn();
    let _held = holder.advisory_lock(k1).unwrap();
    let (mut c, mut observer) = (conn(), conn());
    let c_pid = pid(&mut c);
    let tc = thread::spawn(move || c.transaction_with_xact_lock(k1, |_| Ok::<_, Error>(())));
    wait_until(&[k1], ASYNC_RELEASE, "c waits for k1", |rows| {
        rows.iter().any(|l| l.pid == c_pid && !l.granted)
    });
    diesel::sql_query("SELECT pg_terminate_backend($1)")
        .bind::<Integer, _>(c_pid)
        .execute(&mut observer)
        .unwrap();
    let rc = tc.join().unwrap();
    assert!(matches!(rc, Err(Error::ConnectionLost { .. })), "{rc:?}");
}

/// A bare connection: what the `# Cancel safety` docs promise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_on_a_bare_connection_rolls_back_behind_and_refuses_transactions() {
    // cancelled while the server waits for the lock
    let (mut c, mut holder) = (aconn().await, aconn().await);
    let key = unique_key();
    let c_pid = apid(&mut c).await;
    let held = holder.advisory_lock(key).await.unwrap();
    let fut = c.transaction_with_xact_lock(key, async |_| -> Result<(), Error> { panic!("no") });
    assert!(timeout(Duration::from_millis(100), fut).await.is_err());
    wait_waiting(key, c_pid).await;
    assert!(marked_broken(&mut c));
    let r = c
        .transaction::<(), diesel::result::Error, _>(async |_| Ok(()))
        .await;
    assert!(
        matches!(r, Err(diesel::result::Error::BrokenTransactionManager)),
        "{r:?}"
    );
    let r = c
        .transaction_with_xact_lock(key, async |_| Ok::<_, Error>(()))
        .await;
    assert!(
        matches!(
            r,
            Err(Error::Database(
                diesel::result::Error::BrokenTransactionManager
            ))
        ),
        "{r:?}"
    );
    let a = activity(c_pid);
    assert_eq!(
        a.query,
        Some(sql::lock_then_begin(Mode::Exclusive, key, None)),
        "nothing sent since"
    );
    // the next statement runs after the wait and the queued ROLLBACK
    let next = tokio::spawn(async move {
        let outside = outside_transaction(&mut c).await;
        (outside, c)
    });
    held.release().await.unwrap();
    let (outside, _c) = next.await.unwrap();
    assert!(
        outside,
        "the statement after the cancelled call is not inside a transaction"
    );
    assert_no_locks(&[key], ASYNC_RELEASE);
    assert_idle_outside_transaction(c_pid);

    // cancelled inside the closure, the lock held: released without any further use of `c`
    let mut c = aconn().await;
    let c_pid = apid(&mut c).await;
    let key = unique_key();
    let fut = c.transaction_with_xact_lock(key, async |_| {
        assert_eq!(holder_pids(key), vec![c_pid]);
        std::future::pending::<()>().await;
        Ok::<_, Error>(())
    });
    assert!(timeout(Duration::from_millis(300), fut).await.is_err());
    assert_no_locks(&[key], ASYNC_RELEASE);
    spawn_blocking(move || wait_idle_outside_transaction(c_pid))
        .await
        .unwrap();
    assert!(marked_broken(&mut c));
}

/// One cancellation after the batch was sent, on a pool of size 1; the key is free again, held by
/// no pool backend, before anything else is asked of the pool; the next checkout is another,
/// clean connection.
async fn pooled_cancel_once<C>(checkout: impl AsyncFn() -> C)
where
    C: DerefMut<Target = AsyncPgConnection> + Send,
{
    let key = unique_key();
    let mut holder = aconn().await;
    let held = holder.advisory_lock(key).await.unwrap();
    let mut pc = checkout().await;
    let p1 = apid(&mut pc).await;
    let fut = pc.transaction_with_xact_lock(key, async |_| Ok::<_, Error>(()));
    assert!(timeout(Duration::from_millis(100), fut).await.is_err());
    wait_waiting(key, p1).await;
    drop(pc);
    held.release().await.unwrap();
    assert_no_locks(&[key], ASYNC_RELEASE);
    assert!(locks_of(p1).is_empty());
    let mut next = checkout().await;
    let p2 = apid(&mut next).await;
    assert_ne!(p2, p1, "the cancelled connection was discarded");
    assert_eq!(depth(&mut next), None);
    assert_idle_outside_transaction(p2);
    assert!(outside_transaction(&mut next).await);
    next.transaction_with_xact_lock(key, async |_| Ok::<_, Error>(()))
        .await
        .unwrap();
    drop(next);
    spawn_blocking(move || wait_backend_gone(p1, ASYNC_RELEASE))
        .await
        .unwrap();
}

/// Random deadlines around random variants against a contended key; every checkout must be
/// outside any transaction, and nothing may be left held.
async fn pooled_cancellation_loop<C>(checkout: impl AsyncFn() -> C)
where
    C: DerefMut<Target = AsyncPgConnection> + Send,
{
    let key = unique_key();
    let (stop, holder) = contend(key);
    let (mut ok, mut timed_out, mut cancelled) = (0, 0, 0);
    for _ in 0..200 {
        let mut pc = checkout().await;
        assert_eq!(depth(&mut pc), None);
        assert!(
            outside_transaction(&mut pc).await,
            "handed out inside a transaction"
        );
        let (deadline, variant, t, work) = {
            let mut rng = rand::thread_rng();
            let deadline = Duration::from_micros(rng.gen_range(0..4000));
            let t = Duration::from_micros(rng.gen_range(0..4000));
            (deadline, rng.gen_range(0..4), t, rng.gen_bool(0.5))
        };
        let body = async move |c: &mut AsyncPgConnection| {
            if work {
                assert!(!outside_transaction(c).await, "inside the transaction");
            }
            Ok::<_, Error>(())
        };
        let fut = async {
            match variant {
                0 => pc.transaction_with_xact_lock(key, body).await,
                1 => pc.transaction_with_xact_lock_shared(key, body).await,
                2 => pc.transaction_with_xact_lock_timeout(key, t, body).await,
                _ => {
                    pc.transaction_with_xact_lock_shared_timeout(key, t, body)
                        .await
                }
            }
        };
        match timeout(deadline, fut).await {
            Ok(Ok(())) => ok += 1,
            Ok(Err(Error::Timeout { .. })) => timed_out += 1,
            Ok(Err(e)) => panic!("unexpected {e}"),
            Err(_) => cancelled += 1,
        }
    }
    stop_contending(stop, holder).await;
    eprintln!("begin cancellation loop: ok {ok}, timed out {timed_out}, cancelled {cancelled}");
    assert_no_locks(&[key], ASYNC_RELEASE);
    assert!(
        ok > 0 && cancelled > 0,
        "ok {ok}, timed out {timed_out}, cancelled {cancelled}"
    );
    let mut pc = checkout().await;
    let p = apid(&mut pc).await;
    assert!(!marked_broken(&mut pc));
    assert_idle_outside_transaction(p);
    pc.transaction_with_xact_lock_timeout(key, ASYNC_RELEASE, async |_| Ok::<_, Error>(()))
        .await
        .unwrap();
    assert!(locks_of(p).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bb8_cancelled_begin_never_hands_out_a_transaction_or_the_lock() {
    let pool = bb8_pool(1).await;
    pooled_cancel_once(async || pool.get().await.unwrap()).await;
    pooled_cancellation_loop(async || pool.get().await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadpool_cancelled_begin_never_hands_out_a_transaction_or_the_lock() {
    let pool = deadpool_pool(1);
    pooled_cancel_once(async || pool.get().await.unwrap()).await;
    pooled_cancellation_loop(async || pool.get().await.unwrap()).await;
}
