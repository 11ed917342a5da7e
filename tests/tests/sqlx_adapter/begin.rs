//! Issue 5: `begin_with_xact_lock` opens a transaction that already holds the lock, in one round
//! trip; a failed attempt leaves the connection outside any transaction; a cancelled pooled
//! attempt never hands the next user a connection inside a transaction or holding the lock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use advisory_common::{Key, LockMode};
use advisory_tests::unique_key;
use rand::{Rng, SeedableRng, rngs::StdRng};
use sqlx::{Connection, PgConnection, Row};
use sqlx_advisory::Error;
use sqlx_advisory::prelude::*;

use crate::cancel::toggler;
use crate::support::*;

/// Is this session inside a transaction block (open or aborted), as the server sees it?
/// `SAVEPOINT` outside one fails with SQLSTATE 25P01 and changes nothing.
async fn server_in_transaction(c: &mut PgConnection) -> bool {
    match sqlx::raw_sql("SAVEPOINT probe").execute(&mut *c).await {
        Ok(_) => {
            sqlx::raw_sql("RELEASE SAVEPOINT probe")
                .execute(&mut *c)
                .await
                .unwrap();
            true
        }
        Err(e) => match e.as_database_error().and_then(|d| d.code()).as_deref() {
            Some("25P01") => false,
            Some("25P02") => true, // in an aborted transaction
            _ => panic!("{e:?}"),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transaction_holds_the_lock_until_commit_rollback_or_drop() {
    let p = pool(2).await;
    for end in ["commit", "rollback", "drop"] {
        for shared in [false, true] {
            let key = if shared {
                Key::Pair(advisory_tests::unique_i32(), 1)
            } else {
                unique_key()
            };
            let mut tx = if shared {
                p.begin_with_xact_lock_shared(key).await.unwrap()
            } else {
                p.begin_with_xact_lock(key).await.unwrap()
            };
            assert!(tx.is_in_transaction(), "sqlx counts the transaction");
            let my_pid = pid(&mut tx).await;
            assert!(server_in_transaction(&mut tx).await);
            let rows = wait_until(&[key], SOON, "the transaction lock", |r| r.len() == 1).await;
            assert_eq!(rows[0].pid, my_pid);
            assert!(rows[0].granted);
            let want = if shared {
                LockMode::Shared
            } else {
                LockMode::Exclusive
            };
            assert_eq!(rows[0].mode, want);
            // another session is excluded (exclusive) or admitted as a reader (shared)
            let mut other = p.begin().await.unwrap();
            assert!(!other.try_xact_lock(key).await.unwrap());
            assert_eq!(other.try_xact_lock_shared(key).await.unwrap(), shared);
            other.rollback().await.unwrap();
            match end {
                "commit" => tx.commit().await.unwrap(),
                "rollback" => tx.rollback().await.unwrap(),
                _ => drop(tx),
            }
            assert_no_locks(&[key], SOON).await;
        }
    }
    // the connections went back to the pool clean
    for _ in 0..2 {
        let mut c = p.acquire().await.unwrap();
        assert!(!server_in_transaction(&mut c).await);
        assert_eq!(own_locks(&mut c).await, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_begin_gets_the_lock_when_the_holder_commits() {
    let p = pool(3).await;
    let key = unique_key();
    let first = p.begin_with_xact_lock(key).await.unwrap();
    let p2 = p.clone();
    let second = tokio::spawn(async move {
        let mut tx = p2.begin_with_xact_lock(key).await.unwrap();
        let pid = pid(&mut tx).await;
        (tx, pid)
    });
    let waiter = wait_for_any_waiter(key).await;
    first.commit().await.unwrap();
    let (tx, second_pid) = tokio::time::timeout(SOON, second).await.unwrap().unwrap();
    assert_eq!(waiter, second_pid);
    assert_eq!(holders(key).await, vec![second_pid]);
    tx.commit().await.unwrap();
    assert_no_locks(&[key], SOON).await;
}

/// A timed-out attempt: typed error, and the connection is outside any transaction (for sqlx and
/// for the server), holds nothing, keeps its own `lock_timeout`, and works for the next attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_begin_leaves_the_connection_outside_any_transaction() {
    let key = unique_key();
    let mut holder = conn().await;
    let h = holder.advisory_lock(key).await.unwrap();
    let t = Duration::from_millis(100);

    let mut c = conn().await;
    sqlx::query("SET lock_timeout = '7s'")
        .execute(&mut c)
        .await
        .unwrap();
    for shared in [false, true] {
        let start = Instant::now();
        let r = if shared {
            c.begin_with_xact_lock_shared_timeout(key, t)
                .await
                .map(drop)
        } else {
            c.begin_with_xact_lock_timeout(key, t).await.map(drop)
        };
        let took = start.elapsed();
        assert!(
            matches!(r, Err(Error::Timeout { key: k, timeout }) if k == key && timeout == t),
            "{r:?}"
        );
        assert!(
            took >= t && took < t + Duration::from_millis(600),
            "{took:?}"
        );
        assert!(!c.is_in_transaction());
        assert!(!server_in_transaction(&mut c).await);
        assert_eq!(own_locks(&mut c).await, 0);
        let lt: String = sqlx::query_scalar(advisory_common::sql::SHOW_LOCK_TIMEOUT)
            .fetch_one(&mut c)
            .await
            .unwrap();
        assert_eq!(lt, "7s");
    }

    // the pool: the failed checkout goes back clean, and is the one handed out next
    let p = pool(1).await;
    let r = p.begin_with_xact_lock_timeout(key, t).await;
    assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
    let mut pc = p.acquire().await.unwrap();
    assert!(!server_in_transaction(&mut pc).await);
    assert_eq!(own_locks(&mut pc).await, 0);
    drop(pc);

    h.release().await.unwrap();
    let tx = c.begin_with_xact_lock_timeout(key, SOON).await.unwrap();
    tx.commit().await.unwrap();
    let tx = p.begin_with_xact_lock_timeout(key, SOON).await.unwrap();
    tx.commit().await.unwrap();
    assert_no_locks(&[key], SOON).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inside_a_transaction_nothing_is_sent() {
    let mut c = conn().await;
    let my_pid = pid(&mut c).await;
    let key = unique_key();
    let mut tx = c.begin().await.unwrap();
    sqlx::query("SELECT 'marker-before-begin-with-lock'")
        .execute(&mut *tx)
        .await
        .unwrap();
    for r in [
        tx.begin_with_xact_lock(key).await.map(drop),
        tx.begin_with_xact_lock_shared(key).await.map(drop),
        tx.begin_with_xact_lock_timeout(key, SOON).await.map(drop),
        tx.begin_with_xact_lock_shared_timeout(key, SOON)
            .await
            .map(drop),
    ] {
        assert!(
            matches!(r, Err(Error::AlreadyInTransaction { key: k }) if k == key),
            "{r:?}"
        );
    }
    let mut observer = conn().await;
    let last: String = sqlx::query("SELECT query FROM pg_stat_activity WHERE pid = $1")
        .bind(my_pid)
        .fetch_one(&mut observer)
        .await
        .unwrap()
        .get(0);
    assert_eq!(last, "SELECT 'marker-before-begin-with-lock'");
    // the error travels through sqlx::Error (not as a database error: nothing was sent), and back
    let e = sqlx::Error::from(Error::AlreadyInTransaction { key });
    assert!(matches!(e, sqlx::Error::Configuration(_)), "{e:?}");
    assert!(matches!(Error::from(e), Error::AlreadyInTransaction { .. }));
    tx.commit().await.unwrap();
}

/// Cancelled mid-wait, the pooled attempt is finished in the background and rolled back: the
/// pool's only connection comes back outside any transaction and holding nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_pool_begin_never_returns_a_connection_in_a_transaction() {
    let key = unique_key();
    let p = pool(1).await;
    let mut holder = conn().await;
    let h = holder.advisory_lock(key).await.unwrap();
    tokio::select! {
        r = p.begin_with_xact_lock(key) => panic!("cannot be granted yet: {r:?}"),
        _ = wait_for_any_waiter(key) => {} // dropped here, mid-wait
    }
    h.release().await.unwrap();
    // the only connection: handed out once the background rollback is done
    let mut c = tokio::time::timeout(SOON, p.acquire())
        .await
        .unwrap()
        .unwrap();
    assert!(!c.is_in_transaction());
    assert!(!server_in_transaction(&mut c).await);
    assert_eq!(own_locks(&mut c).await, 0);
    drop(c);
    assert_no_locks(&[key], SOON).await;
}

/// A cancelled pooled blocking begin does not keep its connection while the lock is still held
/// elsewhere: its lock wait is cancelled from another session, and the pool's only connection is
/// back, clean, long before the holder lets go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_pool_begin_gives_its_connection_back_while_the_lock_is_still_held() {
    let key = unique_key();
    let p = pool(1).await;
    let mut holder = conn().await;
    let holder_pid = pid(&mut holder).await;
    let h = holder.advisory_lock(key).await.unwrap();
    for variant in 0..2 {
        tokio::select! {
            r = async {
                if variant == 0 {
                    p.begin_with_xact_lock(key).await
                } else {
                    p.begin_with_xact_lock_shared(key).await
                }
            } => panic!("cannot be granted yet: {r:?}"),
            _ = wait_for_any_waiter(key) => {} // dropped here, mid-wait
        }
        let mut c = tokio::time::timeout(SOON, p.acquire())
            .await
            .expect("the pool's only connection is back while the holder still holds the key")
            .unwrap();
        assert!(!server_in_transaction(&mut c).await);
        assert_eq!(own_locks(&mut c).await, 0);
        let on_key: Vec<_> = tokio::task::spawn_blocking(move || {
            advisory_tests::advisory_locks()
                .into_iter()
                .filter(|l| l.key == key)
                .collect::<Vec<_>>()
        })
        .await
        .unwrap();
        assert!(
            on_key.len() == 1 && on_key[0].pid == holder_pid && on_key[0].granted,
            "only the holder, nobody waiting any more: {on_key:?}"
        );
    }
    h.release().await.unwrap();
    assert_no_locks(&[key], SOON).await;
}

/// Random deadlines around every pooled variant while another session takes and releases the key:
/// no lock leaks and every pooled connection is clean afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_pool_begins_never_leak_a_lock_or_a_transaction() {
    let p = pool(4).await;
    let key = unique_key();
    let stop = Arc::new(AtomicBool::new(false));
    let other = toggler(key, stop.clone());
    let mut rng = StdRng::from_entropy();
    let (mut granted, mut cancelled, mut timed_out) = (0, 0, 0);
    for i in 0..400 {
        let deadline = Duration::from_micros(rng.gen_range(0..4000));
        let t = Duration::from_millis(2);
        let p2 = p.clone();
        let attempt = async move {
            match i % 4 {
                0 => p2.begin_with_xact_lock(key).await,
                1 => p2.begin_with_xact_lock_shared(key).await,
                2 => p2.begin_with_xact_lock_timeout(key, t).await,
                _ => p2.begin_with_xact_lock_shared_timeout(key, t).await,
            }
        };
        match tokio::time::timeout(deadline, attempt).await {
            Ok(Ok(tx)) => {
                granted += 1;
                if rng.gen_bool(0.5) {
                    tx.commit().await.unwrap();
                } else {
                    drop(tx);
                }
            }
            Ok(Err(Error::Timeout { .. })) => timed_out += 1,
            Ok(Err(e)) => panic!("{e:?}"),
            Err(_) => cancelled += 1,
        }
    }
    stop.store(true, Ordering::Relaxed);
    let rounds = other.await.unwrap();
    eprintln!(
        "granted {granted}, timed out {timed_out}, cancelled {cancelled}; other session: {rounds} rounds"
    );
    assert!(
        cancelled > 20 && granted > 20,
        "the loop exercised too little"
    );
    assert_no_locks(&[key], SOON).await;
    let mut all = Vec::new();
    for _ in 0..4 {
        let mut c = tokio::time::timeout(SOON, p.acquire())
            .await
            .unwrap()
            .unwrap();
        assert!(!c.is_in_transaction());
        assert!(!server_in_transaction(&mut c).await);
        assert_eq!(own_locks(&mut c).await, 0);
        all.push(c);
    }
}

/// Documented limitation: on a borrowed connection, an attempt cancelled after its statement went
/// out completes on the server, leaving the connection inside a transaction that holds the lock
/// and that sqlx does not know about.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_begin_on_a_borrowed_connection_completes_on_the_server() {
    let key = unique_key();
    let mut holder = conn().await;
    let h = holder.advisory_lock(key).await.unwrap();
    let mut c = conn().await;
    let c_pid = pid(&mut c).await;
    tokio::select! {
        r = c.begin_with_xact_lock(key) => panic!("cannot be granted yet: {r:?}"),
        _ = wait_for_waiter(key, c_pid) => {}
    }
    h.release().await.unwrap();
    wait_until(&[key], SOON, "the cancelled request granted", move |r| {
        r.iter().any(|l| l.pid == c_pid && l.granted)
    })
    .await;
    assert!(!c.is_in_transaction(), "sqlx does not know");
    assert!(server_in_transaction(&mut c).await, "the server does");
    sqlx::query("ROLLBACK").execute(&mut c).await.unwrap();
    assert_no_locks(&[key], SOON).await;
}
