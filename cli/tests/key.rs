//! `pg-advisory key`: every preset's key for a name matches that preset's test vectors (computed
//! outside this project: python3 hashlib/hmac transcriptions of each library, and the npm
//! package's own vectors), and each SQL twin, run by the real server, gives the same key.

mod support;

use serde_json::Value;
use support::*;

/// (preset, name, expected `key` as `list` prints it).
const VECTORS: &[(&str, &str, &str)] = &[
    ("default", "orders:42", "bigint:-8476019149258318077"),
    ("default", "test-lock", "bigint:-6538219534551231858"),
    ("sqlx", "orders:42", "bigint:4560632496899255762"),
    ("sqlx", "my-lock", "bigint:-7577905956304869515"),
    ("postgresql-lock", "orders:42", "bigint:1127154695574559308"),
    ("postgresql-lock", "test-lock", "bigint:5403829226507568667"),
    ("django-pglock", "orders:42", "bigint:260941440247488394"),
    ("django-pglock", "test-lock", "bigint:-8155300480326351963"),
    ("with-advisory-lock", "orders:42", "pair:(218055877,0)"),
    ("with-advisory-lock", "test-lock", "pair:(31720046,0)"),
    (
        "node-advisory-lock",
        "orders:42",
        "pair:(2099339146,60755163)",
    ),
    (
        "node-advisory-lock",
        "test-lock",
        "pair:(-107789403,-1898803861)",
    ),
    (
        "node-advisory-lock-1.0",
        "orders:42",
        "pair:(2099339146,-612556449)",
    ),
    (
        "node-advisory-lock-1.0",
        "test-lock",
        "pair:(-107789403,1811518275)",
    ),
    (
        "distributed-lock",
        "orders:42",
        "pair:(-540334498,1558000740)",
    ),
    (
        "distributed-lock",
        "test-lock",
        "pair:(-375939259,-1153965098)",
    ),
];

const PRESETS: [&str; 8] = [
    "default",
    "sqlx",
    "postgresql-lock",
    "django-pglock",
    "with-advisory-lock",
    "node-advisory-lock",
    "node-advisory-lock-1.0",
    "distributed-lock",
];

fn key_json(args: &[&str]) -> Vec<Value> {
    let o = output(&[&["key", "--json"][..], args].concat());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    serde_json::from_slice::<Value>(&o.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn key_all_matches_every_presets_vectors() {
    for name in ["orders:42", "test-lock", "my-lock"] {
        let all = key_json(&["--all", name]);
        let names: Vec<&str> = all.iter().map(|v| v["preset"].as_str().unwrap()).collect();
        assert_eq!(names, PRESETS, "--all lists every preset, in order");
        for (preset, n, expected) in VECTORS.iter().filter(|v| v.1 == name) {
            let row = all.iter().find(|v| v["preset"] == *preset).unwrap();
            assert_eq!(row["key"], *expected, "{preset}({n})");
            // --preset gives the same single row
            let one = key_json(&["--preset", preset, name]);
            assert_eq!(one.len(), 1);
            assert_eq!(one[0]["key"], *expected);
        }
    }
    // every preset has at least one vector here
    for p in PRESETS {
        assert!(VECTORS.iter().filter(|v| v.0 == p).count() >= 2, "{p}");
    }
}

#[test]
fn key_without_options_prints_every_preset_with_its_lock_call_and_sql() {
    let o = output(&["key", "orders:42"]);
    assert_eq!(o.status.code(), Some(0));
    let text = stdout(&o);
    for p in PRESETS {
        assert!(
            text.contains(&format!("\n{p}: ")) || text.starts_with(&format!("{p}: ")),
            "{p}: {text}"
        );
    }
    assert!(
        text.contains("pg_advisory_lock(-8476019149258318077)"),
        "{text}"
    );
    assert!(text.contains("pg_advisory_lock(218055877, 0)"), "{text}");
    let one = stdout(&output(&["key", "--preset", "sqlx", "orders:42"]));
    assert!(
        one.starts_with("sqlx: ") && one.contains("bigint:4560632496899255762"),
        "{one}"
    );
    assert!(!one.contains("default:"));
}

/// The SQL twin printed for psql computes, on the real server, the key the tool derives.
#[tokio::test]
async fn each_sql_twin_computes_the_same_key_on_the_server() {
    let mut pg = pg().await;
    let mut checked = 0;
    for name in ["orders:42", "it's a \"name\" é", ""] {
        for row in key_json(&["--all", name]) {
            let Some(sql) = row["sql"].as_str() else {
                continue;
            };
            let r = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                .fetch_one(&mut pg)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            let got = if let Some(pair) = row["pair"].as_array() {
                use sqlx::Row as _;
                let (a, b): (i32, i32) = (r.get(0), r.get(1));
                assert_eq!(
                    (a as i64, b as i64),
                    (pair[0].as_i64().unwrap(), pair[1].as_i64().unwrap())
                );
                format!("pair:({a},{b})")
            } else {
                use sqlx::Row as _;
                format!("bigint:{}", r.get::<i64, _>(0))
            };
            assert_eq!(
                row["key"],
                got.as_str(),
                "{} {name:?}: {sql}",
                row["preset"]
            );
            checked += 1;
        }
    }
    assert!(checked >= 3 * 4, "only {checked} SQL twins checked");
}
