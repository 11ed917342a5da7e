//! r2d2, bb8 and deadpool guards.

use std::time::Duration;

use advisory_common::Key;
use advisory_tests::{advisory_locks, assert_no_locks, granted, unique_key};
use diesel::IntoSql;
use diesel_advisory::prelude::*;
use diesel_async::{RunQueryDsl as _, SimpleAsyncConnection};

use super::async_api::{contend, random_cancelled_acquire, stop_contending};
use super::{
    ASYNC_RELEASE, aconn, apid, backend_alive, bb8_pool, conn, deadpool_pool, pid, r2d2_pool,
    wait_backend_gone,
};

fn holders(key: Key) -> Vec<i32> {
    granted(key).into_iter().map(|l| l.pid).collect()
}

/// No session of `pids` holds or waits for any advisory lock.
fn none_held_by(pids: &[i32]) -> bool {
    !advisory_locks().iter().any(|l| pids.contains(&l.pid))
}

#[test]
fn r2d2_guard_owns_connection_and_releases() {
    let pool = r2d2_pool(2);
    let key = unique_key();
    let mut g = pool.advisory_lock(key).unwrap();
    let g_pid = pid(&mut g);
    assert_eq!(holders(key), vec![g_pid]);
    let g = std::thread::spawn(move || {
        // the guard (and its connection) moved to another thread
        let mut g = g;
        assert!(g.is_held().unwrap());
        g
    })
    .join()
    .unwrap();
    assert!(pool.try_advisory_lock(key).unwrap().is_none());
    drop(g);
    assert!(granted(key).is_empty(), "drop released synchronously");
    let mut again = pool.get().unwrap();
    assert!(none_held_by(&[pid(&mut again)]));
    let g = pool
        .advisory_lock_shared_timeout(key, Duration::from_secs(1))
        .unwrap();
    assert!(g.is_shared());
    g.release().unwrap();
    assert!(granted(key).is_empty());
}

#[test]
fn sync_and_async_connections_exclude_each_other() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut s = conn();
    let mut a = rt.block_on(aconn());
    for (s_shared, a_shared) in [(false, false), (false, true), (true, false), (true, true)] {
        let key = unique_key();
        let g = if s_shared {
            s.advisory_lock_shared(key)
        } else {
            s.advisory_lock(key)
        }
        .unwrap();
        let other = rt.block_on(async {
            let r = if a_shared {
                a.try_advisory_lock_shared(key).await
            } else {
                a.try_advisory_lock(key).await
            };
            r.unwrap().map(|g| g.key())
        });
        assert_eq!(other.is_some(), s_shared && a_shared);
        drop(g);
        rt.block_on(async { a.try_advisory_lock(key).await.unwrap().unwrap() })
            .key();
        assert_no_locks(&[key], ASYNC_RELEASE);
    }
}

/// Exclusive/shared matrix between the three pools (r2d2 ↔ bb8 ↔ deadpool ↔ r2d2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_exclude_each_other() {
    let r2 = r2d2_pool(2);
    let b = bb8_pool(2).await;
    let d = deadpool_pool(2);
    type Boxed = Box<dyn std::any::Any + Send>;
    for (holder, contender) in [(0, 1), (1, 2), (2, 0)] {
        for (h_shared, c_shared) in [(false, false), (false, true), (true, false), (true, true)] {
            let key = unique_key();
            let take = |which: usize, shared: bool, try_: bool| {
                let (r2, b, d) = (r2.clone(), b.clone(), d.clone());
                async move {
                    let g: Option<Boxed> = match (which, shared, try_) {
                        (0, s, _) => {
                            let r = tokio::task::spawn_blocking(move || {
                                if s {
                                    r2.try_advisory_lock_shared(key)
                                } else {
                                    r2.try_advisory_lock(key)
                                }
                            })
                            .await
                            .unwrap();
                            r.unwrap().map(|g| Box::new(g) as Boxed)
                        }
                        (1, true, _) => b
                            .try_advisory_lock_shared(key)
                            .await
                            .unwrap()
                            .map(|g| Box::new(g) as Boxed),
                        (1, false, _) => b
                            .try_advisory_lock(key)
                            .await
                            .unwrap()
                            .map(|g| Box::new(g) as Boxed),
                        (_, true, _) => d
                            .try_advisory_lock_shared(key)
                            .await
                            .unwrap()
                            .map(|g| Box::new(g) as Boxed),
                        (_, false, _) => d
                            .try_advisory_lock(key)
                            .await
                            .unwrap()
                            .map(|g| Box::new(g) as Boxed),
                    };
                    g
                }
            };
            let held = take(holder, h_shared, false).await.expect("free key");
            let other = take(contender, c_shared, true).await;
            assert_eq!(
                other.is_some(),
                h_shared && c_shared,
                "holder {holder} shared={h_shared}, contender {contender} shared={c_shared}"
            );
            drop(other);
            drop(held);
            assert_no_locks(&[key], ASYNC_RELEASE);
        }
    }
}

async fn pool_guard_dropped_without_release<G, F>(get_guard: F)
where
    F: AsyncFn(Key) -> G,
    G: std::ops::DerefMut<Target = diesel_async::AsyncPgConnection> + Send + 'static,
{
    // dropped in a task of the runtime
    let key = unique_key();
    let mut g = get_guard(key).await;
    let g_pid = apid(&mut g).await;
    assert_eq!(holders(key), vec![g_pid]);
    drop(g);
    assert_no_locks(&[key], ASYNC_RELEASE);
    assert!(
        aconn()
            .await
            .try_advisory_lock(key)
            .await
            .unwrap()
            .is_some()
    );
    // the connection went back to the pool healthy: the same backend, holding nothing
    assert!(backend_alive(&mut conn(), g_pid));
    assert!(none_held_by(&[g_pid]));

    // dropped on a thread outside the runtime: the captured handle runs the release
    let key = unique_key();
    let g = get_guard(key).await;
    std::thread::spawn(move || drop(g)).join().unwrap();
    assert_no_locks(&[key], ASYNC_RELEASE);

    // the drop-time unlock answers "not held" (released behind the guard's back): discarded
    let key = unique_key();
    let mut g = get_guard(key).await;
    let g_pid = apid(&mut g).await;
    g.batch_execute(advisory_common::sql::UNLOCK_ALL)
        .await
        .unwrap();
    drop(g);
    tokio::task::spawn_blocking(move || wait_backend_gone(g_pid, ASYNC_RELEASE))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bb8_guard_dropped_without_release() {
    let pool = bb8_pool(2).await;
    pool_guard_dropped_without_release(async |k| pool.advisory_lock(k).await.unwrap()).await;
    let mut c = pool.get().await.unwrap();
    assert!(none_held_by(&[apid(&mut c).await]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadpool_guard_dropped_without_release() {
    let pool = deadpool_pool(2);
    pool_guard_dropped_without_release(async |k| pool.advisory_lock(k).await.unwrap()).await;
    let mut c = pool.get().await.unwrap();
    assert!(none_held_by(&[apid(&mut c).await]));
}

/// A guard that outlives the runtime it was acquired on, while its pool lives on (built on a
/// runtime that outlives the guard's): dropping it never panics, the lock is gone, and the pool's
/// next checkouts hold nothing and work. Twice: with the pool's connections established on the
/// long-lived runtime (their driver tasks survive: the checkout is discarded, not returned holding
/// the lock) and on the short-lived one (their driver tasks die with it, and the session with them).
#[test]
fn pool_guards_dropped_after_runtime_shutdown() {
    let main = tokio::runtime::Runtime::new().unwrap();
    let (bp, dp) = main.block_on(async { (bb8_pool(1).await, deadpool_pool(1)) });
    for established_on_main in [true, false] {
        if established_on_main {
            main.block_on(async { drop((bp.get().await.unwrap(), dp.get().await.unwrap())) });
        }
        let (key, key2) = (unique_key(), unique_key());
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (bg, dg) = rt.block_on(async {
            let bg = bp.advisory_lock(key).await.unwrap();
            let dg = dp.advisory_lock(key2).await.unwrap();
            (bg, dg)
        });
        assert_eq!(granted(key).len(), 1);
        drop(rt);
        drop(bg);
        drop(dg);
        assert_no_locks(&[key, key2], ASYNC_RELEASE);
        main.block_on(async {
            let (mut b, mut d) = (bp.get().await.unwrap(), dp.get().await.unwrap());
            assert!(none_held_by(&[apid(&mut b).await, apid(&mut d).await]));
            drop((b, d));
            bp.advisory_lock(key)
                .await
                .unwrap()
                .release()
                .await
                .unwrap();
            dp.advisory_lock(key2)
                .await
                .unwrap()
                .release()
                .await
                .unwrap();
        });
    }
}

/// Issue 4, item 8: a guard held for a whole workflow while other tasks use the same pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bb8_lock_held_across_workflow_while_pool_serves_others() {
    let pool = bb8_pool(3).await;
    let key = unique_key();
    let mut guard = pool.advisory_lock(key).await.unwrap();
    let g_pid = apid(&mut guard).await;
    let mut tasks = Vec::new();
    for _ in 0..30 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            assert!(pool.try_advisory_lock(key).await.unwrap().is_none());
            let mut c = pool.get().await.unwrap();
            diesel::select(1.into_sql::<diesel::sql_types::Integer>())
                .get_result::<i32>(&mut c)
                .await
                .unwrap()
        }));
    }
    for step in 0..5 {
        // the workflow keeps using its own connection between awaits
        assert!(guard.is_held().await.unwrap(), "step {step}");
        tokio::task::yield_now().await;
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 1);
    }
    assert_eq!(holders(key), vec![g_pid]);
    tokio::spawn(async move { guard.release().await })
        .await
        .unwrap()
        .unwrap();
    assert!(granted(key).is_empty());
    assert!(pool.try_advisory_lock(key).await.unwrap().is_some());
}

async fn pooled_cancellation_loop<P>(pool: P, pids_of_pool: impl AsyncFn() -> Vec<i32>)
where
    P: Copy + AsyncLockExt,
    P::Guard: Send + 'static,
{
    let key = unique_key();
    let (stop, holder) = contend(key);
    for _ in 0..500 {
        if let Some(g) = random_cancelled_acquire(pool, key).await {
            drop(g);
        }
    }
    stop_contending(stop, holder).await;
    assert_no_locks(&[key], ASYNC_RELEASE);
    let pids = pids_of_pool().await;
    assert!(none_held_by(&pids));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bb8_cancellation_loop_leaks_nothing() {
    let pool = bb8_pool(2).await;
    pooled_cancellation_loop(&pool, async || {
        let (mut a, mut b) = (pool.get().await.unwrap(), pool.get().await.unwrap());
        vec![apid(&mut a).await, apid(&mut b).await]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadpool_cancellation_loop_leaks_nothing() {
    let pool = deadpool_pool(2);
    pooled_cancellation_loop(&pool, async || {
        let (mut a, mut b) = (pool.get().await.unwrap(), pool.get().await.unwrap());
        vec![apid(&mut a).await, apid(&mut b).await]
    })
    .await;
}
