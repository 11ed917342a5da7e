//! sqlx's migrator already locks: it waits while another session holds
//! `migration_keys::sqlx(current_database())`, which is how a Rust service can hold it off or
//! see it running.

use std::path::Path;
use std::time::Duration;

use advisory_common::migration_keys;
use advisory_tests::{assert_no_locks, unique_name, wait_until};
use diesel::prelude::*;
use diesel::sql_types::Text;
use diesel_advisory::prelude::*;

use crate::schema::{Fresh, has_table};

#[derive(QueryableByName)]
struct Db {
    #[diesel(sql_type = Text)]
    name: String,
}

/// A session holds `migration_keys::sqlx(current_database())`; sqlx's `Migrator::run` then waits
/// on exactly that key (its session shows in `pg_locks` as waiting, by `application_name`) and
/// migrates nothing until the key is released, then runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlx_migrator_waits_while_the_sqlx_migration_key_is_held() {
    use sqlx::Connection;
    let schema = Fresh::new("sqlxmig");
    let app = format!("sqlx-migrator-{}", &unique_name("m")[2..]);
    let mut holder = PgConnection::establish(&schema.url("interop-holder")).unwrap();
    let db = diesel::sql_query("SELECT current_database() AS name")
        .get_result::<Db>(&mut holder)
        .unwrap()
        .name;
    let key = migration_keys::sqlx(&db);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/fixtures/sqlx_migrations");
    let migrator = sqlx::migrate::Migrator::new(dir).await.unwrap();
    let mut conn = sqlx::PgConnection::connect(&schema.url(&app))
        .await
        .unwrap();

    // a plain thread takes the key, waits until the migrator's session waits on it, checks that
    // nothing was migrated, and releases
    let (held_tx, held_rx) = tokio::sync::oneshot::channel();
    let (app2, name) = (app.clone(), schema.name.clone());
    let observer = tokio::task::spawn_blocking(move || {
        let guard = holder.advisory_lock(key).unwrap();
        held_tx.send(()).unwrap();
        wait_until(
            &[key],
            Duration::from_secs(10),
            "sqlx's migrator waiting",
            |rows| {
                rows.iter()
                    .any(|l| !l.granted && l.application_name.as_deref() == Some(app2.as_str()))
            },
        );
        let migrated_early = has_table(&name, "sqlx_widgets");
        guard.release().unwrap();
        migrated_early
    });
    held_rx.await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), migrator.run(&mut conn))
        .await
        .expect("the migrator finishes once the key is released")
        .expect("migrations run");
    assert!(!observer.await.unwrap(), "migrated while the key was held");
    assert!(schema.has_table("sqlx_widgets"));
    assert_eq!(schema.count("_sqlx_migrations"), 1);
    tokio::task::spawn_blocking(move || assert_no_locks(&[key], Duration::from_secs(5)))
        .await
        .unwrap();
}
