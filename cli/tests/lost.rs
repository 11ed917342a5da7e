//! `pg-advisory run` when the lock is lost while the command runs (the tool's session terminated
//! with `pg_terminate_backend`): the child is signalled (TERM, then KILL after the grace period)
//! and the documented code returned, or, with `--on-lost=ignore`, left alone.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use support::*;

/// A shell loop that waits (bounded) for `file` to exist.
fn wait_for_file(file: &std::path::Path) -> String {
    format!(
        "i=0; while [ ! -e {f} ] && [ $i -lt 3000 ]; do sleep 0.01; i=$((i+1)); done",
        f = file.display()
    )
}

/// Start `run` with `extra` options and `script`; wait until the child wrote the backend pid.
async fn run_and_backend(
    key: &str,
    extra: &[&str],
    script: &str,
    d: &std::path::Path,
) -> (std::process::Child, i32) {
    let stderr = std::fs::File::create(d.join("stderr")).unwrap();
    let run = bin()
        .arg("run")
        .args(extra)
        .args([key, "--", "sh", "-c", script])
        .stderr(Stdio::from(stderr))
        .spawn()
        .unwrap();
    let backend = until("the backend pid", async || {
        read(&d.join("backend")).trim().parse().ok()
    })
    .await;
    (run, backend)
}

async fn terminate(backend: i32) {
    let mut pg = pg().await;
    let done: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(backend)
        .fetch_one(&mut pg)
        .await
        .unwrap();
    assert!(done);
}

#[tokio::test]
async fn terminating_the_tools_session_signals_the_child_and_exits_74() {
    let key = unique("lost");
    let ids = bigint_ids(key_of(&key));
    let d = scratch();
    let script = format!(
        "sleep 60 & sp=$!; trap 'date +%s%N > {d}/term; kill $sp; exit 0' TERM; \
         echo $PG_ADVISORY_BACKEND_PID > {d}/backend; wait $sp",
        d = d.display()
    );
    let (mut run, backend) = run_and_backend(&key, &[], &script, &d).await;
    let mut pg = pg().await;
    let holders = locks_on(&mut pg, ids).await;
    assert_eq!(
        holders.iter().map(|l| l.pid).collect::<Vec<_>>(),
        vec![backend]
    );
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    terminate(backend).await;
    let status = wait(&mut run, "pg-advisory after the session was terminated").await;
    assert_eq!(status.code(), Some(74), "{}", read(&d.join("stderr")));
    let latency = Duration::from_nanos((parse_ns(&read(&d.join("term"))) - t0) as u64);
    eprintln!(
        "lost-lock detection: child got TERM {latency:?} after pg_terminate_backend (check interval 500ms)"
    );
    assert!(latency < Duration::from_secs(3), "{latency:?}");
    let err = read(&d.join("stderr"));
    assert!(err.contains("lost") && err.contains("TERM"), "{err}");
}

#[tokio::test]
async fn a_child_ignoring_term_after_a_lost_lock_is_killed_after_the_grace_period() {
    let key = unique("grace");
    let d = scratch();
    let script = format!(
        "echo $PG_ADVISORY_BACKEND_PID > {d}/backend; trap '' TERM; exec sleep 60",
        d = d.display()
    );
    let (mut run, backend) = run_and_backend(
        &key,
        &["--grace", "300ms", "--check-interval", "100ms"],
        &script,
        &d,
    )
    .await;
    terminate(backend).await;
    let start = Instant::now();
    let status = wait(&mut run, "pg-advisory to KILL the child").await;
    assert_eq!(status.code(), Some(74), "{}", read(&d.join("stderr")));
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(read(&d.join("stderr")).contains("KILL"));
}

#[tokio::test]
async fn on_lost_ignore_warns_and_lets_the_child_finish() {
    let key = unique("ignore");
    let d = scratch();
    let script = format!(
        "trap 'echo term > {d}/term' TERM; echo $PG_ADVISORY_BACKEND_PID > {d}/backend; {wait}; exit 5",
        d = d.display(),
        wait = wait_for_file(&d.join("go"))
    );
    let (mut run, backend) = run_and_backend(
        &key,
        &["--on-lost", "ignore", "--check-interval", "50ms"],
        &script,
        &d,
    )
    .await;
    terminate(backend).await;
    until("the warning", async || {
        read(&d.join("stderr")).contains("warning").then_some(())
    })
    .await;
    std::fs::write(d.join("go"), "").unwrap();
    assert_eq!(wait(&mut run, "pg-advisory").await.code(), Some(5));
    assert!(!d.join("term").exists(), "the child was signalled");
}
