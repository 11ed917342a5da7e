//! What the project ships besides the lock calls: the schema SQL (`advisory_key(text)`, the
//! `advisory_locks` view) installed from each adapter, the repository's migration files, and the
//! README's code, which must be the examples that CI runs.

use advisory_common::Key;
use advisory_tests::{db, unique_name};
use diesel::prelude::{Connection as _, PgConnection, QueryableByName};
use diesel::sql_types::{BigInt, Bool};
use sqlx::Connection as _;

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = BigInt)]
    k: i64,
}

#[derive(QueryableByName)]
struct Flag {
    #[diesel(sql_type = Bool)]
    b: bool,
}

const KEY_SQL: &str = "SELECT advisory_key('orders:42') AS k";
const SEEN_SQL: &str = "SELECT count(*) AS k FROM advisory_locks \
                        WHERE key_bigint = advisory_key('orders:42') AND pid = pg_backend_pid() AND granted";
const GONE_SQL: &str = "SELECT to_regprocedure('advisory_key(text)') IS NULL \
                        AND to_regclass('advisory_locks') IS NULL AS b";

/// A schema of its own, first in the session's search_path, so install / uninstall run where
/// nothing else lives (the shared test database already has the objects in `public`).
fn isolate(label: &str) -> (String, String) {
    let schema: String = unique_name(label)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    (
        format!("CREATE SCHEMA {schema}; SET search_path TO {schema}"),
        format!("RESET search_path; DROP SCHEMA {schema} CASCADE"),
    )
}

#[tokio::test]
async fn sqlx_schema_install_matches_key_name_and_uninstall_removes_it() {
    use sqlx_advisory::prelude::*;
    let mut conn = sqlx::PgConnection::connect(db().url()).await.unwrap();
    let (setup, teardown) = isolate("sqlx_schema");
    sqlx::raw_sql(sqlx::AssertSqlSafe(setup))
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx_advisory::schema::install(&mut conn).await.unwrap();
    sqlx_advisory::schema::install(&mut conn).await.unwrap(); // idempotent
    let k: i64 = sqlx::query_scalar(KEY_SQL)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(Key::BigInt(k), Key::name("orders:42"));
    {
        let mut guard = conn.advisory_lock("orders:42").await.unwrap();
        let seen: i64 = sqlx::query_scalar(SEEN_SQL)
            .fetch_one(&mut *guard)
            .await
            .unwrap();
        assert_eq!(seen, 1, "the advisory_locks view decodes the held key");
        guard.release().await.unwrap();
    }
    sqlx_advisory::schema::uninstall(&mut conn).await.unwrap();
    let gone: bool = sqlx::query_scalar(GONE_SQL)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(gone, "uninstall drops the function and the view");
    sqlx::raw_sql(sqlx::AssertSqlSafe(teardown))
        .execute(&mut conn)
        .await
        .unwrap();
}

#[test]
fn diesel_schema_install_matches_key_name_and_uninstall_removes_it() {
    use diesel::RunQueryDsl;
    use diesel::connection::SimpleConnection;
    use diesel_advisory::prelude::*;
    let mut conn = PgConnection::establish(db().url()).unwrap();
    let (setup, teardown) = isolate("diesel_schema");
    conn.batch_execute(&setup).unwrap();
    diesel_advisory::schema::install(&mut conn).unwrap();
    diesel_advisory::schema::install(&mut conn).unwrap();
    let k = diesel::sql_query(KEY_SQL)
        .get_result::<Row>(&mut conn)
        .unwrap()
        .k;
    assert_eq!(Key::BigInt(k), Key::name("orders:42"));
    {
        let mut guard = conn.advisory_lock("orders:42").unwrap();
        let seen = diesel::sql_query(SEEN_SQL)
            .get_result::<Row>(&mut *guard)
            .unwrap();
        assert_eq!(seen.k, 1, "the advisory_locks view decodes the held key");
    }
    diesel_advisory::schema::uninstall(&mut conn).unwrap();
    assert!(
        diesel::sql_query(GONE_SQL)
            .get_result::<Flag>(&mut conn)
            .unwrap()
            .b
    );
    conn.batch_execute(&teardown).unwrap();
}

#[tokio::test]
async fn diesel_async_schema_install_and_uninstall() {
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
    let mut conn = AsyncPgConnection::establish(db().url()).await.unwrap();
    let (setup, teardown) = isolate("diesel_async_schema");
    conn.batch_execute(&setup).await.unwrap();
    diesel_advisory::schema::install_async(&mut conn)
        .await
        .unwrap();
    let k = diesel::sql_query(KEY_SQL)
        .get_result::<Row>(&mut conn)
        .await
        .unwrap()
        .k;
    assert_eq!(Key::BigInt(k), Key::name("orders:42"));
    diesel_advisory::schema::uninstall_async(&mut conn)
        .await
        .unwrap();
    assert!(
        diesel::sql_query(GONE_SQL)
            .get_result::<Flag>(&mut conn)
            .await
            .unwrap()
            .b
    );
    conn.batch_execute(&teardown).await.unwrap();
}

/// The repository's migration is the shipped text (symlinks into `common/sql`), so a diesel or
/// sqlx-cli user of the repository and a user of the crates get the same objects.
#[test]
fn repository_migration_is_the_shipped_sql() {
    let root = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../migrations/2026-11-25-000000_advisory_locks"
    );
    let up = std::fs::read_to_string(format!("{root}/up.sql")).unwrap();
    let down = std::fs::read_to_string(format!("{root}/down.sql")).unwrap();
    assert_eq!(up, advisory_common::schema::INSTALL);
    assert_eq!(down, advisory_common::schema::UNINSTALL);
}

/// The code blocks of the README's "Use it" section are the `quickstart` examples that CI runs,
/// verbatim (between the examples' `README:begin` / `README:end` markers), and every relative
/// link of the README points at a file that exists.
#[test]
fn readme_code_is_the_examples_ci_runs_and_its_links_resolve() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    for example in [
        "sqlx-advisory/examples/sqlx_quickstart.rs",
        "diesel-advisory/examples/diesel_quickstart.rs",
        "diesel-advisory/examples/diesel_async_quickstart.rs",
    ] {
        let text = std::fs::read_to_string(format!("{root}/{example}")).unwrap();
        let begin = text.find("// README:begin\n").expect("marker") + "// README:begin\n".len();
        let end = text.find("// README:end").expect("marker");
        let region = text[begin..end].trim_end();
        assert!(
            readme.contains(&format!("```rust\n{region}\n")),
            "README.md must show {example}'s README region verbatim"
        );
        assert!(
            readme.contains(&format!("]({example})")),
            "README links {example}"
        );
    }
    let mut rest = readme.as_str();
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        let target = &rest[..rest.find(')').unwrap()];
        let is_file = target.ends_with(".md") || target.ends_with(".rs") || target.ends_with('/');
        if is_file && !target.starts_with("http") {
            assert!(
                std::path::Path::new(&format!("{root}/{target}")).exists(),
                "README links a missing file: {target}"
            );
        }
    }
}
