//! diesel-advisory under random operation sequences, checked against a model after every step,
//! for every connection kind: diesel sync (bare `PgConnection`, r2d2) and diesel-async (bare
//! `AsyncPgConnection`, bb8, deadpool). Plus one targeted regression test per defect of the
//! review (issue 10), in `regressions`.
//!
//! The model (`model.rs`) says which session holds which key in which mode how many times; after
//! every step an independent observer session reads `pg_locks` and the test asserts:
//!
//! * **I3**: every hold owned by a live guard (or a transaction, or the contender) is there;
//! * **I1**: nothing is held that the model does not expect, except what a step just left in
//!   flight (a cancelled acquire, a queued unlock) until that session's next statement is
//!   answered, or a session that is closing; a pool never hands out a connection holding a lock;
//! * **I2**: every statement the test sends gets its own answer (`SELECT <random n>`), and a
//!   caller's rollback after a drop-time unlock works (unless the connection was marked broken).
//!
//! Each sequence prints its seed; `ADVISORY_MODEL_SEED=<seed>` replays one sequence of every
//! kind (filter by kind name: `cargo test -p advisory-tests --test diesel_model sync_bare`),
//! `ADVISORY_MODEL_SEQUENCES=<n>` runs `n` sequences per kind (a soak), `ADVISORY_MODEL_STEPS=<n>`
//! sets the steps per sequence.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use advisory_common::Key;
use advisory_tests::{unique_i32, unique_key};
use rand::SeedableRng;
use rand::rngs::StdRng;

#[path = "diesel_model/async_kinds.rs"]
mod async_kinds;
#[path = "diesel_model/async_run.rs"]
mod async_run;
#[path = "diesel_model/async_tx.rs"]
mod async_tx;
#[path = "diesel_model/model.rs"]
mod model;
#[path = "diesel_model/regressions.rs"]
mod regressions;
#[path = "diesel_model/support.rs"]
mod support;
#[path = "diesel_model/sync_kinds.rs"]
mod sync_kinds;
#[path = "diesel_model/sync_run.rs"]
mod sync_run;
#[path = "diesel_model/world.rs"]
mod world;

use model::Model;

const DEFAULT_SEQUENCES: usize = 60;
const DEFAULT_STEPS: usize = 40;

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v}: not a number"))
    })
}

/// Run the sequences of one kind (seeds from `ADVISORY_MODEL_SEED` / `ADVISORY_MODEL_SEQUENCES`).
fn run_kind(kind: &'static str, mut one: impl FnMut(&mut Model, usize)) {
    world::quiet_model_panics();
    let started = Instant::now();
    let seeds: Vec<u64> = match std::env::var("ADVISORY_MODEL_SEED") {
        Ok(s) => vec![s.parse().expect("ADVISORY_MODEL_SEED: a u64")],
        Err(_) => {
            let n = env_usize("ADVISORY_MODEL_SEQUENCES").unwrap_or(DEFAULT_SEQUENCES);
            (0..n).map(|_| rand::random()).collect()
        }
    };
    let steps = env_usize("ADVISORY_MODEL_STEPS").unwrap_or(DEFAULT_STEPS);
    let mut ops = 0;
    for &seed in &seeds {
        eprintln!("seed={seed} kind={kind}");
        let mut rng = StdRng::seed_from_u64(seed);
        let n_keys = 2 + usize::from(rand::Rng::gen_bool(&mut rng, 0.5));
        let mut keys: Vec<Key> = (0..n_keys).map(|_| unique_key()).collect();
        if rand::Rng::gen_bool(&mut rng, 0.3) {
            keys[0] = Key::Pair(unique_i32(), unique_i32());
        }
        let mut m = Model::new(kind, seed, rng, keys);
        one(&mut m, steps);
        ops += m.ops;
    }
    let sequences = SEQUENCES.fetch_add(seeds.len(), Ordering::Relaxed) + seeds.len();
    let operations = OPERATIONS.fetch_add(ops, Ordering::Relaxed) + ops;
    let kinds = KINDS.fetch_add(1, Ordering::Relaxed) + 1;
    // straight to stderr (not captured): the figures show in every run
    let line = format!(
        "SUMMARY diesel_model kind={kind} sequences={} operations={ops} steps={steps} in {:.1?}; \
         all kinds so far: kinds={kinds} sequences={sequences} operations={operations}\n",
        seeds.len(),
        started.elapsed()
    );
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
}

static KINDS: AtomicUsize = AtomicUsize::new(0);
static SEQUENCES: AtomicUsize = AtomicUsize::new(0);
static OPERATIONS: AtomicUsize = AtomicUsize::new(0);

#[test]
fn sync_bare() {
    run_kind("sync_bare", sync_kinds::bare);
}

#[test]
fn sync_r2d2() {
    run_kind("sync_r2d2", sync_kinds::r2d2);
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn async_bare() {
    let rt = runtime();
    run_kind("async_bare", |m, steps| {
        rt.block_on(async_kinds::bare(m, steps))
    });
}

#[test]
fn async_bb8() {
    let rt = runtime();
    run_kind("async_bb8", |m, steps| {
        rt.block_on(async_kinds::pooled::<support::Bb8>(m, steps))
    });
}

#[test]
fn async_deadpool() {
    let rt = runtime();
    run_kind("async_deadpool", |m, steps| {
        rt.block_on(async_kinds::pooled::<support::Deadpool>(m, steps))
    });
}
