//! `pg-advisory run` against the real server: exclusion, conflict codes, timeouts, signals (the
//! lost-session cases are in lost.rs).
//! Every wait is on an observable condition (pg_locks, a file a child wrote) with a deadline.

mod support;

use std::time::{Duration, Instant};

use advisory_common::Key;
use rustix::process::Signal;
use sqlx_advisory::LockExt as _;
use support::*;

/// A shell loop that waits (bounded) for `file` to exist.
fn wait_for_file(file: &std::path::Path) -> String {
    format!(
        "i=0; while [ ! -e {f} ] && [ $i -lt 3000 ]; do sleep 0.01; i=$((i+1)); done",
        f = file.display()
    )
}

#[tokio::test]
async fn two_concurrent_runs_execute_their_children_strictly_one_after_the_other() {
    let key = unique("serial");
    let ids = bigint_ids(key_of(&key));
    let d = scratch();
    let go = d.join("go");
    let child = |who: &str| {
        format!(
            "date +%s%N > {d}/{who}.start; {wait}; date +%s%N > {d}/{who}.end",
            d = d.display(),
            wait = wait_for_file(&go)
        )
    };
    let mut a = bin()
        .args(["run", &key, "--", "sh", "-c", &child("a")])
        .spawn()
        .unwrap();
    until("a's child to start", async || {
        d.join("a.start").exists().then_some(())
    })
    .await;
    let mut b = bin()
        .args(["run", &key, "--", "sh", "-c", &child("b")])
        .spawn()
        .unwrap();
    let mut pg = pg().await;
    // b's session is queued behind a's: the server says so
    until("b to wait for the lock", async || {
        let rows = locks_on(&mut pg, ids).await;
        (rows.iter().any(|l| l.granted) && rows.iter().any(|l| !l.granted)).then_some(())
    })
    .await;
    assert!(
        !d.join("b.start").exists(),
        "b's child started while a held the lock"
    );
    std::fs::write(&go, "").unwrap();
    assert!(wait(&mut a, "a").await.success());
    assert!(wait(&mut b, "b").await.success());
    let a_end = parse_ns(&read(&d.join("a.end")));
    let b_start = parse_ns(&read(&d.join("b.start")));
    assert!(
        a_end <= b_start,
        "children overlapped: a ended at {a_end}, b started at {b_start}"
    );
    assert!(locks_on(&mut pg, ids).await.is_empty(), "lock left behind");
}

#[tokio::test]
async fn no_wait_exits_with_the_conflict_code_while_another_session_holds_the_lock() {
    let key = unique("nowait");
    let d = scratch();
    let ran = d.join("ran");
    let touch = ["--", "touch", ran.to_str().unwrap()];
    let mut holder = pg().await;
    let holder_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut holder)
        .await
        .unwrap();
    let guard = holder.advisory_lock(Key::name(&key)).await.unwrap();

    let o = output(&[&["run", "--no-wait", &key][..], &touch].concat());
    assert_eq!(o.status.code(), Some(75), "{}", stderr(&o));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("held by another session"), "{err}");
    assert!(
        err.contains(&format!("pid {holder_pid}")),
        "holder not named: {err}"
    );
    let o = output(&[&["run", "-n", "-E", "9", &key][..], &touch].concat());
    assert_eq!(o.status.code(), Some(9), "-E: {}", stderr(&o));
    // the transaction-scope forms are refused the same way
    let o = output(&[&["run", "--xact", "-n", &key][..], &touch].concat());
    assert_eq!(o.status.code(), Some(75), "--xact -n: {}", stderr(&o));
    let o = output(&[&["run", "--xact", "--timeout", "200ms", &key][..], &touch].concat());
    assert_eq!(
        o.status.code(),
        Some(75),
        "--xact --timeout: {}",
        stderr(&o)
    );
    assert!(!ran.exists(), "the command ran without the lock");

    guard.release().await.unwrap();
    let o = output(&[&["run", "-n", &key][..], &touch].concat());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(ran.exists());
}

#[tokio::test]
async fn timeout_is_honoured_and_a_release_within_it_lets_the_command_run() {
    let key = unique("timeout");
    let ids = bigint_ids(key_of(&key));
    let d = scratch();
    let ran = d.join("ran");
    let mut holder = pg().await;
    let guard = holder.advisory_lock(Key::name(&key)).await.unwrap();

    let start = Instant::now();
    let o = output(&[
        "run",
        "--timeout",
        "700ms",
        &key,
        "--",
        "touch",
        ran.to_str().unwrap(),
    ]);
    let took = start.elapsed();
    assert_eq!(o.status.code(), Some(75), "{}", stderr(&o));
    assert!(stderr(&o).contains("not acquired within"), "{}", stderr(&o));
    assert!(took >= Duration::from_millis(700), "gave up after {took:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(!ran.exists());

    let mut waiting = bin()
        .args([
            "run",
            "-w",
            "20s",
            &key,
            "--",
            "touch",
            ran.to_str().unwrap(),
        ])
        .spawn()
        .unwrap();
    let mut pg = pg().await;
    until("the timed run to wait", async || {
        locks_on(&mut pg, ids)
            .await
            .iter()
            .any(|l| !l.granted)
            .then_some(())
    })
    .await;
    guard.release().await.unwrap();
    assert_eq!(wait(&mut waiting, "timed run").await.code(), Some(0));
    assert!(ran.exists());
}

#[tokio::test]
async fn sigterm_reaches_the_child_the_lock_is_held_until_it_exits_and_free_after() {
    forwarded(Signal::TERM, "TERM").await;
}

#[tokio::test]
async fn sighup_and_sigint_are_forwarded_too() {
    forwarded(Signal::HUP, "HUP").await;
    forwarded(Signal::INT, "INT").await;
}

async fn forwarded(sig: Signal, name: &str) {
    let key = unique("signal");
    let ids = bigint_ids(key_of(&key));
    let d = scratch();
    // The trap asks pg-advisory itself whether the key is still held (status: 1 = held).
    let script = format!(
        "sleep 60 & sp=$!; trap '{bin} status {key} 2>/dev/null; echo $? > {d}/held_in_trap; kill $sp; exit 3' {name}; \
         echo up > {d}/started; wait $sp",
        bin = BIN,
        d = d.display()
    );
    let mut run = bin()
        .args(["run", &key, "--", "sh", "-c", &script])
        .spawn()
        .unwrap();
    let mut pg = pg().await;
    until("the child to start", async || {
        d.join("started").exists().then_some(())
    })
    .await;
    assert!(locks_on(&mut pg, ids).await.iter().any(|l| l.granted));
    signal(run.id(), sig);
    let status = wait(&mut run, "pg-advisory after the signal").await;
    assert_eq!(status.code(), Some(3), "the child's own status");
    assert_eq!(
        read(&d.join("held_in_trap")).trim(),
        "1",
        "released while the child ran"
    );
    assert!(
        locks_on(&mut pg, ids).await.is_empty(),
        "lock left after exit"
    );
}

#[tokio::test]
async fn a_child_killed_with_sigkill_leaves_the_lock_free() {
    let key = unique("sigkill");
    let ids = bigint_ids(key_of(&key));
    let d = scratch();
    let script = format!("echo $$ > {d}/pid; exec sleep 60", d = d.display());
    let mut run = bin()
        .args(["run", &key, "--", "sh", "-c", &script])
        .spawn()
        .unwrap();
    let pid: u32 = until("the child's pid", async || {
        read(&d.join("pid")).trim().parse().ok()
    })
    .await;
    let mut pg = pg().await;
    until("the lock", async || {
        locks_on(&mut pg, ids)
            .await
            .iter()
            .any(|l| l.granted)
            .then_some(())
    })
    .await;
    signal(pid, Signal::KILL);
    assert_eq!(wait(&mut run, "pg-advisory").await.code(), Some(128 + 9));
    assert!(
        locks_on(&mut pg, ids).await.is_empty(),
        "lock left after the child died"
    );
}

#[tokio::test]
async fn xact_shared_and_the_childs_environment() {
    let key = unique("xact");
    let k = key_of(&key);
    let ids = bigint_ids(k);
    let d = scratch();
    let script = format!(
        "{bin} status {key} 2>/dev/null; echo $? > {d}/held; echo $PG_ADVISORY_KEY $PG_ADVISORY_MODE $PG_ADVISORY_SCOPE $PG_ADVISORY_KEY_NAME > {d}/env; \
         echo $PG_ADVISORY_BACKEND_PID > {d}/backend; {wait}",
        bin = BIN,
        d = d.display(),
        wait = wait_for_file(&d.join("go"))
    );
    let mut run = bin()
        .args(["run", "--xact", "--shared", &key, "--", "sh", "-c", &script])
        .spawn()
        .unwrap();
    let backend: i32 = until("the child", async || {
        read(&d.join("backend")).trim().parse().ok()
    })
    .await;
    assert_eq!(read(&d.join("held")).trim(), "1");
    assert_eq!(
        read(&d.join("env")).trim(),
        format!("bigint:{k} shared transaction {key}")
    );
    let mut pg = pg().await;
    let rows = locks_on(&mut pg, ids).await;
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].pid, rows[0].mode.as_str()), (backend, "ShareLock"));
    let state: String = sqlx::query_scalar("SELECT state FROM pg_stat_activity WHERE pid = $1")
        .bind(backend)
        .fetch_one(&mut pg)
        .await
        .unwrap();
    assert_eq!(
        state, "idle in transaction",
        "a transaction-scope lock in an open transaction"
    );
    // shared: another shared run gets in at once, an exclusive one does not
    assert_eq!(
        output(&["run", "-n", "-s", &key, "--", "true"])
            .status
            .code(),
        Some(0)
    );
    assert_eq!(
        output(&["run", "-n", &key, "--", "true"]).status.code(),
        Some(75)
    );
    std::fs::write(d.join("go"), "").unwrap();
    assert_eq!(wait(&mut run, "pg-advisory").await.code(), Some(0));
    assert!(locks_on(&mut pg, ids).await.is_empty());
}

#[tokio::test]
async fn a_signal_while_waiting_ends_the_wait_without_running_the_command() {
    let key = unique("sigwait");
    let ids = bigint_ids(key_of(&key));
    let d = scratch();
    let ran = d.join("ran");
    let mut holder = pg().await;
    let holder_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut holder)
        .await
        .unwrap();
    let guard = holder.advisory_lock(Key::name(&key)).await.unwrap();
    let mut run = bin()
        .args(["run", &key, "--", "touch", ran.to_str().unwrap()])
        .spawn()
        .unwrap();
    let mut pg = pg().await;
    until("the run to wait", async || {
        locks_on(&mut pg, ids)
            .await
            .iter()
            .any(|l| !l.granted)
            .then_some(())
    })
    .await;
    signal(run.id(), Signal::INT);
    assert_eq!(wait(&mut run, "pg-advisory").await.code(), Some(128 + 2));
    assert!(!ran.exists());
    // its wait was cancelled: no ghost waiter stays queued behind the holder
    until("the waiter to leave the queue", async || {
        let rows = locks_on(&mut pg, ids).await;
        (rows.iter().map(|l| l.pid).collect::<Vec<_>>() == vec![holder_pid]).then_some(())
    })
    .await;
    guard.release().await.unwrap();
}

#[tokio::test]
async fn a_command_that_cannot_be_started_releases_the_lock() {
    let key = unique("noexec");
    let ids = bigint_ids(key_of(&key));
    let o = output(&["run", &key, "--", "/nonexistent/command"]);
    assert_eq!(o.status.code(), Some(127), "{}", stderr(&o));
    assert!(stderr(&o).contains("command not found"));
    let not_executable = scratch().join("data");
    std::fs::write(&not_executable, "not a program").unwrap();
    let o = output(&["run", &key, "--", not_executable.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(126), "{}", stderr(&o));
    assert!(locks_on(&mut pg().await, ids).await.is_empty());
}

#[tokio::test]
async fn negative_keys_are_keys_not_options() {
    let (a, b) = unique_pair();
    let k = -(i64::from(a) << 32 | i64::from(b));
    let mut holder = pg().await;
    let guard = holder.advisory_lock(Key::BigInt(k)).await.unwrap();
    let o = output(&["status", &k.to_string()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let o = output(&["run", "-n", &k.to_string(), "--", "true"]);
    assert_eq!(o.status.code(), Some(75), "{}", stderr(&o));
    guard.release().await.unwrap();
    let pair = format!("{},{}", -a, b);
    let (ids_a, ids_b) = (-a, b);
    let mut holder = pg().await;
    let guard = holder.advisory_lock(Key::Pair(ids_a, ids_b)).await.unwrap();
    let o = output(&["status", &format!("pair:({pair})")]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let o = output(&["list", "--key", &pair]);
    assert!(
        stdout(&o).contains(&format!("pair:({pair})")),
        "{}{}",
        stdout(&o),
        stderr(&o)
    );
    guard.release().await.unwrap();
}
