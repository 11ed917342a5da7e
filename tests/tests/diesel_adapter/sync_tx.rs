//! diesel sync `PgConnection` and transactions: session locks refused inside them, guards kept
//! across them, and guards dropped inside them (by a panic, or after a transaction begun by hand).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use advisory_tests::{assert_no_locks, granted, unique_key};
use diesel::connection::{AnsiTransactionManager, SimpleConnection, TransactionManager};
use diesel::prelude::*;
use diesel_advisory::Error;
use diesel_advisory::prelude::*;

use super::sync_api::{holders, last_query};
use super::{ASYNC_RELEASE, conn, pid, r2d2_pool, wait_backend_gone};

fn depth(c: &mut PgConnection) -> Option<u32> {
    AnsiTransactionManager::transaction_manager_status_mut(c)
        .transaction_depth()
        .unwrap()
        .map(|d| d.get())
}

/// A panic inside a transaction opened on the guard: the unwinding drops the guard inside that
/// (still open, not aborted) transaction, and its unlock runs there. The caller's own rollback
/// afterwards still works: the drop-time unlock did not disturb it.
#[test]
fn panic_inside_transaction_leaves_no_lock_and_connection_usable() {
    let mut c = conn();
    let key = unique_key();
    let result = catch_unwind(AssertUnwindSafe(|| {
        let mut guard = c.advisory_lock(key).unwrap();
        guard.transaction::<(), Error, _>(|c| {
            diesel::sql_query("SELECT 1").execute(c)?;
            assert_eq!(granted(key).len(), 1);
            panic!("boom");
        })
    }));
    assert!(result.is_err());
    // released during the unwind, before anyone else looked
    assert!(granted(key).is_empty());
    // diesel does not catch panics: its transaction is still open, the connection works
    assert_eq!(depth(&mut c), Some(1));
    let one: i32 = diesel::select(1.into_sql::<diesel::sql_types::Integer>())
        .get_result(&mut c)
        .unwrap();
    assert_eq!(one, 1);
    AnsiTransactionManager::rollback_transaction(&mut c).unwrap();
    c.transaction::<_, Error, _>(|c| c.xact_lock(key)).unwrap();
    assert!(granted(key).is_empty());
}

#[test]
fn panic_with_r2d2_connection_leaves_no_lock() {
    let pool = r2d2_pool(1);
    let key = unique_key();
    let r = catch_unwind(AssertUnwindSafe(|| {
        let mut g = pool.advisory_lock(key).unwrap();
        g.transaction::<(), Error, _>(|_| panic!("boom"))
    }));
    assert!(r.is_err());
    assert!(granted(key).is_empty());
    let mut pc = pool.get().unwrap();
    assert!(pc.try_advisory_lock(key).unwrap().is_some());
}

/// with_advisory_lock#14: the guard outlives a transaction that aborts, and releasing works.
#[test]
fn release_after_aborted_transaction_works() {
    let mut c = conn();
    let key = unique_key();
    let mut guard = c.advisory_lock(key).unwrap();
    let failed = guard.transaction::<(), diesel::result::Error, _>(|c| {
        diesel::sql_query("SELECT 1/0").execute(c)?;
        Ok(())
    });
    assert!(failed.is_err());
    assert_eq!(
        granted(key).len(),
        1,
        "a session lock survives the rollback"
    );
    guard.release().unwrap();
    assert!(granted(key).is_empty());
    assert!(c.try_advisory_lock(key).unwrap().is_some());
}

/// A session lock is refused inside a transaction (its guard could not release it once the
/// transaction aborts): `AlreadyInTransaction` from every session method, nothing sent, the
/// transaction still usable. Outside, a guard survives a transaction rolled back on it.
#[test]
fn session_lock_inside_a_transaction_is_refused_and_nothing_is_sent() {
    let (mut c, mut observer) = (conn(), conn());
    let key = unique_key();
    let c_pid = pid(&mut c);
    let t = Duration::from_millis(5);
    c.transaction::<_, Error, _>(|c| {
        c.batch_execute("SELECT 'marker-before-session-lock'")?;
        for r in [
            c.advisory_lock(key).map(drop),
            c.advisory_lock_shared(key).map(drop),
            c.try_advisory_lock(key).map(drop),
            c.try_advisory_lock_shared(key).map(drop),
            c.advisory_lock_timeout(key, t).map(drop),
            c.advisory_lock_shared_timeout(key, t).map(drop),
        ] {
            assert!(
                matches!(r, Err(Error::AlreadyInTransaction { key: k }) if k == key),
                "{r:?}"
            );
        }
        assert_eq!(
            last_query(&mut observer, c_pid),
            "SELECT 'marker-before-session-lock'"
        );
        c.xact_lock(key)?;
        Ok(())
    })
    .unwrap();
    assert!(granted(key).is_empty());
    let mut guard = c.advisory_lock(key).unwrap();
    let r = guard.transaction::<(), Error, _>(|_| Err(Error::NotHeld { key }));
    assert!(r.is_err());
    assert_eq!(granted(key).len(), 1, "a session lock survives a rollback");
    guard.release().unwrap();
    assert!(granted(key).is_empty());
}

/// A guard dropped inside an already aborted transaction (a panic after a failed statement in a
/// transaction on the guard, or a transaction begun by hand): the unlock fails (25P02), so the
/// connection is marked broken: diesel refuses `transaction()` and the rollback, the server
/// transaction stays aborted (every statement fails), and the lock goes when the connection is
/// closed. With r2d2, the pool closes it at check-in.
#[test]
fn guard_dropped_inside_aborted_transaction_breaks_connection_loudly() {
    use diesel::result::Error::BrokenTransactionManager;
    let mut c = conn();
    let key = unique_key();
    let c_pid = pid(&mut c);
    let r = catch_unwind(AssertUnwindSafe(|| {
        let mut g = c.advisory_lock(key).unwrap();
        g.transaction::<(), Error, _>(|c| {
            assert!(diesel::sql_query("SELECT 1/0").execute(c).is_err());
            panic!("boom")
        })
    }));
    assert!(r.is_err());
    assert_eq!(holders(key), vec![c_pid], "still held by the session");
    let again = c.transaction::<(), diesel::result::Error, _>(|_| Ok(()));
    assert!(matches!(again, Err(BrokenTransactionManager)), "{again:?}");
    let rb = AnsiTransactionManager::rollback_transaction(&mut c);
    assert!(matches!(rb, Err(BrokenTransactionManager)), "{rb:?}");
    assert!(diesel::sql_query("SELECT 1").execute(&mut c).is_err());
    drop(c);
    assert_no_locks(&[key], ASYNC_RELEASE);

    // begun by hand, through r2d2: the broken connection is discarded at check-in
    let pool = r2d2_pool(1);
    let mut pc = pool.get().unwrap();
    let pc_pid = pid(&mut pc);
    {
        let mut g = pc.advisory_lock(key).unwrap();
        AnsiTransactionManager::begin_transaction(&mut *g).unwrap();
        assert!(diesel::sql_query("SELECT 1/0").execute(&mut *g).is_err());
    }
    drop(pc);
    wait_backend_gone(pc_pid, ASYNC_RELEASE);
    assert_no_locks(&[key], ASYNC_RELEASE);
    let mut fresh = pool.get().unwrap();
    assert_ne!(pid(&mut fresh), pc_pid);
    assert!(fresh.try_advisory_lock(key).unwrap().is_some());
}
