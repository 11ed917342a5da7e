//! Issue 3, behaviour 3: dropping acquire futures at random points (>= 500 iterations per scope,
//! every method, tiny random deadlines) while another session holds and releases the key leaves
//! zero leaked locks and a healthy pool. Plus what a cancelled acquire on a *borrowed* connection
//! does (documented: the request completes on the server).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use advisory_common::Key;
use advisory_tests::unique_key;
use rand::{Rng, SeedableRng, rngs::StdRng};
use sqlx::PgPool;
use sqlx_advisory::prelude::*;
use sqlx_advisory::{Error, PoolLockGuard};

use crate::support::*;

/// Another session takes and releases `key` every couple of milliseconds until stopped.
pub(crate) fn toggler(key: Key, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u32> {
    tokio::spawn(async move {
        let mut c = conn().await;
        let mut rng = StdRng::from_entropy();
        let mut rounds = 0;
        while !stop.load(Ordering::Relaxed) {
            let g = c
                .advisory_lock_timeout(key, Duration::from_secs(15))
                .await
                .expect("the other session cannot get the key back: a lock leaked");
            tokio::time::sleep(Duration::from_micros(rng.gen_range(200..2000))).await;
            g.release().await.unwrap();
            tokio::time::sleep(Duration::from_micros(rng.gen_range(200..2000))).await;
            rounds += 1;
        }
        rounds
    })
}

type Acquire = Pin<Box<dyn Future<Output = Result<Option<PoolLockGuard>, Error>> + Send>>;

fn pool_method(p: &PgPool, key: Key, i: usize) -> Acquire {
    let p = p.clone();
    let t = Duration::from_millis(3);
    match i % 6 {
        0 => Box::pin(async move { p.advisory_lock(key).await.map(Some) }),
        1 => Box::pin(async move { p.advisory_lock_shared(key).await.map(Some) }),
        2 => Box::pin(async move { p.try_advisory_lock(key).await }),
        3 => Box::pin(async move { p.try_advisory_lock_shared(key).await }),
        4 => Box::pin(async move { p.advisory_lock_timeout(key, t).await.map(Some) }),
        _ => Box::pin(async move { p.advisory_lock_shared_timeout(key, t).await.map(Some) }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_pool_acquires_and_releases_never_leak_a_lock() {
    let p = pool(6).await;
    let key = unique_key();
    let stop = Arc::new(AtomicBool::new(false));
    let holder = toggler(key, stop.clone());
    let mut rng = StdRng::from_entropy();
    let (mut cancelled, mut got, mut refused) = (0, 0, 0);
    // at least 600 iterations, and on until every outcome was seen often enough (timing varies
    // with machine load), within a cap
    let mut i = 0;
    while i < 600 || cancelled < 100 || got < 10 || refused < 5 {
        assert!(
            i < 5000,
            "cancelled {cancelled}, got {got}, refused {refused} after {i}"
        );
        i += 1;
        // mostly tiny deadlines; every fourth one longer, so acquisitions keep happening even when
        // a loaded machine makes each checkout (and reconnect after a closed one) slow
        let hi = if i % 4 == 0 { 40_000 } else { 4000 };
        let deadline = Duration::from_micros(rng.gen_range(0..hi));
        match tokio::time::timeout(deadline, pool_method(&p, key, i)).await {
            Err(_) => cancelled += 1,
            Ok(Ok(Some(g))) => {
                got += 1;
                match i % 3 {
                    0 => drop(g),
                    1 => g.release().await.unwrap(),
                    _ => {
                        // cancel the release too
                        let d = Duration::from_micros(rng.gen_range(0..1000));
                        let _ = tokio::time::timeout(d, g.release()).await;
                    }
                }
            }
            Ok(Ok(None)) | Ok(Err(Error::Timeout { .. })) => refused += 1,
            Ok(Err(e)) => panic!("iteration {i}: {e:?}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let rounds = holder.await.unwrap();
    assert!(
        rounds >= 20,
        "the other session took the key only {rounds} times"
    );
    assert_no_locks(&[key], Duration::from_secs(20)).await;
    // the pool is healthy: every connection it hands out works and holds nothing
    let mut conns = Vec::new();
    for _ in 0..6 {
        let mut c = p.acquire().await.unwrap();
        assert_eq!(own_locks(&mut c).await, 0);
        conns.push(c);
    }
    drop(conns);
    let g = tokio::time::timeout(SOON, p.advisory_lock(key))
        .await
        .unwrap()
        .unwrap();
    g.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_transaction_lock_attempts_never_leak_a_lock() {
    let p = pool(6).await;
    let key = unique_key();
    let stop = Arc::new(AtomicBool::new(false));
    let holder = toggler(key, stop.clone());
    let mut rng = StdRng::from_entropy();
    let (mut cancelled, mut done) = (0, 0);
    let mut i = 0;
    while i < 500 || cancelled < 50 || done < 50 {
        assert!(i < 5000, "cancelled {cancelled}, done {done} after {i}");
        i += 1;
        let hi = if i % 4 == 0 { 20_000 } else { 1500 };
        let deadline = Duration::from_micros(rng.gen_range(0..hi));
        let mut tx = p.begin().await.unwrap();
        let t = Duration::from_millis(20);
        let attempt = async {
            match i % 6 {
                0 => tx.xact_lock(key).await.map(|()| true),
                1 => tx.xact_lock_shared(key).await.map(|()| true),
                2 => tx.try_xact_lock(key).await,
                3 => tx.try_xact_lock_shared(key).await,
                4 => tx.xact_lock_timeout(key, t).await.map(|()| true),
                _ => tx.xact_lock_shared_timeout(key, t).await.map(|()| true),
            }
        };
        match tokio::time::timeout(deadline, attempt).await {
            Err(_) => cancelled += 1,
            Ok(Ok(_)) | Ok(Err(Error::Timeout { .. })) => done += 1,
            Ok(Err(e)) => panic!("iteration {i}: {e:?}"),
        }
        if i % 2 == 0 {
            drop(tx); // sqlx queues the ROLLBACK
        } else {
            let _ = tx.rollback().await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    holder.await.unwrap();
    assert_no_locks(&[key], Duration::from_secs(20)).await;
    for _ in 0..3 {
        let mut c = p.acquire().await.unwrap();
        assert_eq!(own_locks(&mut c).await, 0);
    }
}

/// On a borrowed connection an acquire cancelled after its request went out queues its undo
/// behind it (`unlock if held`): when the server grants the request, the hold is released before
/// the connection's next statement is answered, and that statement gets its own answer. A second
/// guard's hold of the same key on the same session is untouched (the undo releases only the
/// hold the cancelled request added).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_acquire_on_a_borrowed_connection_leaves_no_lock() {
    let key = unique_key();
    let mut holder = conn().await;
    let h = holder.advisory_lock(key).await.unwrap();
    let mut c = conn().await;
    let c_pid = pid(&mut c).await;
    tokio::select! {
        r = c.advisory_lock(key) => panic!("cannot be granted yet: {r:?}"),
        _ = wait_for_waiter(key, c_pid) => {} // the acquire future is dropped here, mid-wait
    }
    h.release().await.unwrap();
    // granted, then undone by the queued unlock, without any further use of `c`
    wait_until(
        &[key],
        SOON,
        "the cancelled request granted and undone",
        |r| r.is_empty(),
    )
    .await;
    let v: i32 = sqlx::query_scalar("SELECT 7")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(v, 7, "the next query gets its own answer");
    assert_eq!(own_locks(&mut c).await, 0);

    // with a hold of the same key by a guard on the same session: cancelled nested acquires (at
    // their first or second Pending) leave exactly that hold
    let mut g = c.advisory_lock(key).await.unwrap();
    for polls in [1, 2, 1, 2] {
        let mut fut = Box::pin((&mut *g).advisory_lock(key));
        for _ in 0..polls {
            if futures::poll!(fut.as_mut()).is_ready() {
                break; // granted (then released by the nested guard's drop)
            }
        }
        drop(fut);
        let v: i32 = sqlx::query_scalar("SELECT 9")
            .fetch_one(&mut *g)
            .await
            .unwrap();
        assert_eq!(v, 9);
        let rows = granted(key).await;
        assert!(
            rows.len() == 1 && rows[0].pid == c_pid,
            "the guard's own hold must survive: {rows:?}"
        );
    }
    g.release().await.expect("exactly one hold left to release");
    assert_no_locks(&[key], SOON).await;
}

/// The pool makes the same cancellation safe: the checkout is closed, so whatever the server
/// grants dies with the session (once the backend's wait ends, here when the holder releases).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_pool_acquire_mid_wait_closes_the_checkout() {
    let key = unique_key();
    let p = pool(1).await;
    let mut holder = conn().await;
    let h = holder.advisory_lock(key).await.unwrap();
    let waiter_pid = tokio::select! {
        r = p.advisory_lock(key) => panic!("cannot be granted yet: {r:?}"),
        w = wait_for_any_waiter(key) => w,
    };
    h.release().await.unwrap();
    assert_no_locks(&[key], SOON).await;
    let mut c = p.acquire().await.unwrap();
    assert_ne!(
        pid(&mut c).await,
        waiter_pid,
        "the cancelled checkout was not reused"
    );
    assert_eq!(own_locks(&mut c).await, 0);
}
