//! Ruby peers (Debian's ruby, ruby-activerecord 6.1, ruby-pg; see `peer.rb`): Rails' migrator
//! holds `migration_keys::rails(current_database())` while it migrates and refuses to run while
//! another session holds it; and the with_advisory_lock gem's derivation, computed by real Ruby,
//! agree with `Key::with_advisory_lock` (prefix parsing edge cases included).

use std::io::Write;
use std::process::Command;

use advisory_common::{Key, KeyValue, migration_keys};
use advisory_tests::{assert_no_locks, db, unique_key, unique_name, wait_until};
use diesel::prelude::*;
use diesel::sql_types::Text;
use diesel_advisory::prelude::*;

use super::{Peer, SEEN, STARTUP, conn};
use crate::schema::Fresh;

fn ruby(args: &[&str]) -> Command {
    let mut c = Command::new("ruby");
    c.arg(super::dir().join("peer.rb")).args(args);
    c
}

#[derive(QueryableByName)]
struct Db {
    #[diesel(sql_type = Text)]
    name: String,
}

/// One test, because both halves use the one Rails key of the database.
///
/// 1. Rails migrates (its migration waits on a key the test holds): `pg_locks` shows Rails'
///    session holding `migration_keys::rails(db)`; released, Rails finishes.
/// 2. Rust holds `migration_keys::rails(db)`: Rails raises `ConcurrentMigrationError` and migrates
///    nothing.
#[test]
fn rails_migrator_holds_and_respects_the_rails_migration_key() {
    let mut conn = conn();
    let db = diesel::sql_query("SELECT current_database() AS name")
        .get_result::<Db>(&mut conn)
        .unwrap()
        .name;
    let rails_key = migration_keys::rails(&db);

    let schema = Fresh::new("rails");
    let app = format!("peer-rails-{}", &unique_name("r")[2..]);
    let url = format!("{}&schema_search_path={}", db_url(&app), schema.name);
    let block = unique_key();
    let KeyValue::BigInt(block_i64) = block.value() else {
        unreachable!("unique_key is a bigint")
    };
    let guard = conn.advisory_lock(block).unwrap();
    let mut peer = Peer::start(
        ruby(&["rails-migrate", &url, &block_i64.to_string()]),
        "rails migrate".into(),
    );
    wait_until(
        &[rails_key],
        STARTUP,
        "Rails holding its migration lock",
        |rows| {
            rows.iter()
                .any(|l| l.granted && l.application_name.as_deref() == Some(app.as_str()))
        },
    );
    wait_until(
        &[block],
        SEEN,
        "Rails' migration waiting on the test",
        |rows| rows.iter().any(|l| !l.granted),
    );
    assert!(!schema.has_table("rails_widgets"));
    guard.release().unwrap();
    peer.expect("migrated", STARTUP);
    peer.finish();
    assert!(schema.has_table("rails_widgets"));
    assert_no_locks(&[rails_key, block], SEEN);

    let schema = Fresh::new("rails");
    let url = format!("{}&schema_search_path={}", db_url(&app), schema.name);
    let guard = conn.advisory_lock(rails_key).unwrap();
    let mut peer = Peer::start(
        ruby(&["rails-migrate", &url, &block_i64.to_string()]),
        "rails migrate, key held".into(),
    );
    peer.expect("concurrent", STARTUP);
    peer.finish();
    assert!(!schema.has_table("rails_widgets"));
    guard.release().unwrap();
}

fn db_url(app: &str) -> String {
    db().url_with_app(app)
}

/// The gem's derivation computed by Ruby (`Zlib.crc32`, `String#to_i`) against
/// `Key::with_advisory_lock`, for names with non-ASCII characters and quotes, and prefixes that
/// exercise `String#to_i`.
#[test]
fn with_advisory_lock_derivation_matches_ruby() {
    let names = [
        "",
        "orders:42",
        "42",
        "it's",
        "héllo wörld ✓",
        "app",
        "test-lock",
    ];
    let prefixes = [
        None,
        Some(""),
        Some("7"),
        Some("  12abc"),
        Some("+7"),
        Some("1_000"),
        Some("1__2"),
        Some("_12"),
        Some("abc"),
        Some("0x10"),
        Some("-1"),
        Some("2147483648"),
        Some("2147483649"),
        Some("18446744073709551621"),
        Some("-2147483649"),
        Some("\t\n 99"),
    ];
    let mut cases = Vec::new();
    for n in names {
        for p in prefixes {
            cases.push((n, p));
        }
    }
    let input = format!(
        "[{}]",
        cases
            .iter()
            .map(|(n, p)| format!(
                "[{},{}]",
                json_str(n),
                p.map_or("null".to_string(), json_str)
            ))
            .collect::<Vec<_>>()
            .join(",")
    );
    let mut child = ruby(&["wal-keys"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("ruby (tests/peers/setup.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "ruby failed");
    let text = String::from_utf8(out.stdout).unwrap();
    let got: Vec<(i32, i32)> = text
        .trim()
        .trim_start_matches("[[")
        .trim_end_matches("]]")
        .split("],[")
        .map(|pair| {
            let (a, b) = pair.split_once(',').unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect();
    assert_eq!(got.len(), cases.len());
    for ((name, prefix), (k1, k2)) in cases.iter().zip(got) {
        assert_eq!(
            Key::with_advisory_lock(name, *prefix),
            Key::Pair(k1, k2),
            "{name:?} with prefix {prefix:?}"
        );
    }
}

/// A JSON string literal (names and prefixes here have no control characters but `\t\n`).
fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
