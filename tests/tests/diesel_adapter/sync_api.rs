//! diesel sync `PgConnection`.

use std::time::Duration;

use advisory_common::{Key, LockMode};
use advisory_tests::{assert_no_locks, granted, unique_i32, unique_key, wait_until, waiting};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::Text;
use diesel_advisory::Error;
use diesel_advisory::prelude::*;

use super::{ASYNC_RELEASE, conn, pid};

#[derive(QueryableByName)]
struct Setting {
    #[diesel(sql_type = Text)]
    lock_timeout: String,
}

fn lock_timeout(c: &mut PgConnection) -> String {
    diesel::sql_query(advisory_common::sql::SHOW_LOCK_TIMEOUT)
        .get_result::<Setting>(c)
        .unwrap()
        .lock_timeout
}

pub(crate) fn holders(key: Key) -> Vec<i32> {
    granted(key).into_iter().map(|l| l.pid).collect()
}

/// The last statement `pid` ran, from `pg_stat_activity`.
pub(crate) fn last_query(observer: &mut PgConnection, pid: i32) -> String {
    #[derive(QueryableByName)]
    struct Q {
        #[diesel(sql_type = Text)]
        query: String,
    }
    diesel::sql_query("SELECT query FROM pg_stat_activity WHERE pid = $1")
        .bind::<diesel::sql_types::Integer, _>(pid)
        .get_result::<Q>(observer)
        .unwrap()
        .query
}

#[test]
fn guard_holds_then_drop_releases_synchronously() {
    let (mut a, mut b) = (conn(), conn());
    let key = unique_key();
    let a_pid = pid(&mut a);
    let mut guard = a.advisory_lock(key).unwrap();
    assert_eq!(holders(key), vec![a_pid]);
    assert!(guard.is_held().unwrap());
    assert!(b.try_advisory_lock(key).unwrap().is_none());
    drop(guard);
    // synchronous: no waiting allowed
    assert!(holders(key).is_empty());
    b.try_advisory_lock(key)
        .unwrap()
        .unwrap()
        .release()
        .unwrap();
}

#[test]
fn shared_and_pair_keys_and_release_not_held() {
    let (mut a, mut b) = (conn(), conn());
    let key = Key::Pair(advisory_tests::unique_i32(), -1);
    let g1 = a.advisory_lock_shared(key).unwrap();
    assert!(g1.is_shared());
    let g2 = b.try_advisory_lock_shared(key).unwrap().unwrap();
    assert_eq!(granted(key).len(), 2);
    assert!(granted(key).iter().all(|l| l.mode == LockMode::Shared));
    g2.release().unwrap();
    // released behind the guard's back: release reports NotHeld
    let mut g1 = g1;
    g1.batch_execute(advisory_common::sql::UNLOCK_ALL).unwrap();
    assert!(!g1.is_held().unwrap());
    assert!(matches!(g1.release(), Err(Error::NotHeld { key: k }) if k == key));
    assert!(granted(key).is_empty());
}

#[test]
fn xact_lock_held_until_commit_or_rollback() {
    let mut c = conn();
    let key = unique_key();
    c.transaction::<_, Error, _>(|c| {
        c.xact_lock(key)?;
        c.xact_lock_shared(Key::Pair(1, advisory_tests::unique_i32()))?;
        assert_eq!(granted(key).len(), 1);
        assert!(c.try_xact_lock(key)?, "re-entrant");
        Ok(())
    })
    .unwrap();
    assert!(granted(key).is_empty());
    let r = c.transaction::<(), Error, _>(|c| {
        c.xact_lock(key)?;
        assert_eq!(granted(key).len(), 1);
        Err(Error::NotHeld { key })
    });
    assert!(r.is_err());
    assert!(granted(key).is_empty());
}

#[test]
fn xact_outside_transaction_sends_nothing() {
    let mut c = conn();
    let mut observer = conn();
    let c_pid = pid(&mut c);
    c.batch_execute("SELECT 'marker-before-xact'").unwrap();
    let key = unique_key();
    for r in [
        c.xact_lock(key),
        c.xact_lock_shared(key),
        c.try_xact_lock(key).map(drop),
        c.xact_lock_timeout(key, Duration::from_millis(5)),
    ] {
        assert!(matches!(r, Err(Error::NotInTransaction { key: k }) if k == key));
    }
    assert_eq!(
        last_query(&mut observer, c_pid),
        "SELECT 'marker-before-xact'"
    );
}

#[test]
fn question_mark_in_transactions_both_error_types() {
    let mut c = conn();
    let key = unique_key();
    let mut other = conn();
    let _held = other.advisory_lock(key).unwrap();
    // closure error = diesel::result::Error
    let r = c.transaction::<(), diesel::result::Error, _>(|c| {
        c.xact_lock_timeout(key, Duration::from_millis(20))?;
        Ok(())
    });
    let r: Result<(), Error> = r.map_err(Error::from);
    assert!(
        matches!(r, Err(Error::Timeout { key: k, .. }) if k == key),
        "{r:?}"
    );
    // closure error = diesel_advisory::Error, a diesel query error inside converts too
    let r = c.transaction::<(), Error, _>(|c| {
        diesel::sql_query("SELECT 1/0").execute(c)?;
        Ok(())
    });
    assert!(matches!(r, Err(Error::Database(_))));
    let r = c.transaction::<(), Error, _>(|c| c.xact_lock_timeout(key, Duration::from_millis(20)));
    assert!(matches!(r, Err(Error::Timeout { .. })));
}

#[test]
fn timeouts_typed_setting_unchanged_and_transaction_usable() {
    let mut c = conn();
    let mut holder = conn();
    let key = unique_key();
    let held = holder.advisory_lock(key).unwrap();
    c.batch_execute("SET lock_timeout = '7s'").unwrap();
    let t = Duration::from_millis(30);
    match c.advisory_lock_timeout(key, t) {
        Err(Error::Timeout { key: k, timeout }) => assert_eq!((k, timeout), (key, t)),
        other => panic!("{other:?}"),
    }
    assert_eq!(lock_timeout(&mut c), "7s");
    assert!(matches!(
        c.advisory_lock_shared_timeout(key, t),
        Err(Error::Timeout { .. })
    ));
    // inside a transaction: savepoint, the transaction carries on and commits
    c.transaction::<_, Error, _>(|c| {
        assert!(matches!(
            c.xact_lock_timeout(key, t),
            Err(Error::Timeout { .. })
        ));
        // a session lock is refused inside a transaction, nothing sent
        assert!(matches!(
            c.advisory_lock_timeout(key, t),
            Err(Error::AlreadyInTransaction { .. })
        ));
        assert_eq!(lock_timeout(c), "7s");
        diesel::sql_query("INSERT INTO advisory_test_counters (id, value) VALUES ($1, 1)")
            .bind::<Text, _>(format!("timeout-{key}"))
            .execute(c)?;
        Ok(())
    })
    .unwrap();
    assert_eq!(lock_timeout(&mut c), "7s");
    // success when released mid-wait
    let c_pid = pid(&mut c);
    let waiter = std::thread::spawn(move || {
        let g = c
            .advisory_lock_timeout(key, Duration::from_secs(20))
            .map(|g| g.key());
        (g, c)
    });
    wait_until(
        &[key],
        Duration::from_secs(10),
        "the waiter queued",
        |rows| rows.iter().any(|l| l.pid == c_pid && !l.granted),
    );
    held.release().unwrap();
    let (got, mut c) = waiter.join().unwrap();
    assert_eq!(got.unwrap(), key);
    assert!(
        granted(key).is_empty(),
        "the waiter's guard was dropped in the thread"
    );
    assert_eq!(lock_timeout(&mut c), "7s");
}

#[test]
fn deadlock_is_typed() {
    let (a, mut b) = (conn(), conn());
    let (k1, k2) = (unique_key(), unique_key());
    let mut gb = b.advisory_lock(k2).unwrap();
    let a_thread = std::thread::spawn(move || {
        let mut a = a;
        let mut ga = a.advisory_lock(k1).unwrap();
        (&mut *ga).advisory_lock(k2).map(|g| g.key())
    });
    wait_until(
        &[k1, k2],
        Duration::from_secs(10),
        "a holds k1, waits for k2",
        |rows| {
            rows.iter().any(|l| l.key == k1 && l.granted)
                && rows.iter().any(|l| l.key == k2 && !l.granted)
        },
    );
    let rb = (&mut *gb).advisory_lock(k1).map(|g| g.key());
    let ra = a_thread.join().unwrap();
    let deadlocks = [&ra, &rb]
        .iter()
        .filter(|r| matches!(r, Err(Error::Deadlock { .. })))
        .count();
    assert_eq!(deadlocks, 1, "a: {ra:?}, b: {rb:?}");
    drop(gb);
    assert_no_locks(&[k1, k2], ASYNC_RELEASE);
    assert!(waiting(k1).is_empty());
}

/// The lock statements are prepared once per connection and then reused (diesel's statement
/// cache keyed by SQL text): `pg_prepared_statements` shows exactly one entry per statement.
#[test]
fn statements_are_prepared_once_and_cached() {
    let mut c = conn();
    for _ in 0..3 {
        c.advisory_lock(unique_key()).unwrap().release().unwrap();
        let mut g = c
            .try_advisory_lock_shared(Key::Pair(3, 4))
            .unwrap()
            .unwrap();
        assert!(g.is_held().unwrap());
    }
    #[derive(QueryableByName)]
    struct S {
        #[diesel(sql_type = Text)]
        statement: String,
    }
    let prepared: Vec<String> = diesel::sql_query("SELECT statement FROM pg_prepared_statements")
        .load::<S>(&mut c)
        .unwrap()
        .into_iter()
        .map(|s| s.statement)
        .collect();
    use advisory_common::KeySpace;
    use advisory_common::sql::{Mode, Scope, Wait, held_sql, lock_sql, unlock_sql};
    for text in [
        lock_sql(
            Scope::Session,
            Mode::Exclusive,
            Wait::Block,
            KeySpace::BigInt,
        ),
        unlock_sql(Mode::Exclusive, KeySpace::BigInt),
        lock_sql(Scope::Session, Mode::Shared, Wait::Try, KeySpace::Pair),
        held_sql(Mode::Shared, KeySpace::Pair),
    ] {
        assert_eq!(
            prepared.iter().filter(|s| s.as_str() == text).count(),
            1,
            "{text} in {prepared:#?}"
        );
    }
}

/// Every statement the sync adapter prepares, on one connection: each one does what its text says
/// (exclusive vs shared, waiting vs try vs timed, bigint vs pair key, session vs transaction
/// scope, unlock, held, lock listing), and `pg_prepared_statements` holds exactly one entry per
/// distinct statement text. Each statement is cached under its own static query id; two texts
/// sharing one would run the wrong cached statement, which both checks catch.
#[test]
fn every_statement_variant_is_its_own_prepared_statement() {
    use advisory_common::sql::{Mode, Scope, Wait, held_sql, lock_sql, unlock_sql};
    use std::collections::HashSet;

    let (mut c, mut other) = (conn(), conn());
    let c_pid = pid(&mut c);
    let to_mode = |m: LockMode| match m {
        LockMode::Exclusive => Mode::Exclusive,
        LockMode::Shared => Mode::Shared,
    };
    // `key` is held by `c` (only) in `mode`, and `other` sees the matching conflicts.
    let check_held = |other: &mut PgConnection, key: Key, mode: Mode| {
        let g = granted(key);
        assert_eq!(g.len(), 1, "{key} {mode:?}: {g:?}");
        assert_eq!((g[0].pid, to_mode(g[0].mode)), (c_pid, mode), "{key}");
        assert!(other.try_advisory_lock(key).unwrap().is_none(), "{key}");
        let shared = other.try_advisory_lock_shared(key).unwrap();
        assert_eq!(shared.is_some(), mode == Mode::Shared, "{key}");
        drop(shared);
    };
    let mut used = HashSet::new();
    let keys = || [unique_key(), Key::Pair(unique_i32(), unique_i32())];
    for mode in [Mode::Exclusive, Mode::Shared] {
        let shared = mode == Mode::Shared;
        for key in keys() {
            let space = key.space();
            used.insert(unlock_sql(mode, space));
            used.insert(held_sql(mode, space));
            for wait in [Wait::Block, Wait::Try, Wait::Timeout] {
                used.insert(lock_sql(Scope::Session, mode, wait, space));
                let mut g = match (wait, shared) {
                    (Wait::Block, false) => c.advisory_lock(key).unwrap(),
                    (Wait::Block, true) => c.advisory_lock_shared(key).unwrap(),
                    (Wait::Try, false) => c.try_advisory_lock(key).unwrap().unwrap(),
                    (Wait::Try, true) => c.try_advisory_lock_shared(key).unwrap().unwrap(),
                    (Wait::Timeout, false) => c
                        .advisory_lock_timeout(key, Duration::from_secs(5))
                        .unwrap(),
                    (Wait::Timeout, true) => c
                        .advisory_lock_shared_timeout(key, Duration::from_secs(5))
                        .unwrap(),
                };
                assert_eq!(g.is_shared(), shared);
                assert!(g.is_held().unwrap(), "{key} {mode:?} {wait:?}");
                check_held(&mut other, key, mode);
                g.release().unwrap();
                assert!(granted(key).is_empty(), "{key} {mode:?} {wait:?}");
            }
            // Refusals: another session holds the key exclusively.
            let blocker = other.advisory_lock(key).unwrap();
            let refused = if shared {
                c.try_advisory_lock_shared(key).unwrap().is_none()
            } else {
                c.try_advisory_lock(key).unwrap().is_none()
            };
            assert!(refused, "{key} {mode:?}");
            let timed = if shared {
                c.advisory_lock_shared_timeout(key, Duration::from_millis(20))
            } else {
                c.advisory_lock_timeout(key, Duration::from_millis(20))
            };
            assert!(
                matches!(timed, Err(Error::Timeout { .. })),
                "{key}: {timed:?}"
            );
            drop(timed);
            blocker.release().unwrap();
            // Transaction scope (a timed one inside a transaction is the savepoint batch).
            for wait in [Wait::Block, Wait::Try] {
                used.insert(lock_sql(Scope::Transaction, mode, wait, space));
                c.transaction::<_, Error, _>(|c| {
                    match (wait, shared) {
                        (Wait::Block, false) => c.xact_lock(key)?,
                        (Wait::Block, true) => c.xact_lock_shared(key)?,
                        (Wait::Try, false) => assert!(c.try_xact_lock(key)?),
                        (Wait::Try, true) => assert!(c.try_xact_lock_shared(key)?),
                        _ => unreachable!(),
                    }
                    check_held(&mut other, key, mode);
                    Ok(())
                })
                .unwrap();
                assert!(granted(key).is_empty(), "{key} {mode:?} {wait:?}");
            }
            let blocker = other.advisory_lock(key).unwrap();
            let got = c
                .transaction::<_, Error, _>(|c| {
                    if shared {
                        c.try_xact_lock_shared(key)
                    } else {
                        c.try_xact_lock(key)
                    }
                })
                .unwrap();
            assert!(!got, "{key} {mode:?}");
            blocker.release().unwrap();
        }
    }
    // Not held any more: unlock says so, held says no.
    let key = unique_key();
    let mut g = c.advisory_lock_shared(key).unwrap();
    diesel::sql_query("SELECT pg_advisory_unlock_all()")
        .execute(&mut *g)
        .unwrap();
    assert!(!g.is_held().unwrap());
    assert!(matches!(g.release(), Err(Error::NotHeld { .. })));
    // The lock listing.
    let held = c.advisory_lock(key).unwrap();
    let mine: Vec<_> = other
        .advisory_locks()
        .unwrap()
        .into_iter()
        .filter(|l| l.key == key)
        .collect();
    assert_eq!(mine.len(), 1);
    assert_eq!((mine[0].pid, mine[0].mode), (c_pid, LockMode::Exclusive));
    drop(held);
    let listed = c.advisory_locks().unwrap();
    assert!(listed.iter().all(|l| l.key != key));
    used.insert(advisory_common::sql::LOCKS_SQL);

    #[derive(QueryableByName)]
    struct S {
        #[diesel(sql_type = Text)]
        statement: String,
    }
    let prepared: Vec<String> = diesel::sql_query("SELECT statement FROM pg_prepared_statements")
        .load::<S>(&mut c)
        .unwrap()
        .into_iter()
        .map(|s| s.statement)
        .collect();
    let all: HashSet<String> = advisory_common::sql::all_statements()
        .into_iter()
        .map(|s| s.0)
        .collect();
    let ours: Vec<&String> = prepared.iter().filter(|s| all.contains(*s)).collect();
    let distinct: HashSet<&str> = ours.iter().map(|s| s.as_str()).collect();
    assert_eq!(
        distinct.len(),
        ours.len(),
        "a text prepared twice: {ours:#?}"
    );
    assert_eq!(
        distinct,
        used.iter().copied().collect::<HashSet<&str>>(),
        "prepared vs used"
    );
    assert_eq!(used.len(), 2 * 2 * (3 + 2 + 2) + 1);
}
