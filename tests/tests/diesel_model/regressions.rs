//! One targeted test per defect the review found (issue 10), each failing on the code before its
//! fix: a cancelled borrowed acquire releasing another guard's hold, a pool guard outliving its
//! runtime, a borrowed guard dropped inside an aborted transaction on a pool connection, and a
//! pool acquire whose post-timeout `held` check failed.

use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use advisory_common::Key;
use advisory_tests::{assert_no_locks, unique_i32, unique_key};
use diesel::result::Error as DieselError;
use diesel_advisory::Error;
use diesel_advisory::prelude::*;
use diesel_async::{
    AnsiTransactionManager, AsyncConnection, AsyncPgConnection, SimpleAsyncConnection,
    TransactionManager,
};

use super::support::*;

/// Acquire variant `v` (0 lock, 1 try, 2 timed) of `key` on `conn`, in `shared` mode.
async fn acquire(
    conn: &mut AsyncPgConnection,
    v: usize,
    shared: bool,
    key: Key,
) -> Result<Option<diesel_advisory::AsyncLockGuard<'_>>, Error> {
    let t = Duration::from_secs(5);
    match (v, shared) {
        (0, false) => conn.advisory_lock(key).await.map(Some),
        (0, true) => conn.advisory_lock_shared(key).await.map(Some),
        (1, false) => conn.try_advisory_lock(key).await,
        (1, true) => conn.try_advisory_lock_shared(key).await,
        (_, false) => conn.advisory_lock_timeout(key, t).await.map(Some),
        (_, true) => conn.advisory_lock_shared_timeout(key, t).await.map(Some),
    }
}

/// Defect 4: a second acquire of a key the connection already holds (through guard G1), with a
/// statement the connection has not prepared yet, cancelled at its first `Pending`. Before the
/// fix its queued unlock went out although the lock statement never had, and took away G1's
/// hold: another session could then take the key while G1 still "held" it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_borrowed_acquire_never_releases_another_guards_hold() {
    let mut other = aconn().await;
    for first in 0..3 {
        for second in (0..3).filter(|s| *s != first) {
            for shared in [false, true] {
                for key in [unique_key(), Key::Pair(unique_i32(), unique_i32())] {
                    let what = format!("first {first} second {second} shared {shared} {key}");
                    let mut c = aconn().await;
                    let c_pid = apid(&mut c).await;
                    let mut g1 = acquire(&mut c, first, shared, key).await.unwrap().unwrap();
                    {
                        let mut fut = pin!(acquire(&mut g1, second, shared, key));
                        // (Ready only if the answer came back within that one poll: then the
                        // guard it returns is dropped, queueing its own unlock)
                        if let Poll::Ready(r) = poll_once(fut.as_mut()) {
                            assert!(r.unwrap().is_some(), "{what}: refused");
                        }
                    }
                    // a round trip on the connection: whatever was queued has run
                    assert!(g1.is_held().await.unwrap(), "{what}: G1 lost its hold");
                    assert_eq!(holders(key), vec![c_pid], "{what}");
                    if !shared {
                        let r = other.try_advisory_lock(key).await.unwrap();
                        assert!(r.is_none(), "{what}: another session took the key");
                    }
                    g1.release().await.unwrap();
                    assert!(holders(key).is_empty(), "{what}: left behind");
                }
            }
        }
    }
}

/// The same through a pool guard's connection: the nested acquire is a borrowed one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_nested_acquire_on_a_pool_guard_keeps_the_pool_guards_hold() {
    let pool = bb8_pool(1).await;
    let key = unique_key();
    let mut g1 = pool.advisory_lock(key).await.unwrap();
    let g_pid = apid(&mut g1).await;
    {
        let mut fut = pin!((&mut *g1).try_advisory_lock(key));
        // (Ready only if the answer came back within that one poll; its guard is then dropped)
        if let Poll::Ready(r) = poll_once(fut.as_mut()) {
            assert!(r.unwrap().is_some(), "refused");
        }
    }
    assert!(g1.is_held().await.unwrap(), "the pool guard lost its hold");
    assert_eq!(holders(key), vec![g_pid]);
    g1.release().await.unwrap();
    assert_no_locks(&[key], SOON);
}

/// Defect 2: a pool guard acquired on a runtime that has shut down, dropped afterwards, while the
/// pool (and the connection's driver task, on another runtime) lives on. Before the fix the
/// release task was dropped unpolled and the checkout went back to the pool holding the lock.
#[test]
fn pool_guards_outliving_their_runtime_never_return_the_lock_to_the_pool() {
    let main = tokio::runtime::Runtime::new().unwrap();
    let (bp, dp) = main.block_on(async {
        let (bp, dp) = (bb8_pool(1).await, deadpool_pool(1));
        // the connections are established (their driver tasks spawned) on `main`
        drop((bp.get().await.unwrap(), dp.get().await.unwrap()));
        (bp, dp)
    });
    for round in 0..3 {
        let (k1, k2) = (unique_key(), unique_key());
        let short = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (bg, dg) = short.block_on(async {
            let bg = bp.advisory_lock(k1).await.unwrap();
            let dg = dp.advisory_lock(k2).await.unwrap();
            (bg, dg)
        });
        drop(short);
        // dropped on a plain thread: no current runtime, the captured one is gone
        drop(bg);
        drop(dg);
        assert_no_locks(&[k1, k2], SOON);
        main.block_on(async {
            for pids in [
                apid(&mut bp.get().await.unwrap()).await,
                apid(&mut dp.get().await.unwrap()).await,
            ] {
                assert!(
                    held_by(pids).is_empty(),
                    "round {round}: a checkout holds a lock"
                );
            }
            assert!(
                bp.try_advisory_lock(k1).await.unwrap().is_some(),
                "round {round}"
            );
            assert!(
                dp.try_advisory_lock(k2).await.unwrap().is_some(),
                "round {round}"
            );
        });
    }
}

/// Defect 3: a borrowed guard dropped inside an aborted transaction on a pooled connection. The
/// queued unlock fails there; before the fix nothing marked the connection broken, the caller's
/// ROLLBACK went through, and the pool's next user got a healthy-looking connection holding the
/// lock. Now the connection is marked broken and the pool discards it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn borrowed_guard_dropped_in_an_aborted_transaction_never_reaches_the_next_pool_user() {
    let (bp, dp) = (bb8_pool(1).await, deadpool_pool(1));
    for deadpool in [false, true] {
        let key = unique_key();
        let mut pc: Box<dyn std::ops::DerefMut<Target = AsyncPgConnection> + Send> = if deadpool {
            Box::new(dp.get().await.unwrap())
        } else {
            Box::new(bp.get().await.unwrap())
        };
        let pc_pid = apid(&mut pc).await;
        // inside a transaction a session lock is refused, nothing sent
        let r = pc
            .transaction::<_, Error, _>(async |c| c.advisory_lock(key).await.map(drop))
            .await;
        assert!(
            matches!(r, Err(Error::AlreadyInTransaction { .. })),
            "{r:?}"
        );
        let mut g = pc.advisory_lock(key).await.unwrap();
        AnsiTransactionManager::begin_transaction(&mut *g)
            .await
            .unwrap();
        assert!(g.batch_execute("SELECT 1/0").await.is_err());
        drop(g);
        let r = AnsiTransactionManager::rollback_transaction(&mut **pc).await;
        assert!(
            matches!(r, Err(DieselError::BrokenTransactionManager)),
            "{r:?}"
        );
        drop(pc);
        let next = if deadpool {
            apid(&mut dp.get().await.unwrap()).await
        } else {
            apid(&mut bp.get().await.unwrap()).await
        };
        assert_ne!(
            next, pc_pid,
            "deadpool={deadpool}: the broken connection was reused"
        );
        tokio::task::spawn_blocking(move || wait_backend_gone(pc_pid))
            .await
            .unwrap();
        assert_no_locks(&[key], SOON);
        assert!(held_by(next).is_empty());
    }
}

/// Makes `pg_backend_pid()` fail for sessions whose `search_path` starts with the returned
/// schema: the post-timeout `held` check (which calls it unqualified) then fails.
fn poisoned_schema() -> String {
    use diesel::connection::SimpleConnection;
    let schema = format!("advisory_poison_{:08x}", rand::random::<u32>());
    conn()
        .batch_execute(&format!(
            "CREATE SCHEMA {schema}; CREATE FUNCTION {schema}.pg_backend_pid() RETURNS int \
             LANGUAGE sql AS 'SELECT 1/0'"
        ))
        .unwrap();
    schema
}

/// Defect 6b: a pool acquire whose timed wait timed out and whose `held` check then failed (the
/// lock may have been granted in the instant of the timeout) must discard the checkout, not
/// return it to the pool. Before the fix bb8, deadpool and r2d2 got it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_acquire_of_unknown_outcome_discards_the_checkout() {
    let schema = poisoned_schema();
    let set = format!("SET search_path = {schema}, pg_catalog");
    let (bp, dp, rp) = (bb8_pool(1).await, deadpool_pool(1), r2d2_pool(1));
    let key = unique_key();
    let mut holder = aconn().await;
    let held = holder.advisory_lock(key).await.unwrap();
    let t = Duration::from_millis(20);
    for which in ["bb8", "deadpool", "r2d2"] {
        let poisoned_pid = match which {
            "bb8" => {
                let mut c = bp.get().await.unwrap();
                let p = apid(&mut c).await;
                c.batch_execute(&set).await.unwrap();
                p
            }
            "deadpool" => {
                let mut c = dp.get().await.unwrap();
                let p = apid(&mut c).await;
                c.batch_execute(&set).await.unwrap();
                p
            }
            _ => {
                let (rp, set) = (rp.clone(), set.clone());
                tokio::task::spawn_blocking(move || {
                    use diesel::connection::SimpleConnection;
                    let mut c = rp.get().unwrap();
                    let p = pid(&mut c);
                    c.batch_execute(&set).unwrap();
                    p
                })
                .await
                .unwrap()
            }
        };
        let r = match which {
            "bb8" => bp.advisory_lock_timeout(key, t).await.map(drop),
            "deadpool" => dp.advisory_lock_timeout(key, t).await.map(drop),
            _ => {
                let rp = rp.clone();
                tokio::task::spawn_blocking(move || rp.advisory_lock_timeout(key, t).map(drop))
                    .await
                    .unwrap()
            }
        };
        assert!(matches!(r, Err(Error::Database(_))), "{which}: {r:?}");
        tokio::task::spawn_blocking(move || wait_backend_gone(poisoned_pid))
            .await
            .unwrap();
    }
    // bare connections: the error arrives, the connection still works and holds nothing
    let mut c = aconn().await;
    c.batch_execute(&set).await.unwrap();
    let r = c.advisory_lock_timeout(key, t).await.map(drop);
    assert!(matches!(r, Err(Error::Database(_))), "{r:?}");
    c.batch_execute("RESET search_path").await.unwrap();
    let c_pid = apid(&mut c).await;
    assert!(held_by(c_pid).is_empty());
    held.release().await.unwrap();
    assert_no_locks(&[key], SOON);
    tokio::task::spawn_blocking(move || {
        use diesel::connection::SimpleConnection;
        conn().batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
    })
    .await
    .unwrap()
    .unwrap();
}
