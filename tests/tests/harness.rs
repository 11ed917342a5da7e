//! The throwaway-Postgres harness itself: it starts, restarts, fronts itself with PgBouncer, and
//! leaves nothing behind when a test process dies abruptly.

use std::process::Command;
use std::time::{Duration, Instant};

use advisory_tests::db;
use diesel::prelude::*;
use diesel::sql_types::Int4;

#[derive(QueryableByName)]
struct One {
    #[diesel(sql_type = Int4)]
    one: i32,
}

fn select_one(url: &str) -> Result<i32, String> {
    let mut c = PgConnection::establish(url).map_err(|e| e.to_string())?;
    diesel::sql_query("SELECT 1 AS one")
        .get_result::<One>(&mut c)
        .map(|r| r.one)
        .map_err(|e| e.to_string())
}

fn postgres_running_in(dir: &str) -> bool {
    let out = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.contains(dir) && !l.contains("ps -eo"))
}

/// Child mode: start a cluster, print its data dir, then die without any cleanup code running.
#[test]
fn child_abort_helper() {
    if std::env::var("ADVISORY_HARNESS_CHILD").is_err() {
        return; // only meaningful when spawned by `abrupt_exit_leaves_no_server`
    }
    let d = db();
    println!("DATA_DIR={}", d.data_dir().unwrap().display());
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    std::process::abort();
}

#[test]
fn abrupt_exit_leaves_no_server() {
    if !db().is_throwaway() {
        eprintln!(
            "DATABASE_URL is set: this test is about the throwaway cluster, which is not in use"
        );
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_abort_helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("ADVISORY_HARNESS_CHILD", "1")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the child was supposed to abort");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = stdout
        .lines()
        .find_map(|l| l.split_once("DATA_DIR=").map(|(_, d)| d.trim()))
        .unwrap_or_else(|| {
            panic!(
                "child did not start a cluster: {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    while (postgres_running_in(&dir) || std::path::Path::new(&dir).exists())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !postgres_running_in(&dir),
        "a postgres from the aborted process is still running ({dir})"
    );
    assert!(
        !std::path::Path::new(&dir).exists(),
        "{dir} was not removed"
    );
}

#[test]
fn restart_and_pgbouncer() {
    let d = db();
    assert_eq!(select_one(d.url()), Ok(1));
    if !d.is_throwaway() {
        assert!(
            d.restart().is_err(),
            "must refuse to restart a server it did not start"
        );
        return;
    }
    // a session that exists before the restart is gone after it
    let mut before = PgConnection::establish(d.url()).unwrap();
    d.restart().unwrap();
    assert!(
        diesel::sql_query("SELECT 1 AS one")
            .get_result::<One>(&mut before)
            .is_err()
    );
    assert_eq!(select_one(d.url()), Ok(1));

    for mode in ["session", "transaction"] {
        let b = d.pgbouncer(mode, 2).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(select_one(b.url()), Ok(1), "through pgbouncer ({mode})");
    }
}
