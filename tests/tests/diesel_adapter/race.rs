//! The grant-at-timeout race on every diesel path: PostgreSQL can raise `lock_timeout` (55P03)
//! for a wait granted in the same instant and keep the session lock. The adapters check
//! `pg_locks` after a session-scope timeout and hand out the guard; these loops show the race
//! really happens (they count the grants the adapter reports at the boundary, through its own
//! `tracing` event) and that no timed acquire ever leaves the lock behind.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use advisory_common::Key;
use advisory_tests::events::boundary_grants;
use advisory_tests::{assert_no_locks, granted, unique_key};
use diesel_advisory::Error;
use diesel_advisory::prelude::*;
use rand::Rng;

use super::{ASYNC_RELEASE, aconn, bb8_pool, conn, deadpool_pool, pid, r2d2_pool};

/// A session on its own thread taking and releasing `key` at random instants (µs resolution);
/// it fails, instead of hanging, if a timed acquire leaked the key.
fn churn(key: Key, stop: Arc<AtomicBool>) -> (i32, std::thread::JoinHandle<u64>) {
    let mut c = conn();
    let holder = pid(&mut c);
    let thread = std::thread::spawn(move || {
        let mut rng = rand::thread_rng();
        let mut rounds = 0;
        while !stop.load(Ordering::Relaxed) {
            let g = c
                .advisory_lock_timeout(key, ASYNC_RELEASE)
                .expect("the holder cannot get the key back: a timed acquire leaked it");
            std::thread::sleep(Duration::from_micros(rng.gen_range(0..2500)));
            g.release().unwrap();
            std::thread::sleep(Duration::from_micros(rng.gen_range(0..1500)));
            rounds += 1;
        }
        rounds
    });
    (holder, thread)
}

const MIN_ROUNDS: usize = 300;
const MAX_ROUNDS: usize = 6000;

/// Timed acquires (1-3 ms, alternately exclusive and shared) against [`churn`], at least
/// `MIN_ROUNDS` and until the adapter reported a grant at the boundary (at most `MAX_ROUNDS`).
/// `attempt` returns whether it got (and released) the lock. After every `Error::Timeout` the
/// observer must see no hold of `key` but the churner's.
fn race_their_timeouts(
    what: &str,
    attempt: &mut dyn FnMut(Key, Duration, bool) -> Result<(), Error>,
) {
    let key = unique_key();
    let started = Instant::now();
    let before = boundary_grants(key);
    let stop = Arc::new(AtomicBool::new(false));
    let (holder, thread) = churn(key, stop.clone());
    let mut rng = rand::thread_rng();
    let (mut rounds, mut acquired, mut timeouts) = (0, 0, 0);
    while rounds < MAX_ROUNDS && (rounds < MIN_ROUNDS || boundary_grants(key) == before) {
        let t = Duration::from_millis(rng.gen_range(1..=3));
        match attempt(key, t, rounds % 2 == 1) {
            Ok(()) => acquired += 1,
            Err(Error::Timeout { .. }) => {
                timeouts += 1;
                let others: Vec<_> = granted(key)
                    .into_iter()
                    .filter(|l| l.pid != holder)
                    .collect();
                assert!(
                    others.is_empty(),
                    "{what}: a timeout left the lock behind: {others:?}"
                );
            }
            Err(e) => panic!("{what}: unexpected error {e}"),
        }
        rounds += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let churned = thread.join().expect("the churning session failed");
    let boundary = boundary_grants(key) - before;
    eprintln!(
        "{what}: {rounds} timed acquires, {acquired} acquired ({boundary} of them granted at the \
         timeout boundary), {timeouts} timed out; holder {churned} rounds; {:?}",
        started.elapsed()
    );
    assert_no_locks(&[key], ASYNC_RELEASE);
    assert!(
        boundary > 0,
        "{what}: the grant-at-timeout race never happened in {rounds} rounds"
    );
}

#[test]
fn timed_acquires_racing_their_timeout_never_leak_sync() {
    let mut c = conn();
    race_their_timeouts("diesel sync PgConnection", &mut |key, t, shared| {
        let g = if shared {
            c.advisory_lock_shared_timeout(key, t)
        } else {
            c.advisory_lock_timeout(key, t)
        };
        g?.release()
    });
    let pool = r2d2_pool(1);
    race_their_timeouts("diesel r2d2", &mut |key, t, shared| {
        let g = if shared {
            pool.advisory_lock_shared_timeout(key, t)
        } else {
            pool.advisory_lock_timeout(key, t)
        };
        g?.release()
    });
}

/// The async paths: a bare connection, bb8 and deadpool (one connection each, so every attempt
/// runs on the connection whose previous attempt timed out).
#[test]
fn timed_acquires_racing_their_timeout_never_leak() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut c = rt.block_on(aconn());
    race_their_timeouts("diesel-async bare", &mut |key, t, shared| {
        rt.block_on(async {
            let g = if shared {
                c.advisory_lock_shared_timeout(key, t).await
            } else {
                c.advisory_lock_timeout(key, t).await
            };
            g?.release().await
        })
    });
    let (bp, dp) = rt.block_on(async { (bb8_pool(1).await, deadpool_pool(1)) });
    race_their_timeouts("diesel-async bb8", &mut |key, t, shared| {
        rt.block_on(async {
            let g = if shared {
                bp.advisory_lock_shared_timeout(key, t).await
            } else {
                bp.advisory_lock_timeout(key, t).await
            };
            g?.release().await
        })
    });
    race_their_timeouts("diesel-async deadpool", &mut |key, t, shared| {
        rt.block_on(async {
            let g = if shared {
                dp.advisory_lock_shared_timeout(key, t).await
            } else {
                dp.advisory_lock_timeout(key, t).await
            };
            g?.release().await
        })
    });
}
