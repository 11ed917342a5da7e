//! Shared helpers for the `pg-advisory` binary tests: the throwaway server, spawning the binary,
//! reading `pg_locks` directly, and waiting on observable conditions with a deadline.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use sqlx::{Connection as _, PgConnection, Row as _};

/// The path of the built binary.
pub const BIN: &str = env!("CARGO_BIN_EXE_pg-advisory");

/// How long any waited-for condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub fn url() -> &'static str {
    advisory_harness::db().url()
}

/// The binary with a clean connection environment: `DATABASE_URL` = the test server, no `PG*`.
pub fn bin() -> Command {
    let mut c = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("PG") || k == "DATABASE_URL" || k == "RUST_BACKTRACE" {
            c.env_remove(k);
        }
    }
    c.env("DATABASE_URL", url());
    c
}

/// Run the binary to completion, within [`DEADLINE`] (killed and the test failed after it, so a
/// broken binary that hangs fails the test instead of hanging it).
pub fn output(args: &[&str]) -> Output {
    output_of(bin().args(args))
}

pub fn output_of(cmd: &mut Command) -> Output {
    let d = scratch();
    let (out, err) = (d.join("stdout"), d.join("stderr"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("spawn pg-advisory");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} still running after {DEADLINE:?}; stderr: {}",
                read(&err)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: std::fs::read(&out).unwrap(),
        stderr: std::fs::read(&err).unwrap(),
    }
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A direct sqlx connection to the test server.
pub async fn pg() -> PgConnection {
    PgConnection::connect(url()).await.expect("connect")
}

/// A key nobody else in this test process uses.
pub fn unique(tag: &str) -> String {
    static N: AtomicI32 = AtomicI32::new(0);
    format!(
        "cli-test:{tag}:{}:{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh int pair.
pub fn unique_pair() -> (i32, i32) {
    static N: AtomicI32 = AtomicI32::new(1);
    (
        std::process::id() as i32 & 0xffff,
        1_000_000 + N.fetch_add(1, Ordering::Relaxed),
    )
}

/// One advisory lock row straight from `pg_locks` (raw numbers, not decoded by the library).
#[derive(Clone, Debug, PartialEq)]
pub struct RawLock {
    pub classid: i64,
    pub objid: i64,
    pub objsubid: i32,
    pub pid: i32,
    pub granted: bool,
    pub mode: String,
    pub application_name: Option<String>,
}

pub async fn raw_locks(c: &mut PgConnection) -> Vec<RawLock> {
    sqlx::query(
        "SELECT l.classid::int8, l.objid::int8, l.objsubid::int4, l.pid, l.granted, l.mode, a.application_name \
         FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory'",
    )
    .fetch_all(c)
    .await
    .expect("pg_locks")
    .into_iter()
    .map(|r| RawLock {
        classid: r.get(0),
        objid: r.get(1),
        objsubid: r.get(2),
        pid: r.get(3),
        granted: r.get(4),
        mode: r.get(5),
        application_name: r.get(6),
    })
    .collect()
}

/// `(classid, objid, objsubid)` of a bigint key, computed here from the documented layout.
pub fn bigint_ids(k: i64) -> (i64, i64, i32) {
    (
        ((k as u64) >> 32) as i64,
        (k as u64 & 0xffff_ffff) as i64,
        1,
    )
}

pub fn pair_ids(a: i32, b: i32) -> (i64, i64, i32) {
    (a as u32 as i64, b as u32 as i64, 2)
}

/// The `pg_locks` rows of one key.
pub async fn locks_on(c: &mut PgConnection, ids: (i64, i64, i32)) -> Vec<RawLock> {
    raw_locks(c)
        .await
        .into_iter()
        .filter(|l| (l.classid, l.objid, l.objsubid) == ids)
        .collect()
}

/// The bigint key `pg-advisory key NAME --preset default --json` prints (the binary's own
/// derivation, checked against vectors in key.rs).
pub fn key_of(name: &str) -> i64 {
    let o = output(&["key", "--preset", "default", "--json", name]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v[0]["bigint"].as_i64().unwrap()
}

/// Poll `f` until it returns `Some`, failing the test after [`DEADLINE`].
pub async fn until<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Wait for a child process with a deadline (polling `try_wait`).
pub async fn wait(child: &mut Child, what: &str) -> ExitStatus {
    until(what, async || child.try_wait().expect("try_wait")).await
}

/// A scratch directory for the files the children write.
pub fn scratch() -> PathBuf {
    let d = std::env::temp_dir().join(unique("dir").replace(':', "_"));
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// Send a signal to a process (the binary, or a child whose pid it wrote down).
pub fn signal(pid: u32, sig: rustix::process::Signal) {
    rustix::process::kill_process(rustix::process::Pid::from_raw(pid as i32).unwrap(), sig)
        .expect("kill");
}

/// Nanoseconds since the epoch, as the children's `date +%s%N` writes them.
pub fn parse_ns(s: &str) -> u128 {
    s.trim()
        .parse()
        .unwrap_or_else(|_| panic!("not a timestamp: {s:?}"))
}
