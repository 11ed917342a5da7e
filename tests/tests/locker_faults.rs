//! The locker under a silent network cut (a loopback proxy that stops forwarding; this machine
//! cannot partition a real network) and a server restart. A binary of its own: the restart would
//! break parallel tests; its tests are serialized.

#[path = "../benches/locker/proxy.rs"]
mod proxy;

use std::time::{Duration, Instant};

use advisory_common::Key;
use advisory_tests::{unique_key, wait_until};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const KEEPALIVE: Duration = Duration::from_millis(300);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_millis(300);

async fn port() -> u16 {
    tokio::task::spawn_blocking(|| advisory_tests::db().port().expect("a throwaway server"))
        .await
        .unwrap()
}

async fn held_by_anyone(key: Key, want: bool, within: Duration) {
    tokio::task::spawn_blocking(move || {
        wait_until(&[key], within, if want { "held" } else { "free" }, |r| {
            r.iter().any(|l| l.granted) == want
        });
    })
    .await
    .unwrap();
}

/// Both lockers through `port`, with a short keepalive; `server_idle_timeout` as given.
fn lockers(
    port: u16,
    server_idle_timeout: bool,
) -> (sqlx_advisory::Locker, diesel_advisory::Locker) {
    let url = advisory_tests::db().url().to_owned();
    let sopts: sqlx::postgres::PgConnectOptions = url
        .parse::<sqlx::postgres::PgConnectOptions>()
        .unwrap()
        .host("127.0.0.1")
        .port(port);
    let s = sqlx_advisory::Locker::with_options(
        sopts,
        sqlx_advisory::LockerOptions::default()
            .keepalive(Some(KEEPALIVE))
            .keepalive_timeout(KEEPALIVE_TIMEOUT)
            .server_idle_timeout(server_idle_timeout),
    );
    // the harness URL is postgres://postgres@127.0.0.1:<port>/postgres; point it at `port`
    let base: tokio_postgres::Config = url.parse().unwrap();
    let mut dcfg = tokio_postgres::Config::new();
    dcfg.host("127.0.0.1")
        .port(port)
        .user(base.get_user().unwrap())
        .dbname(base.get_dbname().unwrap());
    let d = diesel_advisory::Locker::with_config(
        dcfg,
        diesel_advisory::LockerOptions::default()
            .keepalive(Some(KEEPALIVE))
            .keepalive_timeout(KEEPALIVE_TIMEOUT)
            .server_idle_timeout(server_idle_timeout),
    );
    (s, d)
}

async fn cut(server_idle_timeout: bool) -> (Key, Key, std::sync::Arc<proxy::Proxy>, Instant) {
    let proxy = proxy::start(format!("127.0.0.1:{}", port().await)).await;
    let (s, d) = lockers(proxy.port, server_idle_timeout);
    let (ks, kd) = (unique_key(), unique_key());
    let ls = s.lock(ks).await.unwrap();
    let ld = d.lock(kd).await.unwrap();
    let t0 = Instant::now();
    proxy.cut();
    let bound = KEEPALIVE + KEEPALIVE_TIMEOUT + Duration::from_millis(500);
    tokio::time::timeout(bound, ls.lost())
        .await
        .expect("sqlx lease lost() within the keepalive bound");
    tokio::time::timeout(bound, ld.lost())
        .await
        .expect("diesel lease lost() within the keepalive bound");
    eprintln!(
        "network cut noticed after {:?} (bound {bound:?})",
        t0.elapsed()
    );
    // what lost() cannot promise: the server still has the dead sessions and their locks (and
    // must: nobody else may get them before the holder was told)
    held_by_anyone(ks, true, Duration::from_secs(1)).await;
    held_by_anyone(kd, true, Duration::from_secs(1)).await;
    (ks, kd, proxy, t0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_network_cut_is_noticed_and_the_server_frees_the_locks_within_its_idle_timeout() {
    let _serial = SERIAL.lock().await;
    let (ks, kd, _proxy, t0) = cut(true).await;
    // the server ends the unreachable sessions by itself (idle_session_timeout = 3 x (keepalive +
    // keepalive_timeout) = 1.8 s), the proxy still holding their sockets open
    let server_bound = (KEEPALIVE + KEEPALIVE_TIMEOUT) * 3 + Duration::from_secs(2);
    held_by_anyone(ks, false, server_bound).await;
    held_by_anyone(kd, false, server_bound).await;
    eprintln!(
        "the server freed the locks {:?} after the cut",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_server_idle_timeout_a_cut_session_keeps_its_locks_until_its_socket_closes() {
    let _serial = SERIAL.lock().await;
    let (ks, kd, proxy, _t0) = cut(false).await;
    tokio::time::sleep((KEEPALIVE + KEEPALIVE_TIMEOUT) * 3 + Duration::from_secs(1)).await;
    held_by_anyone(ks, true, Duration::from_secs(1)).await;
    held_by_anyone(kd, true, Duration::from_secs(1)).await;
    // once the server sees the sockets close, they are released
    proxy.close_all();
    held_by_anyone(ks, false, Duration::from_secs(10)).await;
    held_by_anyone(kd, false, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_is_noticed_within_a_second_and_the_lockers_reconnect() {
    let _serial = SERIAL.lock().await;
    let (s, d) = lockers(port().await, true);
    let (ks, kd) = (unique_key(), unique_key());
    let ls = s.lock(ks).await.unwrap();
    let ld = d.lock(kd).await.unwrap();
    let t0 = Instant::now();
    let restart = tokio::task::spawn_blocking(|| advisory_tests::db().restart());
    tokio::time::timeout(Duration::from_secs(1), ls.lost())
        .await
        .expect("sqlx lost() within 1 s of the restart");
    tokio::time::timeout(Duration::from_secs(1), ld.lost())
        .await
        .expect("diesel lost() within 1 s of the restart");
    eprintln!("restart noticed after {:?}", t0.elapsed());
    restart.await.unwrap().expect("restart");
    let again = tokio::time::timeout(Duration::from_secs(30), s.lock(ks))
        .await
        .unwrap()
        .unwrap();
    let dagain = tokio::time::timeout(Duration::from_secs(30), d.lock(kd))
        .await
        .unwrap()
        .unwrap();
    held_by_anyone(ks, true, Duration::from_secs(5)).await;
    again.release().await.unwrap();
    dagain.release().await.unwrap();
    held_by_anyone(kd, false, Duration::from_secs(5)).await;
}
