//! `pg-advisory list` and `status` against the real server: locks held by sqlx-advisory, by raw
//! SQL (with a waiter queued behind), and by the Python `postgresql-lock` library, decoded back to
//! keys; each checked against the raw `pg_locks` row.

mod support;

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use advisory_common::Key;
use serde_json::Value;
use sqlx::Connection as _;
use sqlx_advisory::LockExt as _;
use support::*;

fn list_json(args: &[&str]) -> Vec<Value> {
    let o = output(&[&["list", "--json"][..], args].concat());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    match serde_json::from_slice(&o.stdout) {
        Ok(Value::Array(v)) => v,
        other => panic!("not a JSON array: {other:?}\n{}", stdout(&o)),
    }
}

/// The entry's key as `pg_locks` numbers, as the JSON states them.
fn ids(v: &Value) -> (i64, i64, i32) {
    (
        v["classid"].as_i64().unwrap(),
        v["objid"].as_i64().unwrap(),
        v["objsubid"].as_i64().unwrap() as i32,
    )
}

async fn backend_pid(c: &mut sqlx::PgConnection) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(c)
        .await
        .unwrap()
}

#[tokio::test]
async fn decodes_a_lock_held_by_sqlx_advisory_and_matches_it_to_its_name() {
    let name = unique("sqlx-holder");
    let k = key_of(&name);
    let mut holder =
        sqlx::PgConnection::connect(&advisory_harness::db().url_with_app("cli-sqlx-holder"))
            .await
            .unwrap();
    let pid = backend_pid(&mut holder).await;
    let guard = holder.advisory_lock(Key::name(&name)).await.unwrap();

    let rows = list_json(&["--key", &name]);
    assert_eq!(rows.len(), 1, "{rows:#?}");
    let r = &rows[0];
    let raw = locks_on(&mut pg().await, bigint_ids(k)).await;
    assert_eq!(raw.len(), 1);
    assert_eq!(ids(r), (raw[0].classid, raw[0].objid, raw[0].objsubid));
    assert_eq!(r["pid"], pid);
    assert_eq!(raw[0].pid, pid);
    assert_eq!(r["key"], format!("bigint:{k}"));
    assert_eq!(r["bigint"], k);
    assert_eq!(r["mode"], "exclusive");
    assert_eq!(r["state"], "held");
    assert_eq!(r["granted"], true);
    assert_eq!(r["application_name"], "cli-sqlx-holder");
    assert_eq!(r["user"], "postgres");
    assert_eq!(r["client_addr"], "127.0.0.1");
    assert_eq!(r["name"], name.as_str());
    assert_eq!(r["presets"], serde_json::json!(["default"]));
    assert!(r["session_seconds"].as_f64().unwrap() >= 0.0);
    assert_eq!(r["blocked_by"], serde_json::json!([]));

    // unfiltered, it is there too (without a name); the bigint key given as a number finds it
    let all = list_json(&[]);
    let mine: Vec<_> = all.iter().filter(|v| v["pid"] == pid).collect();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0]["name"], Value::Null);
    assert_eq!(list_json(&["--key", &k.to_string()]).len(), 1);
    // a table too, one line per lock under the header
    let o = output(&["list", "--key", &name]);
    let text = stdout(&o);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("KEY") && lines[0].contains("BLOCKED BY"),
        "{text}"
    );
    assert_eq!(lines.len(), 2, "{text}");
    for cell in [
        format!("bigint:{k}"),
        pid.to_string(),
        "cli-sqlx-holder".into(),
        "held".into(),
    ] {
        assert!(lines[1].contains(&cell), "{cell} missing: {text}");
    }

    // status: 1 with the holder on stderr; 0 once released
    let o = output(&["status", &name]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains(&format!("pid {pid}")), "{}", stderr(&o));
    guard.release().await.unwrap();
    assert!(list_json(&["--key", &name]).is_empty());
    let o = output(&["status", &name]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        output(&["list", "--key", &name]).stdout,
        b"no advisory locks\n"
    );
}

#[tokio::test]
async fn decodes_a_raw_pair_lock_and_who_waits_behind_whom() {
    let (a, b) = unique_pair();
    let mut holder = pg().await;
    let holder_pid = backend_pid(&mut holder).await;
    sqlx::query("SELECT pg_advisory_lock($1, $2)")
        .bind(a)
        .bind(b)
        .execute(&mut holder)
        .await
        .unwrap();
    let mut waiter = pg().await;
    let waiter_pid = backend_pid(&mut waiter).await;
    let waiting = tokio::spawn(async move {
        sqlx::query("SELECT pg_advisory_lock_shared($1, $2)")
            .bind(a)
            .bind(b)
            .execute(&mut waiter)
            .await
            .unwrap();
        waiter
    });
    let key = format!("{a},{b}");
    let rows = until("the waiter in the list", async || {
        let rows = list_json(&["--key", &key]);
        (rows.len() == 2).then_some(rows)
    })
    .await;
    let raw = locks_on(&mut pg().await, pair_ids(a, b)).await;
    assert_eq!(raw.len(), 2);
    let (held, wait) = (&rows[0], &rows[1]);
    for r in [held, wait] {
        assert_eq!(r["key"], format!("pair:({a},{b})"));
        assert_eq!(r["pair"], serde_json::json!([a, b]));
        assert_eq!(ids(r), pair_ids(a, b));
    }
    assert_eq!(
        (held["pid"].as_i64(), held["granted"].as_bool()),
        (Some(holder_pid.into()), Some(true))
    );
    assert_eq!(held["mode"], "exclusive");
    assert_eq!(held["blocking"], serde_json::json!([waiter_pid]));
    assert_eq!(
        (wait["pid"].as_i64(), wait["state"].as_str()),
        (Some(waiter_pid.into()), Some("waiting"))
    );
    assert_eq!(wait["mode"], "shared");
    assert_eq!(wait["blocked_by"], serde_json::json!([holder_pid]));
    assert!(wait["waiting_seconds"].as_f64().unwrap() >= 0.0);
    assert!(
        wait["query"]
            .as_str()
            .unwrap()
            .contains("pg_advisory_lock_shared")
    );
    assert!(
        raw.iter()
            .any(|l| l.pid == waiter_pid && !l.granted && l.mode == "ShareLock")
    );
    // the explicit forms `list` prints parse back
    assert_eq!(list_json(&["--key", &format!("pair:({a},{b})")]).len(), 2);

    sqlx::query("SELECT pg_advisory_unlock($1, $2)")
        .bind(a)
        .bind(b)
        .execute(&mut holder)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .unwrap()
        .unwrap();
}

fn peers_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/peers")
}

/// The Python interpreter of tests/peers/.venv, installing it with tests/peers/setup.sh when it
/// is not there yet. Fails (never skips) when it cannot be had.
fn peer_python() -> PathBuf {
    let dir = peers_dir();
    let python = dir.join(".venv/bin/python");
    if !python.exists() {
        let setup = dir.join("setup.sh");
        assert!(
            setup.exists(),
            "{} is missing, and so is {}",
            python.display(),
            setup.display()
        );
        let o = Command::new("bash")
            .arg(&setup)
            .output()
            .expect("run tests/peers/setup.sh");
        assert!(
            o.status.success() && python.exists(),
            "tests/peers/setup.sh could not install the Python peer:\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    python
}

#[tokio::test]
async fn decodes_a_lock_held_by_the_python_postgresql_lock_library() {
    let name = unique("python-peer");
    let app = format!("cli-py-{}", std::process::id());
    let mut py = Command::new(peer_python())
        .arg(peers_dir().join("peer.py"))
        .args([
            "postgresql-lock",
            &advisory_harness::db().url_with_app(&app),
            &name,
            "hold",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the Python peer");
    let stdout = py.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut r = BufReader::new(stdout);
        let mut l = String::new();
        r.read_line(&mut l).map(|_| (l, r))
    });
    let line = tokio::time::timeout(Duration::from_secs(30), line)
        .await
        .expect("peer: no answer");
    // the reader is kept: the peer prints "released" at the end
    let (line, mut py_out) = line.unwrap().unwrap();
    assert_eq!(line.trim(), "held", "the Python peer did not take the lock");

    let o = output(&["key", "--preset", "postgresql-lock", "--json", &name]);
    let k = serde_json::from_slice::<Value>(&o.stdout).unwrap()[0]["bigint"]
        .as_i64()
        .unwrap();
    // the name, matched under every preset: only postgresql-lock's derivation is held
    let rows = list_json(&["--key", &name]);
    assert_eq!(rows.len(), 1, "{rows:#?}");
    let r = &rows[0];
    assert_eq!(r["presets"], serde_json::json!(["postgresql-lock"]));
    assert_eq!(r["key"], format!("bigint:{k}"));
    assert_eq!(r["application_name"], app.as_str());
    let raw = locks_on(&mut pg().await, bigint_ids(k)).await;
    assert_eq!(raw.len(), 1);
    assert_eq!(ids(r), (raw[0].classid, raw[0].objid, raw[0].objsubid));
    assert_eq!(r["pid"], raw[0].pid);
    assert_eq!(raw[0].application_name.as_deref(), Some(app.as_str()));
    assert_eq!(
        list_json(&["--key", &name, "--preset", "postgresql-lock"]).len(),
        1
    );
    assert!(list_json(&["--key", &name, "--preset", "default"]).is_empty());
    // and `run` with the preset is refused while Python holds it
    let o = output(&["run", "-n", "-p", "postgresql-lock", &name, "--", "true"]);
    assert_eq!(o.status.code(), Some(75), "{}", stderr(&o));

    writeln!(py.stdin.take().unwrap()).unwrap();
    let rest = tokio::task::spawn_blocking(move || {
        let mut l = String::new();
        py_out.read_line(&mut l).map(|_| l)
    });
    let rest = tokio::time::timeout(Duration::from_secs(30), rest)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(rest.trim(), "released");
    assert!(wait(&mut py, "the Python peer").await.success());
    assert!(list_json(&["--key", &name]).is_empty());
}

#[tokio::test]
async fn watch_prints_one_json_array_per_interval_until_interrupted() {
    let mut w = bin()
        .args(["list", "--json", "--watch", "--interval", "100ms"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = w.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        let mut r = BufReader::new(stdout);
        (0..3)
            .map(|_| {
                let mut l = String::new();
                r.read_line(&mut l).unwrap();
                l
            })
            .collect::<Vec<_>>()
    });
    let lines = tokio::time::timeout(Duration::from_secs(20), lines)
        .await
        .unwrap()
        .unwrap();
    for l in lines {
        assert!(
            matches!(serde_json::from_str::<Value>(&l), Ok(Value::Array(_))),
            "{l:?}"
        );
    }
    signal(w.id(), rustix::process::Signal::INT);
    assert_eq!(wait(&mut w, "list --watch").await.code(), Some(0));
}
