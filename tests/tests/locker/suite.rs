// The lock service's suite, run on each adapter's locker (included by `tests/locker.rs` into
// `sqlx_locker` and `diesel_locker`, which supply `make`, `make_with`, `Error` and
// `LockerOptions`): multiplexing, batching, local and server-side exclusion, timeouts,
// cancellation, lost-lock notification, lock_all, leader election.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use advisory_common::{Key, LockMode};
use advisory_tests::unique_key;
use sqlx_advisory::prelude::*;

use super::support::*;

const T: Duration = Duration::from_secs(10);

fn keys(n: usize) -> Vec<Key> {
    (0..n).map(|_| unique_key()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_leases_live_on_one_session_and_drop_releases_them_all() {
    let app = app("locker-mux");
    let locker = make(&app);
    let ks = keys(1000);
    let mut tasks = Vec::new();
    for k in ks.clone() {
        let l = locker.clone();
        tasks.push(tokio::spawn(async move { l.lock(k).await.unwrap() }));
    }
    let mut leases = Vec::new();
    for t in tasks {
        leases.push(t.await.unwrap());
    }
    let rows = until(&ks, T, "1000 granted holds", |r| {
        r.iter().filter(|l| l.granted).count() == 1000
    })
    .await;
    let pids: std::collections::BTreeSet<i32> = rows.iter().map(|l| l.pid).collect();
    assert_eq!(
        pids.len(),
        1,
        "all 1000 leases on one session, got pids {pids:?}"
    );
    assert!(rows.iter().all(|l| l.mode == LockMode::Exclusive));
    let conns = connections(&app).await;
    assert!(
        conns <= 2,
        "the locker used {conns} connections for 1000 leases"
    );
    drop(leases);
    until(&ks, T, "every hold released", |r| r.is_empty()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_process_contenders_are_queued_locally_without_a_server_wait() {
    let locker = make(&app("locker-local"));
    let k = unique_key();
    let first = locker.lock(k).await.unwrap();
    assert!(
        locker.try_lock(k).await.unwrap().is_none(),
        "exclusive: refused locally"
    );
    assert!(locker.try_lock_shared(k).await.unwrap().is_none());
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let inside = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut waiters = Vec::new();
    for i in 0..5 {
        let (l, order, inside) = (locker.clone(), order.clone(), inside.clone());
        waiters.push(tokio::spawn(async move {
            let lease = l.lock(k).await.unwrap();
            assert!(
                !inside.swap(true, Ordering::SeqCst),
                "two local leases at once"
            );
            order.lock().unwrap().push(i);
            tokio::time::sleep(Duration::from_millis(10)).await;
            inside.store(false, Ordering::SeqCst);
            drop(lease);
        }));
        // FIFO: each is queued before the next one starts
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        order.lock().unwrap().is_empty(),
        "nobody got it while the first lease lives"
    );
    let rows = locks(&[k]).await;
    assert_eq!(rows.len(), 1, "one hold, no server-side waiter: {rows:#?}");
    assert!(rows[0].granted);
    drop(first);
    for w in waiters {
        w.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4], "local FIFO");
    until(&[k], T, "released", |r| r.is_empty()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_leases_share_one_server_hold() {
    let locker = make(&app("locker-shared"));
    let k = unique_key();
    let a = locker.lock_shared(k).await.unwrap();
    let b = locker.lock_shared(k).await.unwrap();
    let c = locker.try_lock_shared(k).await.unwrap().unwrap();
    let rows = locks(&[k]).await;
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0].mode, LockMode::Shared);
    let pool = sqlx::PgPool::connect(advisory_tests::db().url())
        .await
        .unwrap();
    assert!(
        pool.try_advisory_lock(k).await.unwrap().is_none(),
        "excludes another process"
    );
    let other = pool.try_advisory_lock_shared(k).await.unwrap();
    assert!(
        other.is_some(),
        "coexists with another process's shared hold"
    );
    other.unwrap().release().await.unwrap();
    drop((a, b));
    assert_eq!(locks(&[k]).await.iter().filter(|l| l.granted).count(), 1);
    c.release().await.unwrap();
    assert!(
        locks(&[k]).await.is_empty(),
        "release() returns after the unlock"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_held_elsewhere_is_waited_for_by_one_server_waiter_and_taken_on_release() {
    let app = app("locker-contended");
    let locker = make(&app);
    let k = unique_key();
    let pool = sqlx::PgPool::connect(advisory_tests::db().url())
        .await
        .unwrap();
    let guard = pool.advisory_lock(k).await.unwrap();
    let got = Arc::new(AtomicUsize::new(0));
    let mut waiters = Vec::new();
    for _ in 0..10 {
        let (l, got) = (locker.clone(), got.clone());
        waiters.push(tokio::spawn(async move {
            let lease = l.lock(k).await.unwrap();
            got.fetch_add(1, Ordering::SeqCst);
            drop(lease);
        }));
    }
    until(&[k], T, "one server-side waiter", |r| {
        r.iter().filter(|l| !l.granted).count() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let rows = locks(&[k]).await;
    assert_eq!(
        rows.iter().filter(|l| !l.granted).count(),
        1,
        "at most one wait per key: {rows:#?}"
    );
    assert_eq!(got.load(Ordering::SeqCst), 0);
    guard.release().await.unwrap();
    for w in waiters {
        w.await.unwrap();
    }
    assert_eq!(got.load(Ordering::SeqCst), 10);
    until(&[k], T, "released", |r| r.is_empty()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_is_typed_and_leaves_no_server_waiter() {
    let locker = make(&app("locker-timeout"));
    let k = unique_key();
    let pool = sqlx::PgPool::connect(advisory_tests::db().url())
        .await
        .unwrap();
    let guard = pool.advisory_lock(k).await.unwrap();
    let t0 = Instant::now();
    let err = locker
        .lock_timeout(k, Duration::from_millis(300))
        .await
        .unwrap_err();
    let took = t0.elapsed();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "{took:?}"
    );
    until(&[k], T, "the server wait cancelled", |r| {
        r.len() == 1 && r[0].granted
    })
    .await;
    drop(guard);
    let lease = locker
        .lock_timeout(k, Duration::from_secs(5))
        .await
        .unwrap();
    lease.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_acquires_at_random_moments_leak_nothing() {
    let locker = make(&app("locker-cancel"));
    let ks = keys(4);
    let pool = sqlx::PgPool::connect(advisory_tests::db().url())
        .await
        .unwrap();
    let other = pool.advisory_lock(ks[0]).await.unwrap();
    let mut kept = Vec::new();
    for i in 0..300u64 {
        let k = ks[(i % 4) as usize];
        let d = Duration::from_micros((i * 7919) % 3000);
        let r = match i % 3 {
            0 => tokio::time::timeout(d, locker.lock(k))
                .await
                .map(|r| r.map(Some)),
            1 => tokio::time::timeout(d, locker.try_lock(k)).await,
            _ => tokio::time::timeout(d, locker.lock_shared(k))
                .await
                .map(|r| r.map(Some)),
        };
        if let Ok(Ok(Some(lease))) = r
            && i % 5 == 0
        {
            kept.push(lease);
            if kept.len() > 2 {
                drop(kept.remove(0));
            }
        }
    }
    drop(kept);
    drop(other);
    until(&ks, T, "nothing held or awaited", |r| r.is_empty()).await;
    // the locker is still fine
    let lease = locker.lock(ks[0]).await.unwrap();
    lease.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_resolves_when_the_session_backend_is_terminated_and_the_locker_recovers() {
    let locker = make(&app("locker-lost"));
    let k = unique_key();
    let k2 = unique_key();
    let lease = locker.lock(k).await.unwrap();
    let lease2 = locker.lock_shared(k2).await.unwrap();
    assert!(!lease.is_lost());
    let pid = holder_pid(k).await;
    let t0 = Instant::now();
    terminate(pid).await;
    tokio::time::timeout(Duration::from_secs(1), lease.lost())
        .await
        .expect("lost() within 1 s");
    tokio::time::timeout(Duration::from_secs(1), lease2.lost())
        .await
        .unwrap();
    eprintln!("lost() after pg_terminate_backend: {:?}", t0.elapsed());
    assert!(lease.is_lost());
    assert!(matches!(
        lease.release().await,
        Err(Error::ConnectionLost { .. })
    ));
    drop(lease2);
    // a new session serves new requests
    let again = locker.lock(k).await.unwrap();
    assert_ne!(holder_pid(k).await, pid);
    assert!(!again.is_lost());
    again.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frequent_keepalives_keep_a_healthy_session_and_its_leases() {
    let locker = make_with(
        &app("locker-keepalive"),
        LockerOptions::default()
            .keepalive(Some(Duration::from_millis(20)))
            .keepalive_timeout(Duration::from_millis(500)),
    );
    let k = unique_key();
    let lease = locker.lock(k).await.unwrap();
    let pid = holder_pid(k).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !lease.is_lost(),
        "a healthy session survives its keepalives"
    );
    assert_eq!(holder_pid(k).await, pid);
    lease.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_all_is_one_batch_when_free_and_all_or_nothing_on_timeout() {
    let locker = make(&app("locker-all"));
    let mut ks = keys(5);
    let leases = locker.lock_all(ks.clone()).await.unwrap();
    ks.sort();
    let got: Vec<Key> = leases.iter().map(|l| l.key()).collect();
    assert_eq!(got, ks, "sorted");
    until(&ks, T, "5 holds", |r| {
        r.iter().filter(|l| l.granted).count() == 5
    })
    .await;
    drop(leases);
    until(&ks, T, "released", |r| r.is_empty()).await;

    let pool = sqlx::PgPool::connect(advisory_tests::db().url())
        .await
        .unwrap();
    let guard = pool.advisory_lock(ks[3]).await.unwrap();
    let err = locker
        .lock_all_timeout(ks.clone(), Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    let k3 = ks[3];
    until(&ks, T, "only the other process's hold", move |r| {
        r.len() == 1 && r[0].key == k3
    })
    .await;
    // waits in order and gets them all once the key is free
    let l2 = locker.clone();
    let ks2 = ks.clone();
    let waiter = tokio::spawn(async move { l2.lock_all(ks2).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(guard);
    let leases = tokio::time::timeout(T, waiter).await.unwrap().unwrap();
    assert_eq!(leases.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_leads_within_a_second_after_the_leader_is_killed() {
    let k = unique_key();
    let leader = make(&app("locker-leader"));
    let standby = make(&app("locker-standby"));
    let lead = leader.campaign(k).await.unwrap();
    let s = standby.clone();
    let campaign = tokio::spawn(async move { s.campaign(k).await.unwrap() });
    until(&[k], T, "the standby waits", |r| {
        r.iter().any(|l| !l.granted)
    })
    .await;
    let pid = holder_pid(k).await;
    let t0 = Instant::now();
    terminate(pid).await;
    let new = tokio::time::timeout(Duration::from_secs(1), campaign)
        .await
        .expect("failover within 1 s")
        .unwrap();
    eprintln!("failover: {:?}", t0.elapsed());
    tokio::time::timeout(Duration::from_secs(1), lead.lost())
        .await
        .unwrap();
    assert!(!new.is_lost());
    assert_ne!(holder_pid(k).await, pid);
    new.resign().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lead_runs_the_work_again_after_a_loss() {
    let k = unique_key();
    let locker = make(&app("locker-lead"));
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let out = locker
        .lead(k, move |_leadership| {
            let r = r.clone();
            async move {
                let n = r.fetch_add(1, Ordering::SeqCst);
                if n == 0 {
                    // first term: the backend gets killed while we lead
                    let pid = holder_pid(k).await;
                    terminate(pid).await;
                    std::future::pending::<()>().await;
                }
                Some(n)
            }
        })
        .await
        .unwrap();
    assert_eq!(out, 1, "re-campaigned once after the loss");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[test]
fn a_lease_dropped_outside_any_runtime_or_after_shutdown_is_released() {
    let k = unique_key();
    let k2 = unique_key();
    let gone = |k: Key| {
        advisory_tests::wait_until(&[k], T, "released", |r| r.is_empty());
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (lease, lease2) = rt.block_on(async {
        let locker = make(&app("locker-rt"));
        (
            locker.lock(k).await.unwrap(),
            locker.lock(k2).await.unwrap(),
        )
    });
    // dropped on a plain thread while the runtime lives: the unlock rides the next batch
    std::thread::spawn(move || drop(lease)).join().unwrap();
    gone(k);
    // the runtime goes away with the lease alive: its session connection closes
    rt.shutdown_background();
    gone(k2);
    assert!(lease2.is_lost());
    drop(lease2);
}
