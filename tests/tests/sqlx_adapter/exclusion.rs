//! Issue 3, behaviour 1: mutual exclusion (exclusive/exclusive and shared/exclusive block,
//! shared/shared do not), across two pools and between a pool and a bare connection.

use std::time::Duration;

use advisory_common::{Key, LockMode};
use advisory_tests::{unique_i32, unique_key};
use sqlx_advisory::prelude::*;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_blocks_exclusive_and_shared_across_two_pools() {
    let (p1, p2) = (pool(2).await, pool(3).await);
    for key in [unique_key(), Key::Pair(unique_i32(), unique_i32())] {
        let g = p1.advisory_lock(key).await.unwrap();
        let holder = holders(key).await;
        assert_eq!(holder.len(), 1);
        assert!(p2.try_advisory_lock(key).await.unwrap().is_none());
        assert!(p2.try_advisory_lock_shared(key).await.unwrap().is_none());

        let p = p2.clone();
        let exclusive = tokio::spawn(async move { p.advisory_lock(key).await });
        let w1 = wait_for_any_waiter(key).await;
        assert!(!exclusive.is_finished());
        g.release().await.unwrap();
        let g2 = tokio::time::timeout(SOON, exclusive)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            holders(key).await,
            vec![w1],
            "the waiter got it, nobody else"
        );
        assert!(!g2.is_shared());

        let p = p2.clone();
        let shared = tokio::spawn(async move { p.advisory_lock_shared(key).await });
        let w2 = wait_for_any_waiter(key).await;
        assert!(!shared.is_finished());
        drop(g2);
        let s = tokio::time::timeout(SOON, shared)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(s.is_shared());
        let rows = wait_until(&[key], SOON, "only the shared holder", |r| {
            r.len() == 1 && r[0].granted
        })
        .await;
        assert_eq!((rows[0].pid, rows[0].mode), (w2, LockMode::Shared));
        s.release().await.unwrap();
        assert_no_locks(&[key], SOON).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_holders_coexist_and_block_exclusive_between_pool_and_bare_connection() {
    let p = pool(3).await;
    let mut bare = conn().await;
    let bare_pid = pid(&mut bare).await;
    let key = unique_key();

    let s1 = p.advisory_lock_shared(key).await.unwrap();
    let s2 = bare.advisory_lock_shared(key).await.unwrap(); // shared vs shared: no wait
    let rows = granted(key).await;
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.mode == LockMode::Shared));
    drop(s2);
    wait_until(
        &[key],
        SOON,
        "the bare connection's shared hold gone",
        move |r| r.iter().all(|l| l.pid != bare_pid),
    )
    .await;

    // shared (pool) blocks exclusive (bare connection)
    let (tx, rx) = tokio::sync::oneshot::channel();
    let bare_task = tokio::spawn(async move {
        let g = bare.advisory_lock(key).await.unwrap();
        tx.send(()).unwrap();
        g.release().await.unwrap();
        bare
    });
    wait_for_waiter(key, bare_pid).await;
    assert!(p.try_advisory_lock(key).await.unwrap().is_none());
    s1.release().await.unwrap();
    tokio::time::timeout(SOON, rx).await.unwrap().unwrap();
    let _bare = bare_task.await.unwrap();

    // exclusive on the bare connection blocks the pool
    let mut bare = conn().await;
    let g = bare.advisory_lock(key).await.unwrap();
    assert!(p.try_advisory_lock_shared(key).await.unwrap().is_none());
    assert!(
        p.advisory_lock_timeout(key, Duration::from_millis(30))
            .await
            .is_err()
    );
    drop(g);
    let _x = tokio::time::timeout(SOON, p.advisory_lock(key))
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_guard_is_static_send_and_usable_as_a_connection() {
    let p = pool(2).await;
    let key = unique_key();
    let mut g = p.advisory_lock(key).await.unwrap();
    let own_pid = pid(&mut g).await;
    let task = tokio::spawn(async move {
        // the guard derefs to the locked PgConnection
        let one: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&mut *g)
            .await
            .unwrap();
        assert!(g.is_held().await.unwrap());
        (one, g)
    });
    let (one, g) = task.await.unwrap();
    assert_eq!(one, 1);
    assert_eq!(holders(key).await, vec![own_pid]);
    assert_eq!(g.key(), key);
    g.release().await.unwrap();
    assert_no_locks(&[key], SOON).await;
}
