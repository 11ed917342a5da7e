//! `MigrationLock::run_pending_async` (diesel-async): concurrent runners, one database schema.

use std::time::Duration;

use advisory_tests::{assert_no_locks, unique_key, wait_until};
use diesel::prelude::*;
use diesel_advisory::prelude::*;
use diesel_advisory::{MigrationError, MigrationLock};
use diesel_async::{AsyncConnection, AsyncPgConnection};

use crate::diesel_migrations_sync::{RUNNERS, assert_applied_once, source};
use crate::schema::Fresh;

/// Six tasks, each on its own `AsyncPgConnection`, released at once: every migration applied
/// exactly once, no error, every connection handed back usable, the lock free afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_async_runners_apply_each_migration_exactly_once() {
    let schema = Fresh::new("amig");
    let key = unique_key();
    let mut holder = PgConnection::establish(&schema.url("interop-holder")).unwrap();
    let guard = holder.advisory_lock(key).unwrap();
    let mut runners = Vec::new();
    for i in 0..RUNNERS {
        let conn = AsyncPgConnection::establish(&schema.url(&format!("amig-runner-{i}")))
            .await
            .unwrap();
        runners.push(tokio::spawn(async move {
            let (mut conn, applied) = MigrationLock::new()
                .key(key)
                .timeout(Duration::from_secs(60))
                .run_pending_async(conn, source())
                .await?;
            diesel_async::SimpleAsyncConnection::batch_execute(&mut conn, "SELECT 1")
                .await
                .expect("the connection comes back usable");
            Ok::<_, MigrationError>(applied.iter().map(|v| v.to_string()).collect::<Vec<_>>())
        }));
    }
    tokio::task::spawn_blocking(move || {
        wait_until(
            &[key],
            Duration::from_secs(20),
            "all runners waiting",
            |rows| rows.iter().filter(|l| !l.granted).count() == RUNNERS,
        )
    })
    .await
    .unwrap();
    assert!(!schema.has_table("__diesel_schema_migrations"));
    guard.release().unwrap();
    let mut results = Vec::new();
    for r in runners {
        results.push(r.await.unwrap().expect("no runner fails"));
    }
    assert_applied_once(&schema, results);
    tokio::task::spawn_blocking(move || assert_no_locks(&[key], Duration::from_secs(5)))
        .await
        .unwrap();
}

/// On the current-thread runtime the async runner refuses before sending anything.
#[tokio::test(flavor = "current_thread")]
async fn the_async_runner_refuses_the_current_thread_runtime() {
    let schema = Fresh::new("amigct");
    let key = unique_key();
    let conn = AsyncPgConnection::establish(&schema.url("amig-ct"))
        .await
        .unwrap();
    let r = MigrationLock::new()
        .key(key)
        .run_pending_async(conn, source())
        .await;
    match r {
        Err(MigrationError::CurrentThreadRuntime) => {}
        Err(e) => panic!("expected CurrentThreadRuntime, got {e:?}"),
        Ok(_) => panic!("expected CurrentThreadRuntime, but it ran"),
    }
    assert!(!schema.has_table("__diesel_schema_migrations"));
    assert_no_locks(&[key], Duration::from_secs(1));
}
