//! The statement table of `stmt.rs`: every id has its own text, taken from `advisory_common::sql`.

use std::collections::HashMap;

use super::*;
use advisory_common::sql::{MODES, SCOPES, SPACES, WAITS};

/// Every id's text is one of `sql::all_statements()`, no two ids share a text, and the
/// constructors map each (scope, mode, wait, space) to the id of exactly that text.
#[test]
fn ids_and_texts_are_one_to_one() {
    let mut seen = HashMap::new();
    for id in 0..N_IDS {
        let t = text(id).expect("in range");
        assert!(
            seen.insert(t, id).is_none(),
            "ids {} and {id} share {t}",
            seen[t]
        );
    }
    assert_eq!(text(N_IDS), None);
    for scope in SCOPES {
        for mode in MODES {
            for wait in WAITS {
                for space in SPACES {
                    let id = StmtId::lock(scope, mode, wait, space);
                    assert!(id.0 < N_LOCK);
                    assert_eq!(text(id.0), Some(sql::lock_sql(scope, mode, wait, space)));
                }
            }
        }
    }
    for mode in MODES {
        for space in SPACES {
            let id = StmtId::unlock(mode, space);
            assert_eq!(text(id.0), Some(sql::unlock_sql(mode, space)));
            let id = StmtId::held(mode, space);
            assert_eq!(text(id.0), Some(sql::held_sql(mode, space)));
        }
    }
    assert_eq!(text(LOCKS_ID), Some(sql::LOCKS_SQL));
    let all: Vec<String> = sql::all_statements().into_iter().map(|s| s.0).collect();
    for t in seen.keys() {
        assert!(
            all.iter().any(|s| s == t),
            "{t} not from advisory_common::sql"
        );
    }
}

/// Each id is a distinct static query id.
#[test]
fn query_ids_are_distinct() {
    let mut ids = std::collections::HashSet::new();
    macro_rules! check {
        ($($i:literal)*) => {
            $( assert!(ids.insert(<Stmt<Bool, $i> as QueryId>::query_id().unwrap())); )*
        };
    }
    check!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31);
    assert!(ids.insert(LocksStmt::query_id().unwrap()));
    assert_eq!(ids.len(), N_IDS);
}

/// What diesel would send for `id`, with `key` and `ms` bound.
fn debug(id: StmtId, key: Key, ms: Option<i32>) -> String {
    with_bool_stmt_id!(id, N => Ok::<_, DieselError>(
        diesel::debug_query::<Pg, _>(&Stmt::<Bool, N>::new(Some(key), ms)).to_string()
    ))
    .unwrap()
}

#[test]
fn sql_text_is_byte_identical_to_common() {
    for id in 0..HELD_BASE + 4 {
        let t = text(id).unwrap();
        let timed = t.contains("::int4)::text");
        let pair = if timed {
            t.contains("$3")
        } else {
            t.contains("$2")
        };
        let key = if pair {
            Key::Pair(1, 2)
        } else {
            Key::BigInt(7)
        };
        let ms = timed.then_some(5);
        assert_eq!(
            debug(StmtId(id), key, ms).split(" -- binds").next(),
            Some(t),
        );
    }
    assert_eq!(
        diesel::debug_query::<Pg, _>(&locks_stmt())
            .to_string()
            .split(" -- binds")
            .next(),
        Some(sql::LOCKS_SQL)
    );
    let id = StmtId::lock(
        Scope::Session,
        Mode::Shared,
        Wait::Timeout,
        Key::Pair(1, 2).space(),
    );
    assert!(debug(id, Key::Pair(1, 2), Some(9)).ends_with("-- binds: [1, 2, 9]"));
    // The bool dispatch covers exactly the lock, unlock and held statements.
    let out_of_range = with_bool_stmt_id!(StmtId(LOCKS_ID), N => Ok::<_, DieselError>(N));
    assert!(out_of_range.is_err());
}
