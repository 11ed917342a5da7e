//! Issue 3, behaviour 2: dropping a guard without `release()` never lets the lock reach the next
//! user of the connection: pool guards (in a runtime, during a panic, outside any runtime, with a
//! lost lock, with the runtime shutting down) and borrowed guards (unlock sent during drop).

use advisory_tests::unique_key;
use futures::FutureExt;
use sqlx::Connection;
use sqlx::postgres::PgPoolOptions;
use sqlx_advisory::prelude::*;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_pool_guard_returns_its_connection_holding_no_lock() {
    let p = pool(1).await; // one connection: the next acquire gets the same one back
    let other = pool(1).await;
    for shared in [false, true] {
        let key = unique_key();
        let mut g = if shared {
            p.advisory_lock_shared(key).await.unwrap()
        } else {
            p.advisory_lock(key).await.unwrap()
        };
        let locked_pid = pid(&mut g).await;
        assert_eq!(holders(key).await, vec![locked_pid]);
        drop(g);
        // another session gets it promptly
        let o = tokio::time::timeout(SOON, other.advisory_lock(key))
            .await
            .expect("released promptly")
            .unwrap();
        o.release().await.unwrap();
        // and the connection comes back from the pool holding zero advisory locks (reused: the
        // background release returned it rather than closing it)
        let mut c = p.acquire().await.unwrap();
        assert_eq!(own_locks(&mut c).await, 0);
        assert_eq!(pid(&mut c).await, locked_pid);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_guard_dropped_by_panic_unwinding_releases() {
    let p = pool(1).await;
    let key = unique_key();
    let p2 = p.clone();
    let res = tokio::spawn(async move {
        let _g = p2.advisory_lock(key).await.unwrap();
        assert_eq!(granted(key).await.len(), 1);
        panic!("boom while holding the lock");
    })
    .await;
    assert!(res.unwrap_err().is_panic());
    assert_no_locks(&[key], SOON).await;
    let mut c = p.acquire().await.unwrap();
    assert_eq!(own_locks(&mut c).await, 0);
}

/// sqlx's own `PoolConnection::drop` spawns a task and panics without a runtime (and does so even
/// for `detach()` when `min_connections > 0`); the guard must neither panic nor leak there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_guard_dropped_outside_any_runtime_closes_its_connection_without_panic() {
    for min in [0, 1] {
        let p = PgPoolOptions::new()
            .max_connections(2)
            .min_connections(min)
            .connect(&url().await)
            .await
            .unwrap();
        let key = unique_key();
        let g = p.advisory_lock(key).await.unwrap();
        assert_eq!(granted(key).await.len(), 1);
        std::thread::spawn(move || {
            assert!(tokio::runtime::Handle::try_current().is_err());
            drop(g);
        })
        .join()
        .expect("dropping a pool guard on a plain thread must not panic");
        assert_no_locks(&[key], SOON).await;
        // the pool still hands out working connections
        let mut c = p.acquire().await.unwrap();
        assert_eq!(own_locks(&mut c).await, 0);
        let g = p.advisory_lock(key).await.unwrap();
        g.release().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_guard_whose_lock_vanished_returns_a_clean_connection() {
    let p = pool(1).await;
    let key = unique_key();
    let mut g = p.advisory_lock(key).await.unwrap();
    let old_pid = pid(&mut g).await;
    sqlx::query("SELECT pg_advisory_unlock_all()")
        .execute(&mut *g)
        .await
        .unwrap();
    assert!(!g.is_held().await.unwrap());
    drop(g); // the queued unlock finds nothing to release (a server WARNING, not an error)
    let mut c = p.acquire().await.unwrap();
    assert_eq!(pid(&mut c).await, old_pid, "the same, healthy connection");
    assert_eq!(own_locks(&mut c).await, 0);
}

#[test]
fn pool_guard_dropped_while_its_runtime_shuts_down_releases() {
    let key = unique_key();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = advisory_tests::db().url().to_owned();
    let (p, g) = rt.block_on(async {
        let p = PgPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .unwrap();
        let g = p.advisory_lock(key).await.unwrap();
        (p, g)
    });
    assert_eq!(advisory_tests::granted(key).len(), 1);
    // the release task is spawned, but the runtime is dropped before it can finish
    rt.block_on(async move { drop(g) });
    drop(rt);
    drop(p);
    advisory_tests::assert_no_locks(&[key], SOON);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_borrowed_guard_sends_the_unlock_at_once_and_the_connection_stays_usable() {
    let mut c = conn().await;
    let my_pid = pid(&mut c).await;
    for shared in [false, true] {
        let key = unique_key();
        let g = if shared {
            c.advisory_lock_shared(key).await.unwrap()
        } else {
            c.advisory_lock(key).await.unwrap()
        };
        assert_eq!(holders(key).await, vec![my_pid]);
        drop(g);
        // released without any further use of `c`
        assert_no_locks(&[key], SOON).await;
        // the next query reads its own result, not the unlock's
        let v: i64 = sqlx::query_scalar("SELECT 4242::int8")
            .fetch_one(&mut c)
            .await
            .unwrap();
        assert_eq!(v, 4242);
        let s: String = sqlx::query_scalar("SELECT 'after'")
            .fetch_one(&mut c)
            .await
            .unwrap();
        assert_eq!(s, "after");
        assert_eq!(own_locks(&mut c).await, 0);
    }
    // also on a PoolConnection (through deref) and inside a Transaction
    let p = pool(1).await;
    let key = unique_key();
    let mut pc = p.acquire().await.unwrap();
    let g = pc.advisory_lock(key).await.unwrap();
    drop(g);
    assert_no_locks(&[key], SOON).await;
    // a session lock inside a transaction is refused (its guard could not release it if the
    // transaction aborted); a transaction on a guard ends before the guard does
    let mut tx = pc.begin().await.unwrap();
    assert!(matches!(
        tx.advisory_lock(key).await,
        Err(sqlx_advisory::Error::AlreadyInTransaction { .. })
    ));
    tx.commit().await.unwrap();
    let mut g = pc.advisory_lock(key).await.unwrap();
    let mut tx = g.begin().await.unwrap();
    sqlx::query("SELECT 1/0")
        .execute(&mut *tx)
        .await
        .unwrap_err(); // aborted
    drop(tx); // its ROLLBACK is queued, then the guard's unlock behind it
    drop(g);
    assert_no_locks(&[key], SOON).await;
    drop(pc);
    let mut again = p.acquire().await.unwrap();
    assert_eq!(own_locks(&mut again).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn borrowed_guard_dropped_on_a_plain_thread_or_by_a_panic_releases() {
    let mut c = conn().await;
    let key = unique_key();
    let g = c.advisory_lock(key).await.unwrap();
    std::thread::scope(|s| {
        s.spawn(move || {
            assert!(tokio::runtime::Handle::try_current().is_err());
            drop(g);
        })
        .join()
        .unwrap();
    });
    assert_no_locks(&[key], SOON).await;
    assert_eq!(own_locks(&mut c).await, 0);

    let res = std::panic::AssertUnwindSafe(async {
        let _g = c.advisory_lock(key).await.unwrap();
        panic!("boom");
    })
    .catch_unwind()
    .await;
    assert!(res.is_err());
    // `c` is still open: the lock went away because the guard's drop sent the unlock
    assert_no_locks(&[key], SOON).await;
    assert_eq!(own_locks(&mut c).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_reports_not_held() {
    let mut c = conn().await;
    let key = unique_key();
    let mut g = c.advisory_lock(key).await.unwrap();
    assert!(g.is_held().await.unwrap());
    sqlx::query("SELECT pg_advisory_unlock_all()")
        .execute(&mut *g)
        .await
        .unwrap();
    assert!(!g.is_held().await.unwrap());
    let err = g.release().await.unwrap_err();
    assert!(
        matches!(err, sqlx_advisory::Error::NotHeld { key: k } if k == key),
        "{err:?}"
    );
}

/// A pool guard acquired on a runtime that is then shut down, and dropped afterwards (on that
/// thread outside any runtime, or inside the pool's own runtime): the pool lives on, and its next
/// checkout holds nothing. Both with the checkout's connection opened on the dead runtime and
/// opened (warm) on the pool's runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_guard_outliving_its_runtime_never_returns_the_lock_to_the_living_pool() {
    for (warm, drop_inside_pool_runtime) in
        [(false, false), (true, false), (false, true), (true, true)]
    {
        let p = pool(1).await;
        if warm {
            let mut c = p.acquire().await.unwrap();
            pid(&mut c).await;
        }
        let key = unique_key();
        let p2 = p.clone();
        let g = tokio::task::spawn_blocking(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let g = rt.block_on(p2.advisory_lock(key)).unwrap();
            drop(rt);
            if drop_inside_pool_runtime {
                Some(g)
            } else {
                drop(g); // outside any runtime, after its own runtime is gone
                None
            }
        })
        .await
        .unwrap();
        drop(g); // inside the pool's (living) runtime
        let mut c = p.acquire().await.unwrap();
        assert_eq!(
            own_locks(&mut c).await,
            0,
            "warm={warm} inside={drop_inside_pool_runtime}: the next checkout holds the lock"
        );
        drop(c);
        assert_no_locks(&[key], SOON).await;
        let g = p.advisory_lock(key).await.unwrap();
        g.release().await.unwrap();
    }
}
