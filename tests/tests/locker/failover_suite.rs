// Leader failover across OS processes, run on each adapter's locker (included by
// `tests/locker.rs` into `failover` and `diesel_failover`, which supply `make`, `leader`,
// `CHILD` and `LEADER_ENV`): the leader is this test binary run again on `CHILD`, killed with
// SIGKILL while it leads; the standby (this process) must lead within a second.

use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};

use super::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_process_is_replaced_by_the_standby_within_a_second() {
    let url = tokio::task::spawn_blocking(|| advisory_tests::db().url().to_owned())
        .await
        .unwrap();
    let key = advisory_tests::unique_key();
    let advisory_common::KeyValue::BigInt(k) = key.value() else {
        unreachable!()
    };
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", CHILD, "--ignored", "--nocapture"])
        .env(LEADER_ENV, format!("{url} {k}"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the child leads")
            .unwrap()
            .expect("the child's output");
        if line.contains("LEADING") {
            break;
        }
    }
    let standby = make(&app("locker-standby"));
    let s = standby.clone();
    let campaign = tokio::spawn(async move { s.campaign(key).await.unwrap() });
    until(&[key], Duration::from_secs(10), "the standby waits", |r| {
        r.iter().any(|l| !l.granted)
    })
    .await;
    assert!(!campaign.is_finished());
    let t0 = Instant::now();
    child.start_kill().unwrap(); // SIGKILL
    let leadership = tokio::time::timeout(Duration::from_secs(1), campaign)
        .await
        .expect("the standby leads within 1 s of the kill")
        .unwrap();
    eprintln!(
        "failover after SIGKILL of the leader process: {:?}",
        t0.elapsed()
    );
    let _ = child.wait().await;
    assert!(!leadership.is_lost());
    leadership.resign().await.unwrap();
}

/// The leader process (run by the test above; does nothing on its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by a_killed_leader_process_is_replaced_by_the_standby_within_a_second"]
async fn leader_child() {
    let Ok(spec) = std::env::var(LEADER_ENV) else {
        return;
    };
    let (url, k) = spec.split_once(' ').unwrap();
    let locker = leader(url);
    let leadership = locker.campaign(k.parse::<i64>().unwrap()).await.unwrap();
    println!("LEADING");
    leadership.lost().await;
}
