//! Lock cost benchmark: every adapter path next to the raw SQL floor on the same driver and
//! connection kind, and next to sqlx's own `PgAdvisoryLock`, measured side by side in one run.
//!
//! ```text
//! cargo bench -p advisory-tests --bench lock_cost                 # full run, table
//! cargo bench -p advisory-tests --bench lock_cost -- --json       # same figures as JSON
//! cargo bench -p advisory-tests --bench lock_cost -- --quick      # tiny counts (CI: keeps it working)
//! ```
//!
//! Uses `DATABASE_URL` or the throwaway PostgreSQL of `advisory_tests::db()`. Each repetition runs
//! "ours" and its baselines back to back, so all see the same machine state, in an order rotated
//! every repetition (see [`order`]), so no variant always pays for following another workload.
//! Nothing here asserts a timing; correctness checks (final counter values) do fail the run.

mod diesel_contended;
mod diesel_paths;
mod proxy;
mod report;
mod sqlx_contended;
mod sqlx_paths;
mod trips;

use std::time::Duration;

use report::Figure;

/// Run parameters.
#[derive(Clone, Copy, Debug)]
pub struct Opts {
    pub reps: usize,
    /// ops per repetition for the per-call figures
    pub iters: usize,
    /// handoffs measured for the latency figures
    pub handoffs: usize,
    /// handoffs for the slow polling baseline
    pub poll_handoffs: usize,
    /// tasks and increments per task for the contention figures
    pub tasks: usize,
    pub per_task: usize,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let as_json = args.iter().any(|a| a == "--json");
    let opts = if quick {
        Opts {
            reps: 2,
            iters: 20,
            handoffs: 4,
            poll_handoffs: 2,
            tasks: 4,
            per_task: 5,
        }
    } else {
        Opts {
            reps: 15,
            iters: 500,
            handoffs: 60,
            poll_handoffs: 15,
            tasks: 16,
            per_task: 100,
        }
    };
    let db = advisory_tests::db();
    let machine = format!(
        "{} cores, {}, PostgreSQL on loopback ({}), {} build, reps={} iters={}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        std::env::consts::ARCH,
        if db.is_throwaway() {
            "throwaway cluster, fsync=off"
        } else {
            "DATABASE_URL"
        },
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        opts.reps,
        opts.iters
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let mut figs: Vec<Figure> = Vec::new();
    figs.extend(rt.block_on(sqlx_paths::run(db.url(), opts)));
    figs.extend(diesel_paths::run_sync(db.url(), opts));
    figs.extend(rt.block_on(diesel_paths::run_async(db.url(), opts)));
    figs.extend(rt.block_on(round_trips(db.url(), opts)));

    // section order for the table
    let sections = [
        "uncontended",
        "try (held elsewhere)",
        "handoff latency",
        "contention",
        "transaction scope",
        "round trips",
    ];
    figs.sort_by_key(|f| sections.iter().position(|s| *s == f.section).unwrap_or(99));

    if as_json {
        println!("{}", report::json(&machine, &figs));
    } else {
        println!(
            "{}",
            report::table(&format!("# advisory-lock benchmark: {machine}"), &figs)
        );
    }
}

/// Round trips per call, counted by a loopback proxy for every path.
async fn round_trips(url: &str, opts: Opts) -> Vec<Figure> {
    let (host, port, rest) = split_url(url);
    let (pport, counter) = proxy::start(format!("{host}:{port}")).await;
    let purl = format!(
        "{}{}:{}{}",
        &url[..url.find("://").unwrap() + 3],
        userinfo(url),
        pport,
        rest
    );
    let _ = host;
    let n = opts.iters.clamp(20, 200);
    let mut figs = Vec::new();
    for (path, trips) in trips::count_round_trips(&purl, &counter, n).await {
        figs.push(trip_fig(path, trips));
    }
    let c2 = counter.clone();
    let purl2 = purl.clone();
    let sync = tokio::task::spawn_blocking(move || trips::count_round_trips_sync(&purl2, &c2, n))
        .await
        .unwrap();
    for (path, trips) in sync {
        figs.push(trip_fig(path, trips));
    }
    for (path, trips) in trips::count_round_trips_async(&purl, &counter, n).await {
        figs.push(trip_fig(path, trips));
    }
    figs
}

fn trip_fig(path: String, trips: f64) -> Figure {
    Figure {
        section: "round trips",
        path,
        metric: "per call",
        unit: "trips",
        values: vec![trips],
        baseline: None,
        higher_is_better: false,
        note: String::new(),
    }
}

/// `postgres://user[:pw]@host:port/db?x` → (host, port, "/db?x")
fn split_url(url: &str) -> (String, u16, String) {
    let after = &url[url.find("://").unwrap() + 3..];
    let after = after.rsplit_once('@').map(|(_, h)| h).unwrap_or(after);
    let (hostport, rest) = after.split_at(after.find('/').unwrap_or(after.len()));
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse().unwrap_or(5432)),
        None => (hostport.to_string(), 5432),
    };
    (host, port, rest.to_string())
}

fn userinfo(url: &str) -> String {
    let after = &url[url.find("://").unwrap() + 3..];
    match after.rsplit_once('@') {
        Some((u, _)) => format!("{u}@127.0.0.1"),
        None => "127.0.0.1".into(),
    }
}

/// The order in which the `n` variants of one comparison run in repetition `rep`: rotated every
/// repetition, so no variant always runs first (right after another workload, e.g. while sqlx's
/// background pool-return tasks of the previous group still run) or last. Variant `v` pushes to its
/// own vector once per repetition, so index `i` of every vector is still repetition `i` and the
/// paired per-repetition ratios stay valid.
pub fn order(rep: usize, n: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |i| (i + rep) % n)
}

/// ops/s for `n` operations that took `d`.
pub fn ops(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

/// A figure comparing `ours` with `base` (both ops/s lists).
pub fn ops_fig(
    section: &'static str,
    path: &str,
    ours: Vec<f64>,
    base_name: &str,
    base: Vec<f64>,
) -> Figure {
    Figure {
        section,
        path: path.to_string(),
        metric: "throughput",
        unit: "ops/s",
        values: ours,
        baseline: Some((base_name.to_string(), base)),
        higher_is_better: true,
        note: String::new(),
    }
}
