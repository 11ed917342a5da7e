//! Lock service benchmark (issue 13): the `Locker` next to per-task `PgPool` guards, side by side
//! in one run.
//!
//! ```text
//! cargo bench -p advisory-tests --bench locker              # full run
//! cargo bench -p advisory-tests --bench locker -- --quick   # tiny counts (keeps it working)
//! ```
//!
//! Uses the throwaway PostgreSQL of `advisory_tests::db()` (it restarts it once, for the
//! server-restart figure). Nothing here asserts a timing; wrong answers fail the run.
//!
//! * throughput: N tasks each acquire + release a distinct key, all at once (locker vs guards on a
//!   10-connection pool), repeated, order alternated; round trips counted by a loopback proxy;
//! * a lone caller's acquire + release latency (locker vs pool guard), interleaved;
//! * 10,000 leases: connections used (`pg_stat_activity`) and client memory per lease (a counting
//!   allocator);
//! * lost-lock notification latency after `pg_terminate_backend` (p50 / p99), after a server
//!   restart, and after a silent network cut through the proxy (with the keepalive bound);
//! * leader failover latency (leader's backend terminated → standby leads).

mod proxy;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use advisory_common::Key;
use advisory_common::LockMode;
use advisory_common::locker::{Op, sql as lsql};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection};
use sqlx_advisory::prelude::*;
use sqlx_advisory::{Locker, LockerOptions};

struct Counting;

static ALLOCATED: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        ALLOCATED.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCATED.fetch_add(n as isize - l.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

struct Opts {
    warmup: usize,
    /// A throughput measurement repeats its round until this much time has passed.
    window: Duration,
    reps: usize,
    tasks: usize,
    lone: usize,
    held: usize,
    kills: usize,
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let o = if quick {
        Opts {
            warmup: 1,
            window: Duration::ZERO,
            reps: 2,
            tasks: 100,
            lone: 20,
            held: 500,
            kills: 3,
        }
    } else {
        Opts {
            warmup: 3,
            window: Duration::from_millis(100),
            reps: 25,
            tasks: 1000,
            lone: 1000,
            held: 10_000,
            kills: 40,
        }
    };
    let db = advisory_tests::db();
    let url = db.url().to_owned();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "locker benchmark: {} cores, PostgreSQL on loopback (throwaway cluster, fsync=off), {} build",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    // `-- --only throughput` (or lone): just that section
    let only = std::env::args().skip_while(|a| a != "--only").nth(1);
    if let Some(only) = only {
        rt.block_on(async {
            match only.as_str() {
                "throughput" => throughput(&url, &o).await,
                "lone" => lone(&url, &o).await,
                // a profiling aid: only the locker side of the throughput section, many times
                "locker-profile" => locker_profile(&url, &o).await,
                other => panic!("unknown section {other}"),
            }
        });
        return;
    }
    rt.block_on(async {
        throughput(&url, &o).await;
        lone(&url, &o).await;
        held(&url, &o).await;
        lost_after_terminate(&url, &o).await;
        failover(&url, &o).await;
        network_cut(&url).await;
    });
    // last: restarts the server
    rt.block_on(restart(&url));
}

fn opts(url: &str, app: &str) -> PgConnectOptions {
    url.parse::<PgConnectOptions>()
        .unwrap()
        .application_name(app)
}

fn keys(n: usize) -> Vec<Key> {
    (0..n).map(|_| advisory_tests::unique_key()).collect()
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn observer(url: &str) -> PgConnection {
    PgConnection::connect_with(&opts(url, "locker-bench-observer"))
        .await
        .unwrap()
}

async fn pid_holding(obs: &mut PgConnection, key: Key) -> i32 {
    let Key::BigInt(k) = key else { unreachable!() };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pid: Option<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 \
             AND ((classid::int8 << 32) | objid::int8) = $1",
        )
        .bind(k)
        .fetch_optional(&mut *obs)
        .await
        .unwrap();
        if let Some(pid) = pid {
            return pid;
        }
        assert!(Instant::now() < deadline, "no holder of {key}");
        tokio::task::yield_now().await;
    }
}

async fn terminate(obs: &mut PgConnection, pid: i32) {
    let ok: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&mut *obs)
        .await
        .unwrap();
    assert!(ok);
}

async fn throughput(url: &str, o: &Opts) {
    let upstream = format!("127.0.0.1:{}", advisory_tests::db().port().unwrap());
    let proxy = proxy::start(upstream).await;
    let via_opts: PgConnectOptions = url
        .parse::<PgConnectOptions>()
        .unwrap()
        .host("127.0.0.1")
        .port(proxy.port);
    let locker = Locker::with_options(via_opts.clone(), LockerOptions::default());
    let pool = PgPoolOptions::new()
        .max_connections(10)
        .min_connections(10)
        .connect_with(via_opts)
        .await
        .unwrap();
    // warm both
    locker
        .lock(advisory_tests::unique_key())
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    pool.advisory_lock(advisory_tests::unique_key())
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    // the floor's connection: the same keys as one try-lock statement and one unlock statement,
    // no tasks, no proxy
    let mut conn = PgConnection::connect_with(&url.parse::<PgConnectOptions>().unwrap())
        .await
        .unwrap();
    let (mut l_rate, mut g_rate, mut f_rate) = (vec![], vec![], vec![]);
    let (mut l_trips, mut g_trips) = (vec![], vec![]);
    let (mut ratio, mut f_ratio) = (vec![], vec![]);
    // warm-up reps first (discarded), then measured ones; within a rep the three variants run
    // back to back, in an order rotated every rep, and a rep's ratio compares its own runs
    for rep in 0..o.warmup + o.reps {
        let mut rate = [0.0f64; 3];
        let mut trips = [0.0f64; 3];
        for i in 0..3 {
            let which = (rep + i) % 3;
            // one measurement = rounds of the same workload (all tasks at once, fresh keys)
            // repeated until `o.window` has passed, so that each variant is timed over a
            // comparable window (the guards' one round already takes ~100 ms, the locker's a few)
            let (mut rounds, mut busy) = (0usize, Duration::ZERO);
            let trips0 = proxy.trips();
            while rounds == 0 || busy < o.window {
                let ks = keys(o.tasks);
                let t0 = Instant::now();
                if which == 2 {
                    floor(&mut conn, &ks).await;
                } else {
                    let mut js = Vec::with_capacity(o.tasks);
                    for k in ks {
                        if which == 0 {
                            let l = locker.clone();
                            js.push(tokio::spawn(async move {
                                l.lock(k).await.unwrap().release().await.unwrap();
                            }));
                        } else {
                            let p = pool.clone();
                            js.push(tokio::spawn(async move {
                                p.advisory_lock(k).await.unwrap().release().await.unwrap();
                            }));
                        }
                    }
                    for j in js {
                        j.await.unwrap();
                    }
                }
                busy += t0.elapsed();
                rounds += 1;
            }
            rate[which] = (o.tasks * rounds) as f64 / busy.as_secs_f64();
            trips[which] = (proxy.trips() - trips0) as f64 / rounds as f64;
        }
        if rep < o.warmup {
            continue;
        }
        l_rate.push(rate[0]);
        g_rate.push(rate[1]);
        f_rate.push(rate[2]);
        l_trips.push(trips[0]);
        g_trips.push(trips[1]);
        ratio.push(rate[0] / rate[1]);
        f_ratio.push(rate[2] / rate[1]);
    }
    let (l, g, f) = (
        pct(&mut l_rate, 0.5),
        pct(&mut g_rate, 0.5),
        pct(&mut f_rate, 0.5),
    );
    let r = pct(&mut ratio, 0.5);
    println!();
    println!(
        "## {} tasks, each acquire + release of a distinct key, all at once ({} reps after {} warm-up; \
         in each rep every variant repeats its round for >= {} ms, variants interleaved in a rotating \
         order; rates: median; ratios: median of the per-rep ratios)",
        o.tasks,
        o.reps,
        o.warmup,
        o.window.as_millis()
    );
    println!("| | acquire+release / s | round trips per round | vs the guards |");
    println!("|---|---:|---:|---|");
    println!(
        "| Locker (1 session) | {l:.0} | {:.0} | **{r:.1}x** (per-rep ratios: min {:.1}x, p25 {:.1}x, p75 {:.1}x, max {:.1}x) |",
        pct(&mut l_trips, 0.5),
        pct(&mut ratio, 0.0),
        pct(&mut ratio, 0.25),
        pct(&mut ratio, 0.75),
        pct(&mut ratio, 1.0),
    );
    println!(
        "| PgPool guards (10 connections) | {g:.0} | {:.0} | 1.0x |",
        pct(&mut g_trips, 0.5)
    );
    println!(
        "| floor: one try-lock statement over the {} keys + one unlock statement (the locker's batch statement; no tasks, no proxy) | {f:.0} | 2 | {:.1}x |",
        o.tasks,
        pct(&mut f_ratio, 0.5)
    );
}

/// The floor: `keys` taken by one try-lock statement and released by one unlock statement.
async fn floor(conn: &mut PgConnection, ks: &[Key]) {
    for acquire in [true, false] {
        let ops: Vec<Op> = ks
            .iter()
            .map(|k| Op {
                acquire,
                key: *k,
                mode: LockMode::Exclusive,
            })
            .collect();
        let (c, k, _, _) = lsql::encode(&ops);
        // the locker's own statement for a batch of bigint keys (one function call per key)
        let refused: Vec<i64> = sqlx::query_scalar(lsql::BATCH_BIGINT)
            .bind(&c)
            .bind(&k)
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert!(refused.is_empty());
    }
}

async fn locker_profile(url: &str, o: &Opts) {
    let locker = Locker::with_options(opts(url, "locker-bench-profile"), LockerOptions::default());
    let mut rates = Vec::new();
    for _ in 0..300 {
        let ks = keys(o.tasks);
        let t0 = Instant::now();
        let js: Vec<_> = ks
            .into_iter()
            .map(|k| {
                let l = locker.clone();
                tokio::spawn(async move { l.lock(k).await.unwrap().release().await.unwrap() })
            })
            .collect();
        for j in js {
            j.await.unwrap();
        }
        rates.push(o.tasks as f64 / t0.elapsed().as_secs_f64());
    }
    println!(
        "locker only: median {:.0} acquire+release / s",
        pct(&mut rates, 0.5)
    );
    let mut empty = Vec::new();
    for _ in 0..300 {
        let t0 = Instant::now();
        let js: Vec<_> = (0..o.tasks).map(|_| tokio::spawn(async {})).collect();
        for j in js {
            j.await.unwrap();
        }
        empty.push(o.tasks as f64 / t0.elapsed().as_secs_f64());
    }
    println!("empty tasks: median {:.0} / s", pct(&mut empty, 0.5));
}

async fn lone(url: &str, o: &Opts) {
    let locker = Locker::with_options(opts(url, "locker-bench-lone"), LockerOptions::default());
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .connect(url)
        .await
        .unwrap();
    let k = advisory_tests::unique_key();
    let k2 = advisory_tests::unique_key();
    locker.lock(k).await.unwrap().release().await.unwrap();
    pool.advisory_lock(k2)
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    let (mut lv, mut gv, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    let warmup = o.lone / 10;
    for i in 0..warmup + o.lone {
        let mut t = [0.0f64; 2];
        for which in if i % 2 == 0 { [0, 1] } else { [1, 0] } {
            let t0 = Instant::now();
            if which == 0 {
                locker.lock(k).await.unwrap().release().await.unwrap();
            } else {
                pool.advisory_lock(k2)
                    .await
                    .unwrap()
                    .release()
                    .await
                    .unwrap();
            }
            t[which] = ms(t0.elapsed());
        }
        if i >= warmup {
            lv.push(t[0]);
            gv.push(t[1]);
            ratio.push(t[0] / t[1]);
        }
    }
    let (l, g) = (pct(&mut lv, 0.5), pct(&mut gv, 0.5));
    println!();
    println!(
        "## a lone caller: acquire + release (release waits for the unlock), {} pairs after {warmup} \
         warm-up, interleaved (ratio: median of the per-pair ratios)",
        o.lone
    );
    println!("| | median | p99 | |");
    println!("|---|---:|---:|---|");
    println!(
        "| Locker | {:.3} ms | {:.3} ms | **{:.2}x** the guard (ratio of the medians {:.2}x) |",
        l,
        pct(&mut lv, 0.99),
        pct(&mut ratio, 0.5),
        l / g
    );
    println!(
        "| PgPool guard | {:.3} ms | {:.3} ms | 1.00x |",
        g,
        pct(&mut gv, 0.99)
    );
}

async fn connections(obs: &mut PgConnection, app: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1")
        .bind(app)
        .fetch_one(&mut *obs)
        .await
        .unwrap()
}

async fn held(url: &str, o: &Opts) {
    let mut obs = observer(url).await;
    let app = advisory_tests::unique_name("locker-bench-held");
    let locker = Locker::with_options(opts(url, &app), LockerOptions::default());
    locker
        .lock(advisory_tests::unique_key())
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    let ks = keys(o.held);
    let before = ALLOCATED.load(Ordering::SeqCst);
    let t0 = Instant::now();
    let mut js = Vec::with_capacity(o.held);
    for k in ks {
        let l = locker.clone();
        js.push(tokio::spawn(async move { l.lock(k).await.unwrap() }));
    }
    let mut leases = Vec::with_capacity(o.held);
    for j in js {
        leases.push(j.await.unwrap());
    }
    let took = t0.elapsed();
    let after = ALLOCATED.load(Ordering::SeqCst);
    let held: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
         WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = $1",
    )
    .bind(&app)
    .fetch_one(&mut obs)
    .await
    .unwrap();
    assert_eq!(held as usize, o.held, "pg_locks shows every lease");
    let conns = connections(&mut obs, &app).await;
    println!();
    println!("## {} leases held at once by one process", o.held);
    println!("| | Locker | PgPool guards |");
    println!("|---|---:|---:|");
    println!(
        "| PostgreSQL connections (pg_stat_activity) | {conns} | {} (one per guard) |",
        o.held
    );
    println!(
        "| client memory per lease (allocator, incl. the locker's bookkeeping) | {:.0} bytes | a pooled connection each |",
        (after - before) as f64 / o.held as f64
    );
    println!("| time to take them all | {:.0} ms | |", ms(took));
    drop(leases);
}

async fn lost_after_terminate(url: &str, o: &Opts) {
    let mut obs = observer(url).await;
    let locker = Locker::with_options(opts(url, "locker-bench-lost"), LockerOptions::default());
    let mut v = Vec::new();
    for _ in 0..o.kills {
        let k = advisory_tests::unique_key();
        let lease = locker.lock(k).await.unwrap();
        let pid = pid_holding(&mut obs, k).await;
        let t0 = Instant::now();
        terminate(&mut obs, pid).await;
        tokio::time::timeout(Duration::from_secs(10), lease.lost())
            .await
            .expect("lost()");
        v.push(ms(t0.elapsed()));
    }
    println!();
    println!("## lost-lock notification ({} runs each)", o.kills);
    println!("| event | p50 | p99 | max |");
    println!("|---|---:|---:|---:|");
    let max = v.iter().cloned().fold(0.0, f64::max);
    println!(
        "| `pg_terminate_backend` of the holding session (from the call) | {:.1} ms | {:.1} ms | {:.1} ms |",
        pct(&mut v, 0.5),
        pct(&mut v, 0.99),
        max
    );
}

async fn failover(url: &str, o: &Opts) {
    let mut obs = observer(url).await;
    let mut v = Vec::new();
    for _ in 0..o.kills {
        let k = advisory_tests::unique_key();
        let leader =
            Locker::with_options(opts(url, "locker-bench-leader"), LockerOptions::default());
        let standby =
            Locker::with_options(opts(url, "locker-bench-standby"), LockerOptions::default());
        let lead = leader.campaign(k).await.unwrap();
        let s = standby.clone();
        let campaign = tokio::spawn(async move { s.campaign(k).await.unwrap() });
        // the standby's waiter is blocked server-side
        loop {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objsubid = 1 \
                 AND ((classid::int8 << 32) | objid::int8) = $1",
            )
            .bind(match k { Key::BigInt(k) => k, _ => unreachable!() })
            .fetch_one(&mut obs)
            .await
            .unwrap();
            if n == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        let pid = pid_holding(&mut obs, k).await;
        let t0 = Instant::now();
        terminate(&mut obs, pid).await;
        let new = tokio::time::timeout(Duration::from_secs(10), campaign)
            .await
            .expect("failover")
            .unwrap();
        v.push(ms(t0.elapsed()));
        drop((lead, new));
    }
    let max = v.iter().cloned().fold(0.0, f64::max);
    println!(
        "| leader failover: leader's backend terminated → standby leads | {:.1} ms | {:.1} ms | {:.1} ms |",
        pct(&mut v, 0.5),
        pct(&mut v, 0.99),
        max
    );
}

async fn network_cut(url: &str) {
    let upstream = format!("127.0.0.1:{}", advisory_tests::db().port().unwrap());
    let proxy = proxy::start(upstream).await;
    let via: PgConnectOptions = opts(url, "locker-bench-cut")
        .host("127.0.0.1")
        .port(proxy.port);
    let keepalive = Duration::from_millis(500);
    let timeout = Duration::from_millis(500);
    let locker = Locker::with_options(
        via,
        LockerOptions::default()
            .keepalive(Some(keepalive))
            .keepalive_timeout(timeout),
    );
    let k = advisory_tests::unique_key();
    let lease = locker.lock(k).await.unwrap();
    let t0 = Instant::now();
    proxy.cut();
    tokio::time::timeout(Duration::from_secs(30), lease.lost())
        .await
        .expect("lost() after a cut");
    let noticed = t0.elapsed();
    // the server still has the dead session (its socket to the proxy is open) until its
    // idle_session_timeout (3 x (keepalive + timeout)) ends it
    let mut obs = observer(url).await;
    let kv = match k {
        Key::BigInt(k) => k,
        _ => unreachable!(),
    };
    let held_at_lost: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 \
         AND ((classid::int8 << 32) | objid::int8) = $1",
    )
    .bind(kv)
    .fetch_one(&mut obs)
    .await
    .unwrap();
    let freed = loop {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 \
             AND ((classid::int8 << 32) | objid::int8) = $1",
        )
        .bind(kv)
        .fetch_one(&mut obs)
        .await
        .unwrap();
        if n == 0 {
            break t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the server never freed the lock"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!(
        "| silent network cut (proxy stops forwarding), keepalive {:?} + timeout {:?} | {:.0} ms | | bound {:.0} ms |",
        keepalive,
        timeout,
        ms(noticed),
        ms(keepalive + timeout)
    );
    println!(
        "|   ... the server still held the lock when lost() resolved: {}; it freed it {:.0} ms after the cut (idle_session_timeout {:.0} ms) | | | |",
        if held_at_lost == 1 { "yes" } else { "no" },
        ms(freed),
        ms((keepalive + timeout) * 3)
    );
    proxy.close_all();
    drop(lease);
}

async fn restart(url: &str) {
    let locker = Locker::with_options(opts(url, "locker-bench-restart"), LockerOptions::default());
    let k = advisory_tests::unique_key();
    let lease = locker.lock(k).await.unwrap();
    let lease = Arc::new(lease);
    let l = lease.clone();
    let t0 = Instant::now();
    let watch = tokio::spawn(async move {
        l.lost().await;
        Instant::now()
    });
    let restarted = tokio::task::spawn_blocking(|| advisory_tests::db().restart())
        .await
        .unwrap();
    restarted.expect("restart");
    let at = tokio::time::timeout(Duration::from_secs(30), watch)
        .await
        .expect("lost() after restart")
        .unwrap();
    println!(
        "| server restart (`pg_ctl restart`, fast shutdown) from the restart call | {:.0} ms | | |",
        ms(at - t0)
    );
    // the locker serves again
    let again = tokio::time::timeout(
        Duration::from_secs(30),
        locker.lock(advisory_tests::unique_key()),
    )
    .await
    .expect("the locker reconnects")
    .unwrap();
    drop(again);
}
