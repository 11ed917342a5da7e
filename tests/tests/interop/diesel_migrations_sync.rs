//! `MigrationLock::run_pending` (diesel, sync): concurrent runners, one database schema.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use advisory_tests::{assert_no_locks, unique_key, wait_until};
use diesel::prelude::*;
use diesel_advisory::prelude::*;
use diesel_advisory::{Error, MigrationError, MigrationLock};
use diesel_migrations::FileBasedMigrations;

use crate::schema::Fresh;

pub const RUNNERS: usize = 6;
pub const VERSIONS: [&str; 3] = ["20260101000001", "20260101000002", "20260101000003"];

pub fn migrations_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/fixtures/diesel_migrations")
}

pub fn source() -> FileBasedMigrations {
    FileBasedMigrations::from_path(migrations_dir()).expect("fixture migrations")
}

/// What the schema must look like after the runs: each migration applied exactly once.
pub fn assert_applied_once(schema: &Fresh, results: Vec<Vec<String>>) {
    let mut all: Vec<String> = results.iter().flatten().cloned().collect();
    all.sort();
    assert_eq!(all, VERSIONS, "versions applied, over all runners");
    assert_eq!(
        results.iter().filter(|v| !v.is_empty()).count(),
        1,
        "one runner migrates, the others find nothing to do: {results:?}"
    );
    assert_eq!(schema.count("__diesel_schema_migrations"), 3);
    assert_eq!(schema.count("widgets"), 1, "the seed migration ran once");
    assert!(schema.has_table("gadgets"));
}

/// Six runners, each on its own connection, are released at once (the test holds the lock until
/// `pg_locks` shows all six waiting): every migration is applied exactly once, no runner fails,
/// and the lock is free afterwards.
#[test]
fn concurrent_sync_runners_apply_each_migration_exactly_once() {
    let schema = Fresh::new("dmig");
    let key = unique_key();
    let mut holder = PgConnection::establish(&schema.url("interop-holder")).unwrap();
    let guard = holder.advisory_lock(key).unwrap();
    let start = Arc::new(Barrier::new(RUNNERS));
    let runners: Vec<_> = (0..RUNNERS)
        .map(|i| {
            let url = schema.url(&format!("dmig-runner-{i}"));
            let start = start.clone();
            std::thread::spawn(move || {
                let mut conn = PgConnection::establish(&url).unwrap();
                start.wait();
                MigrationLock::new()
                    .key(key)
                    .timeout(Duration::from_secs(60))
                    .run_pending(&mut conn, source())
                    .map(|v| v.iter().map(|v| v.to_string()).collect::<Vec<_>>())
            })
        })
        .collect();
    wait_until(
        &[key],
        Duration::from_secs(20),
        "all runners waiting",
        |rows| rows.iter().filter(|l| !l.granted).count() == RUNNERS,
    );
    assert!(!schema.has_table("__diesel_schema_migrations"));
    guard.release().unwrap();
    let results = runners
        .into_iter()
        .map(|r| r.join().unwrap().expect("no runner fails"))
        .collect();
    assert_applied_once(&schema, results);
    assert_no_locks(&[key], Duration::from_secs(5));
}

/// A runner that cannot get the lock within its timeout fails with `Error::Timeout` and migrates
/// nothing; a runner outside the lock's holder afterwards does the work.
#[test]
fn a_runner_that_times_out_migrates_nothing() {
    let schema = Fresh::new("dmigto");
    let key = unique_key();
    let mut holder = PgConnection::establish(&schema.url("interop-holder")).unwrap();
    let guard = holder.advisory_lock(key).unwrap();
    let mut conn = PgConnection::establish(&schema.url("dmig-late")).unwrap();
    let lock = MigrationLock::new()
        .key(key)
        .timeout(Duration::from_millis(200));
    match lock.run_pending(&mut conn, source()) {
        Err(MigrationError::Lock(Error::Timeout { key: k, .. })) => assert_eq!(k, key),
        other => panic!("expected a lock timeout, got {other:?}"),
    }
    assert!(!schema.has_table("__diesel_schema_migrations"));
    guard.release().unwrap();
    let applied = lock.run_pending(&mut conn, source()).unwrap();
    assert_eq!(applied.len(), 3);
    assert!(lock.run_pending(&mut conn, source()).unwrap().is_empty());
    assert_no_locks(&[key], Duration::from_secs(5));
}
