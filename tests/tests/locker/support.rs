//! Helpers for the locker tests.

use std::time::Duration;

use advisory_common::{Key, LockInfo};
use advisory_tests::wait_until;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool};
use sqlx::postgres::PgConnectOptions;
use sqlx_advisory::{Locker, LockerOptions};

/// A locker whose connections carry `application_name = app`, so `pg_stat_activity` can count them.
pub fn locker(app: &str) -> Locker {
    locker_with(app, LockerOptions::default())
}

pub fn locker_with(app: &str, options: LockerOptions) -> Locker {
    let opts: PgConnectOptions = advisory_tests::db().url().parse().unwrap();
    Locker::with_options(opts.application_name(app), options)
}

pub fn app(prefix: &str) -> String {
    advisory_tests::unique_name(prefix)
}

/// `wait_until` off the async worker threads.
pub async fn until(
    keys: &[Key],
    within: Duration,
    what: &'static str,
    cond: impl FnMut(&[LockInfo]) -> bool + Send + 'static,
) -> Vec<LockInfo> {
    let keys = keys.to_vec();
    tokio::task::spawn_blocking(move || wait_until(&keys, within, what, cond))
        .await
        .unwrap()
}

pub async fn locks(keys: &[Key]) -> Vec<LockInfo> {
    let keys = keys.to_vec();
    tokio::task::spawn_blocking(move || {
        advisory_tests::advisory_locks()
            .into_iter()
            .filter(|l| keys.contains(&l.key))
            .collect()
    })
    .await
    .unwrap()
}

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct B {
    #[diesel(sql_type = Bool)]
    b: bool,
}

fn observer() -> PgConnection {
    PgConnection::establish(&advisory_tests::db().url_with_app("locker-observer")).unwrap()
}

/// Backends with this application_name (pg_stat_activity).
pub async fn connections(app: &str) -> i64 {
    let app = app.to_owned();
    tokio::task::spawn_blocking(move || {
        diesel::sql_query("SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = $1")
            .bind::<diesel::sql_types::Text, _>(app)
            .get_result::<N>(&mut observer())
            .unwrap()
            .n
    })
    .await
    .unwrap()
}

/// `pg_terminate_backend(pid)` from an independent session.
pub async fn terminate(pid: i32) {
    tokio::task::spawn_blocking(move || {
        let r = diesel::sql_query("SELECT pg_terminate_backend($1) AS b")
            .bind::<diesel::sql_types::Int4, _>(pid)
            .get_result::<B>(&mut observer())
            .unwrap();
        assert!(r.b, "pg_terminate_backend({pid}) failed");
    })
    .await
    .unwrap()
}

/// The pid holding `key` (granted), waiting for it to appear.
pub async fn holder_pid(key: Key) -> i32 {
    let rows = until(&[key], Duration::from_secs(5), "a holder", |r| {
        r.iter().any(|l| l.granted)
    })
    .await;
    rows.iter().find(|l| l.granted).unwrap().pid
}

/// The diesel-async locker, with `application_name = app`.
pub fn dlocker(app: &str) -> diesel_advisory::Locker {
    dlocker_with(app, diesel_advisory::LockerOptions::default())
}

pub fn dlocker_with(app: &str, options: diesel_advisory::LockerOptions) -> diesel_advisory::Locker {
    let mut config: tokio_postgres::Config = advisory_tests::db().url().parse().unwrap();
    config.application_name(app);
    diesel_advisory::Locker::with_config(config, options)
}
