//! Issue 4: server-side timeouts. `Error::Timeout` within timeout + margin, `lock_timeout`
//! unchanged afterwards (inside and outside a transaction), a wait the holder ends mid-way
//! succeeds, failed timed / try transaction attempts leave the transaction usable, and a timeout
//! racing the grant never leaves a session lock behind.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use advisory_common::Key;
use advisory_common::sql::{SHOW_LOCK_TIMEOUT, UNLOCK_ALL};
use advisory_tests::events::boundary_grants;
use advisory_tests::{unique_key, unique_name};
use rand::{Rng, SeedableRng, rngs::StdRng};
use sqlx::{Connection, PgConnection};
use sqlx_advisory::Error;
use sqlx_advisory::prelude::*;

use crate::support::*;

const T: Duration = Duration::from_millis(150);
const MARGIN: Duration = Duration::from_millis(600);

async fn show_lock_timeout(c: &mut PgConnection) -> String {
    sqlx::query_scalar(SHOW_LOCK_TIMEOUT)
        .fetch_one(c)
        .await
        .unwrap()
}

fn assert_timeout(res: Result<(), Error>, key: Key, started: Instant) {
    let elapsed = started.elapsed();
    match res {
        Err(Error::Timeout { key: k, timeout }) => {
            assert_eq!((k, timeout), (key, T));
        }
        other => panic!("expected Error::Timeout, got {other:?}"),
    }
    assert!(
        elapsed >= T - Duration::from_millis(5),
        "gave up too early: {elapsed:?}"
    );
    assert!(elapsed < T + MARGIN, "gave up too late: {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_arrives_in_time_and_lock_timeout_is_unchanged_outside_a_transaction() {
    let key = unique_key();
    let p = pool(2).await;
    let mut holder = conn().await;
    let h = holder.advisory_lock(key).await.unwrap();

    let started = Instant::now();
    assert_timeout(
        p.advisory_lock_timeout(key, T).await.map(drop),
        key,
        started,
    );
    let started = Instant::now();
    assert_timeout(
        p.advisory_lock_shared_timeout(key, T).await.map(drop),
        key,
        started,
    );

    let mut c = conn().await;
    sqlx::query("SET lock_timeout = '7s'")
        .execute(&mut c)
        .await
        .unwrap();
    let started = Instant::now();
    assert_timeout(
        c.advisory_lock_timeout(key, T).await.map(drop),
        key,
        started,
    );
    assert_eq!(show_lock_timeout(&mut c).await, "7s");
    h.release().await.unwrap();
    let g = c.advisory_lock_timeout(key, T).await.unwrap();
    drop(g);
    assert_eq!(show_lock_timeout(&mut c).await, "7s");
    assert_no_locks(&[key], SOON).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_attempts_inside_a_transaction_keep_it_usable_and_its_lock_timeout() {
    let key = unique_key();
    let id = unique_name("timeout-tx");
    let mut holder = conn().await;
    let h = holder.advisory_lock(key).await.unwrap();
    let mut c = conn().await;
    let mut tx = c.begin().await.unwrap();
    sqlx::query("SET lock_timeout = '7s'")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("INSERT INTO advisory_test_counters (id, value) VALUES ($1, 1)")
        .bind(&id)
        .execute(&mut *tx)
        .await
        .unwrap();

    let started = Instant::now();
    assert_timeout(tx.xact_lock_timeout(key, T).await, key, started);
    let started = Instant::now();
    assert_timeout(tx.xact_lock_shared_timeout(key, T).await, key, started);
    assert!(!tx.try_xact_lock(key).await.unwrap());
    assert!(!tx.try_xact_lock_shared(key).await.unwrap());
    assert_eq!(show_lock_timeout(&mut tx).await, "7s");

    // the transaction is not doomed: a statement after the failures succeeds, and it commits
    sqlx::query("UPDATE advisory_test_counters SET value = value + 1 WHERE id = $1")
        .bind(&id)
        .execute(&mut *tx)
        .await
        .unwrap();
    h.release().await.unwrap();
    tx.xact_lock_timeout(key, T).await.unwrap(); // free now: succeeds inside the savepoint
    assert_eq!(show_lock_timeout(&mut tx).await, "7s");
    let rows = granted(key).await;
    assert_eq!(rows.len(), 1);
    tx.commit().await.unwrap();
    assert_no_locks(&[key], SOON).await;
    let v: i64 = sqlx::query_scalar("SELECT value FROM advisory_test_counters WHERE id = $1")
        .bind(&id)
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(v, 2, "the committed transaction kept both writes");
    assert_eq!(show_lock_timeout(&mut c).await, "7s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_wait_succeeds_when_the_holder_releases_mid_wait() {
    let key = unique_key();
    let p = pool(2).await;
    let mut holder = conn().await;
    let h = holder.advisory_lock(key).await.unwrap();
    let p2 = p.clone();
    let started = Instant::now();
    let waiter =
        tokio::spawn(async move { p2.advisory_lock_timeout(key, Duration::from_secs(10)).await });
    let w = wait_for_any_waiter(key).await;
    h.release().await.unwrap();
    let g = tokio::time::timeout(SOON, waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(holders(key).await, vec![w]);
    g.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_and_zero_timeouts() {
    let key = unique_key();
    let p = pool(1).await;
    let huge = Duration::from_secs(u64::MAX);
    assert!(matches!(
        p.advisory_lock_timeout(key, huge).await,
        Err(Error::InvalidTimeout(_))
    ));
    let mut c = conn().await;
    let mut tx = c.begin().await.unwrap();
    assert!(matches!(
        tx.xact_lock_timeout(key, huge).await,
        Err(Error::InvalidTimeout(_))
    ));
    tx.commit().await.unwrap();
    // zero: waits at most 1 ms, succeeds on a free key
    let g = p.advisory_lock_timeout(key, Duration::ZERO).await.unwrap();
    assert_eq!(granted(key).await.len(), 1);
    g.release().await.unwrap();
}

/// Takes `key`, holds it a moment, releases it, pauses, over and over until `stop`; returns its pid.
/// Its session has `lock_timeout = '10s'`, so a lock the other side leaked fails it instead of
/// hanging it.
async fn churn(key: Key, stop: Arc<AtomicBool>) -> (i32, tokio::task::JoinHandle<u32>) {
    let mut c = conn().await;
    sqlx::query("SET lock_timeout = '10s'")
        .execute(&mut c)
        .await
        .unwrap();
    let holder = pid(&mut c).await;
    let task = tokio::spawn(async move {
        let mut rng = StdRng::from_entropy();
        let mut rounds = 0;
        while !stop.load(Ordering::Relaxed) {
            let g = c
                .advisory_lock(key)
                .await
                .expect("the holder cannot get the key back: a timed acquire leaked it");
            tokio::time::sleep(Duration::from_micros(rng.gen_range(0..2500))).await;
            g.release().await.unwrap();
            tokio::time::sleep(Duration::from_micros(rng.gen_range(0..1500))).await;
            rounds += 1;
        }
        rounds
    });
    (holder, task)
}

/// What [`race_their_timeouts`] asks of the connection under test.
enum Step {
    /// A timed acquire (`true`: shared) with this timeout; release the guard if granted.
    Attempt(Duration, bool),
    /// Drop every session lock (cleaning up after a detected leak, so the run can count them).
    UnlockAll,
}

/// At least this many rounds, and more (up to `MAX_RACE_ROUNDS`) until the race has happened.
const RACE_ROUNDS: usize = 1000;
const MAX_RACE_ROUNDS: usize = 20_000;

/// `RACE_ROUNDS` session-scope timed acquires (1-3 ms) against [`churn`]. PostgreSQL can raise
/// `lock_timeout` for a wait granted in the same instant and keep the lock: after every
/// `Error::Timeout` the observer must see no hold of `key` but the churner's.
async fn race_their_timeouts(
    what: &str,
    key: Key,
    mut step: impl AsyncFnMut(Step) -> Result<(), Error>,
) {
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let (holder, task) = churn(key, stop.clone()).await;
    let mut rng = StdRng::from_entropy();
    let before = boundary_grants(key);
    let (mut acquired, mut timeouts, mut leaks, mut i) = (0, 0, 0, 0);
    while i < MAX_RACE_ROUNDS && (i < RACE_ROUNDS || boundary_grants(key) == before) {
        i += 1;
        let t = Duration::from_millis(rng.gen_range(1..=3));
        match step(Step::Attempt(t, i % 2 == 1)).await {
            Ok(()) => acquired += 1,
            Err(Error::Timeout { .. }) => {
                timeouts += 1;
                if granted(key).await.iter().any(|l| l.pid != holder) {
                    leaks += 1;
                    step(Step::UnlockAll).await.unwrap();
                }
            }
            Err(e) => panic!("{what}: unexpected error {e}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let rounds = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the holder is stuck: a lock leaked")
        .unwrap();
    let boundary = boundary_grants(key) - before;
    eprintln!(
        "{what}: {i} timed acquires, {acquired} acquired ({boundary} of them granted at the timeout boundary), {timeouts} timeouts, {leaks} leaked, holder {rounds} rounds, {:?}",
        started.elapsed()
    );
    assert!(
        boundary > 0,
        "{what}: the grant-at-timeout race never happened in {i} rounds"
    );
    assert_eq!(
        leaks, 0,
        "{what}: {leaks} of {timeouts} timeouts left the lock with the session"
    );
    assert_no_locks(&[key], SOON).await;
    assert!(
        acquired > 0 && timeouts > 0,
        "{what}: the race was not exercised"
    );
}

async fn unlock_all(c: &mut PgConnection) -> Result<(), Error> {
    sqlx::query(UNLOCK_ALL).execute(c).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_acquires_racing_their_timeout_never_leak_on_a_connection() {
    let key = unique_key();
    let mut c = conn().await;
    race_their_timeouts("PgConnection", key, async |step| match step {
        Step::Attempt(t, false) => c.advisory_lock_timeout(key, t).await?.release().await,
        Step::Attempt(t, true) => {
            c.advisory_lock_shared_timeout(key, t)
                .await?
                .release()
                .await
        }
        Step::UnlockAll => unlock_all(&mut c).await,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_acquires_racing_their_timeout_never_leak_on_a_pool() {
    let key = unique_key();
    let p = pool(1).await;
    race_their_timeouts("PgPool", key, async |step| match step {
        Step::Attempt(t, false) => p.advisory_lock_timeout(key, t).await?.release().await,
        Step::Attempt(t, true) => {
            p.advisory_lock_shared_timeout(key, t)
                .await?
                .release()
                .await
        }
        // one connection: the checkout that timed out
        Step::UnlockAll => unlock_all(&mut *p.acquire().await?).await,
    })
    .await;
    assert_eq!(p.size(), 1, "the pool still has its connection");
}
