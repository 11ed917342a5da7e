//! The statement texts, checked without a database (the integration tests run them all).

use super::*;
use crate::key::Key;
use std::collections::HashSet;

fn params(sql: &str) -> usize {
    (1..=9)
        .take_while(|i| sql.contains(&format!("${i}")))
        .count()
}

#[test]
fn every_combination_is_distinct_and_well_formed() {
    let mut seen = HashSet::new();
    for scope in SCOPES {
        for mode in MODES {
            for wait in WAITS {
                for space in SPACES {
                    let sql = lock_sql(scope, mode, wait, space);
                    assert!(seen.insert(sql), "duplicate statement {sql}");
                    let f = function_name(scope, mode, wait);
                    assert!(sql.contains(&format!("{f}(")), "{sql} lacks {f}");
                    // the function name is exact, not a prefix of a longer one
                    let after = &sql[sql.find(&format!("{f}(")).unwrap() + f.len()..];
                    assert!(after.starts_with('('));
                    let keys = if space == KeySpace::Pair { 2 } else { 1 };
                    let expect = keys + usize::from(wait == Wait::Timeout);
                    assert_eq!(params(sql), expect, "{sql}");
                    assert!(!sql.contains(&format!("${}", expect + 1)));
                    assert!(sql.contains("AS locked"), "{sql}");
                    assert_eq!(sql.matches('(').count(), sql.matches(')').count(), "{sql}");
                    assert_eq!(sql.contains("xact"), scope == Scope::Transaction, "{sql}");
                    assert_eq!(sql.contains("shared"), mode == Mode::Shared, "{sql}");
                    assert_eq!(sql.contains("try"), wait == Wait::Try, "{sql}");
                    assert_eq!(sql.contains("lock_timeout"), wait == Wait::Timeout, "{sql}");
                }
            }
        }
    }
    assert_eq!(seen.len(), 2 * 2 * 3 * 2);
}

#[test]
fn unlock_statements() {
    let all: HashSet<_> = MODES
        .iter()
        .flat_map(|m| SPACES.iter().map(move |s| unlock_sql(*m, *s)))
        .collect();
    assert_eq!(all.len(), 4);
    assert_eq!(
        unlock_sql(Mode::Exclusive, KeySpace::Pair),
        "SELECT pg_advisory_unlock($1, $2) AS unlocked"
    );
    assert_eq!(
        unlock_literal(Mode::Exclusive, Key::BigInt(i64::MIN)),
        format!("SELECT pg_advisory_unlock({})", i64::MIN)
    );
}

#[test]
fn savepoint_batch_shape() {
    for scope in SCOPES {
        for mode in MODES {
            let b = savepoint_batch(scope, mode, Key::Pair(3, 4), 7);
            assert_eq!(b.matches(';').count(), 2);
            assert!(b.contains(&format!(
                "{}(3, 4)",
                function_name(scope, mode, Wait::Block)
            )));
            assert_eq!(b.matches('(').count(), b.matches(')').count());
        }
    }
}

/// The literal texts are the prepared statements with the integers written in: same
/// functions, same timeout fences.
#[test]
fn literals_match_the_prepared_statements() {
    for mode in MODES {
        let timed = lock_sql(Scope::Transaction, mode, Wait::Timeout, KeySpace::BigInt)
            .replace("$1", "-9")
            .replace("($2::int4)::text", "'250'");
        assert_eq!(
            lock_then_begin(mode, Key::BigInt(-9), Some(250)),
            format!("{timed}; BEGIN")
        );
        let f = function_name(Scope::Transaction, mode, Wait::Block);
        assert_eq!(
            lock_then_begin(mode, Key::Pair(-1, 2), None),
            format!("SELECT {f}(-1, 2); BEGIN")
        );
        for scope in SCOPES {
            let timed = lock_sql(scope, mode, Wait::Timeout, KeySpace::Pair)
                .replace("$1", "3")
                .replace("$2", "4")
                .replace("($3::int4)::text", "'7'");
            assert_eq!(
                savepoint_batch(scope, mode, Key::Pair(3, 4), 7),
                format!(
                    "SAVEPOINT advisory_lock_attempt; {timed}; RELEASE SAVEPOINT advisory_lock_attempt"
                )
            );
        }
    }
}

/// `LOCKS_DETAIL_SQL` starts with exactly `LOCKS_SQL`'s columns (so `LockInfo::from_row`
/// decodes its first twelve), reads the same rows, and binds nothing.
#[test]
fn locks_detail_extends_locks() {
    let cols = |s: &'static str| &s[..s.find(" FROM pg_catalog.pg_locks").unwrap()];
    let from = |s: &'static str| {
        let f = &s[s.find(" FROM pg_catalog.pg_locks").unwrap()..];
        &f[..f.find(" ORDER BY").unwrap()]
    };
    let base = cols(LOCKS_SQL);
    let detail = cols(LOCKS_DETAIL_SQL);
    assert!(detail.starts_with(&format!("{base}, ")), "{detail}");
    assert_eq!(from(LOCKS_SQL), from(LOCKS_DETAIL_SQL));
    assert_eq!(
        detail.matches(" AS ").count(),
        base.matches(" AS ").count() + 3
    );
    for c in [
        "client_addr",
        "session_seconds",
        "blocked_by",
        "pg_blocking_pids(l.pid)",
    ] {
        assert!(detail.contains(c), "{c}");
    }
    assert_eq!(params(LOCKS_DETAIL_SQL), 0);
    assert!(all_statements().contains(&(LOCKS_DETAIL_SQL.to_owned(), 0)));
}

#[test]
fn cancel_lock_wait_targets_one_waiting_backend() {
    assert_eq!(params(CANCEL_LOCK_WAIT), 1);
    for c in [
        "pid = $1::int4",
        "wait_event_type = 'Lock'",
        "state = 'active'",
    ] {
        assert!(CANCEL_LOCK_WAIT.contains(c), "{c}");
    }
}
