//! The drop-path guarantee of `sqlx-advisory`, proved over random operation sequences rather than
//! hand-picked paths (issue 10). For each connection kind a seeded generator drives locks (wait,
//! try, timed; exclusive, shared; nested on a guard), transactions on the guard (failing
//! statements, commit / rollback / drop / a cancelled commit), failing and cancelled queries,
//! `is_held`, release / cancelled release / drop of guards, cancellation of any of these at a
//! random poll, guards dropped on plain threads and after their runtime is gone, connections
//! returned to the pool, and a contender session. A model says what every session should hold;
//! after every step it is compared with `pg_locks`, read with raw SQL on an independent session:
//!
//! * I1: after a guard is released or dropped, in whatever state its connection is, the lock is
//!   gone before the connection's next statement is answered or before the pool hands the
//!   connection out again (or the connection is closed);
//! * I2: the caller's own statements get their own answers;
//! * I3: no hold that a live guard owns ever disappears (and `release()` / `is_held()` of a live
//!   guard succeed);
//! * the answers of try / timed acquires agree with the model (mutual exclusion).
//!
//! Every sequence prints its seed; `ADVISORY_MODEL_SEED=<seed>` replays that sequence (the same
//! operations; timing-dependent outcomes such as where a cancellation lands may differ), and
//! `ADVISORY_MODEL_SEQUENCES=<n>` runs a longer soak.

#[path = "sqlx_model/borrowed.rs"]
mod borrowed;
#[path = "sqlx_model/pooled.rs"]
mod pooled;
#[path = "sqlx_model/world.rs"]
mod world;

use std::time::{Duration, Instant};

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use world::{World, connect, pid_of};

const OPS: usize = 60;

async fn url() -> String {
    tokio::task::spawn_blocking(|| advisory_tests::db().url().to_owned())
        .await
        .unwrap()
}

async fn pool(url: &str, max: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(20))
        .connect(url)
        .await
        .unwrap()
}

fn seeds() -> Vec<u64> {
    if let Ok(s) = std::env::var("ADVISORY_MODEL_SEED") {
        return vec![s.parse().expect("ADVISORY_MODEL_SEED is a u64")];
    }
    let n = std::env::var("ADVISORY_MODEL_SEQUENCES")
        .map(|s| s.parse().expect("ADVISORY_MODEL_SEQUENCES is a number"))
        .unwrap_or(40);
    (0..n).map(|_| rand::random::<u64>() >> 12).collect()
}

/// Runs `seq` once per seed, printing the seed first, and the totals at the end.
async fn run<F>(kind: &str, mut seq: F)
where
    F: AsyncFnMut(&mut World, &str),
{
    let url = url().await;
    let started = Instant::now();
    let (mut sequences, mut ops) = (0, 0);
    for seed in seeds() {
        eprintln!("sqlx model {kind}: seed={seed}");
        let mut w = World::new(&url, seed).await;
        seq(&mut w, &url).await;
        sequences += 1;
        ops += w.ops;
    }
    eprintln!(
        "sqlx model {kind}: {sequences} sequences, {ops} operations, 0 invariant violations, {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_connection() {
    run("PgConnection", async |w, url| {
        let mut c = connect(url).await;
        let pid = pid_of(&mut c).await;
        w.live.insert(pid);
        let mut budget = OPS;
        while budget > 0 {
            borrowed::level(w, &mut c, pid, 0, &mut budget, false).await;
        }
        w.check(true).await;
        w.live.remove(&pid);
        drop(c);
        w.check(true).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_connection() {
    run("PoolConnection", async |w, url| {
        let p = pool(url, 1).await;
        let mut budget = OPS;
        while budget > 0 {
            let mut pc = p.acquire().await.unwrap();
            let pid = pid_of(&mut pc).await;
            w.assert_pid_holds_nothing(pid, "a connection just checked out")
                .await;
            w.synced(); // the pool's release check read every queued answer
            w.live.insert(pid);
            borrowed::level(w, &mut pc, pid, 0, &mut budget, true).await;
            w.live.remove(&pid);
            drop(pc);
            w.note("returned to the pool");
        }
        let mut pc = p.acquire().await.unwrap();
        let pid = pid_of(&mut pc).await;
        w.assert_pid_holds_nothing(pid, "a connection just checked out")
            .await;
        w.check(true).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_transaction() {
    run("Transaction", async |w, url| {
        let p = pool(url, 2).await;
        pooled::tx_kind(w, &p, OPS).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_guard() {
    run("PgPool", async |w, url| {
        let p = pool(url, 3).await;
        pooled::pool_kind(w, &p, OPS).await;
    })
    .await;
}
