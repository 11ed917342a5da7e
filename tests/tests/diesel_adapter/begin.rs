//! `BeginXactLockExt` (sync `PgConnection`): a transaction that holds a lock from its start, the
//! lock and `BEGIN` sent as one batch. Helpers shared with `begin_async` and `begin_faults`.

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use advisory_common::sql::{self, Mode};
use advisory_common::{Key, LockInfo, LockMode};
use advisory_tests::{
    advisory_locks, assert_no_locks, granted, unique_i32, unique_key, wait_until,
};
use diesel::connection::{AnsiTransactionManager, SimpleConnection, TransactionManager};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Integer, Nullable, Text};
use diesel_advisory::Error;
use diesel_advisory::prelude::*;

use super::{ASYNC_RELEASE, conn, pid, r2d2_pool};

/// What `pg_stat_activity` says about one backend.
#[derive(QueryableByName, Debug)]
pub(crate) struct Activity {
    #[diesel(sql_type = Nullable<Text>)]
    pub(crate) state: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub(crate) query: Option<String>,
    /// `xact_start IS NOT NULL`: the backend is inside a transaction (idle ones are not).
    #[diesel(sql_type = Bool)]
    pub(crate) in_xact: bool,
}

/// `pg_stat_activity` of `pid`, read from a fresh observer session.
pub(crate) fn activity(pid: i32) -> Activity {
    diesel::sql_query(
        "SELECT state, query, xact_start IS NOT NULL AS in_xact FROM pg_stat_activity WHERE pid = $1",
    )
    .bind::<Integer, _>(pid)
    .get_result(&mut conn())
    .expect("pg_stat_activity")
}

/// The server says `pid` is idle outside any transaction (fails for `idle in transaction` and
/// `idle in transaction (aborted)`).
pub(crate) fn assert_idle_outside_transaction(pid: i32) {
    let a = activity(pid);
    assert_eq!(a.state.as_deref(), Some("idle"), "{a:?}");
    assert!(!a.in_xact, "{a:?}");
}

/// Every advisory lock `pid` holds or waits for.
pub(crate) fn locks_of(pid: i32) -> Vec<LockInfo> {
    advisory_locks()
        .into_iter()
        .filter(|l| l.pid == pid)
        .collect()
}

#[derive(QueryableByName)]
struct Setting {
    #[diesel(sql_type = Text)]
    lock_timeout: String,
}

fn lock_timeout(c: &mut PgConnection) -> String {
    diesel::sql_query(sql::SHOW_LOCK_TIMEOUT)
        .get_result::<Setting>(c)
        .unwrap()
        .lock_timeout
}

pub(crate) fn sync_depth(c: &mut PgConnection) -> Option<u32> {
    AnsiTransactionManager::transaction_manager_status_mut(c)
        .transaction_depth()
        .unwrap()
        .map(|d| d.get())
}

fn insert_row(c: &mut PgConnection, id: &str) -> QueryResult<usize> {
    diesel::sql_query("INSERT INTO advisory_test_counters (id, value) VALUES ($1, 1)")
        .bind::<Text, _>(id)
        .execute(c)
}

/// Is the row committed (seen from another session)?
pub(crate) fn row_exists(id: &str) -> bool {
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    diesel::sql_query("SELECT count(*) AS n FROM advisory_test_counters WHERE id = $1")
        .bind::<Text, _>(id)
        .get_result::<N>(&mut conn())
        .unwrap()
        .n
        == 1
}

fn holder_pids(key: Key) -> Vec<i32> {
    granted(key).into_iter().map(|l| l.pid).collect()
}

#[test]
fn lock_is_held_from_the_start_in_its_mode_and_released_by_commit_and_rollback() {
    let mut c = conn();
    let c_pid = pid(&mut c);
    let t = Duration::from_secs(5);
    for (mode, want) in [
        (Mode::Exclusive, LockMode::Exclusive),
        (Mode::Shared, LockMode::Shared),
    ] {
        for timed in [false, true] {
            let key = if timed {
                Key::Pair(unique_i32(), 3)
            } else {
                unique_key()
            };
            let id = format!("begin-sync-{key}-{want:?}-{timed}");
            let batch = sql::lock_then_begin(mode, key, timed.then_some(5000));
            let body = |c: &mut PgConnection| -> Result<i32, Error> {
                // nothing sent since the one batch, which left the session inside the transaction
                let a = activity(c_pid);
                assert_eq!(a.query.as_deref(), Some(batch.as_str()));
                assert_eq!(a.state.as_deref(), Some("idle in transaction"));
                let held = granted(key);
                assert_eq!(held.len(), 1, "{held:?}");
                assert_eq!((held[0].pid, held[0].mode), (c_pid, want));
                assert_eq!(sync_depth(c), Some(1));
                insert_row(c, &id)?;
                Ok(7)
            };
            let r = match (mode, timed) {
                (Mode::Exclusive, false) => c.transaction_with_xact_lock(key, body),
                (Mode::Shared, false) => c.transaction_with_xact_lock_shared(key, body),
                (Mode::Exclusive, true) => c.transaction_with_xact_lock_timeout(key, t, body),
                (Mode::Shared, true) => c.transaction_with_xact_lock_shared_timeout(key, t, body),
            };
            assert_eq!(r.unwrap(), 7);
            assert!(granted(key).is_empty(), "COMMIT released it");
            assert!(row_exists(&id), "the closure's write committed");
            assert_eq!(sync_depth(&mut c), None);
            assert_idle_outside_transaction(c_pid);
        }
    }
    // Err: rolled back, lock and writes gone
    let key = unique_key();
    let id = format!("begin-sync-rollback-{key}");
    let r = c.transaction_with_xact_lock::<(), diesel::result::Error, _>(key, |c| {
        insert_row(c, &id)?;
        assert_eq!(holder_pids(key), vec![c_pid]);
        Err(diesel::result::Error::RollbackTransaction)
    });
    assert!(matches!(r, Err(diesel::result::Error::RollbackTransaction)));
    assert!(granted(key).is_empty());
    assert!(!row_exists(&id), "the closure's write was rolled back");
    assert_eq!(sync_depth(&mut c), None);
    assert_idle_outside_transaction(c_pid);
    // an r2d2 checkout reaches it by deref
    let pool = r2d2_pool(1);
    let mut pc = pool.get().unwrap();
    let p = pid(&mut pc);
    let seen = pc.transaction_with_xact_lock(key, |_| Ok::<_, Error>(holder_pids(key)));
    assert_eq!(seen.unwrap(), vec![p]);
    assert!(granted(key).is_empty());
}

#[test]
fn second_transaction_waits_and_shared_ones_coexist() {
    for key in [unique_key(), Key::Pair(unique_i32(), -9)] {
        let (mut a, mut b) = (conn(), conn());
        let b_pid = pid(&mut b);
        let (entered, inside) = mpsc::channel();
        let (go, release) = mpsc::channel::<()>();
        let ta = thread::spawn(move || {
            a.transaction_with_xact_lock(key, |_| {
                entered.send(()).unwrap();
                release.recv().unwrap();
                Ok::<_, Error>(())
            })
        });
        inside.recv().unwrap();
        let tb = thread::spawn(move || {
            b.transaction_with_xact_lock(key, |_| Ok::<_, Error>(holder_pids(key)))
        });
        wait_until(&[key], ASYNC_RELEASE, "b waiting behind a", |rows| {
            rows.iter().any(|l| l.pid == b_pid && !l.granted)
        });
        go.send(()).unwrap();
        ta.join().unwrap().unwrap();
        assert_eq!(
            tb.join().unwrap().unwrap(),
            vec![b_pid],
            "b alone once a committed"
        );
        assert_no_locks(&[key], ASYNC_RELEASE);

        // shared + shared coexist; exclusive is kept out by a shared holder
        let (mut a, mut b, mut x) = (conn(), conn(), conn());
        let (entered, inside) = mpsc::channel();
        let (go, release) = mpsc::channel::<()>();
        let ta = thread::spawn(move || {
            a.transaction_with_xact_lock_shared(key, |_| {
                entered.send(()).unwrap();
                release.recv().unwrap();
                Ok::<_, Error>(())
            })
        });
        inside.recv().unwrap();
        let t = Duration::from_secs(5);
        let both = b
            .transaction_with_xact_lock_shared_timeout(key, t, |_| Ok::<_, Error>(granted(key)))
            .unwrap();
        assert_eq!(both.len(), 2);
        assert!(both.iter().all(|l| l.mode == LockMode::Shared));
        let r = x.transaction_with_xact_lock_timeout(key, Duration::from_millis(50), |_| {
            Ok::<_, Error>(())
        });
        assert!(
            matches!(r, Err(Error::Timeout { key: k, .. }) if k == key),
            "{r:?}"
        );
        go.send(()).unwrap();
        ta.join().unwrap().unwrap();
        assert_no_locks(&[key], ASYNC_RELEASE);
    }
}

#[test]
fn timed_out_begin_leaves_no_transaction_no_lock_and_lock_timeout_unchanged() {
    let (mut c, mut holder) = (conn(), conn());
    let key = unique_key();
    let c_pid = pid(&mut c);
    let held = holder.advisory_lock(key).unwrap();
    c.batch_execute("SET lock_timeout = '7s'").unwrap();
    let t = Duration::from_millis(200);
    for shared in [false, true] {
        let start = Instant::now();
        let body = |_: &mut PgConnection| -> Result<(), Error> { panic!("must not run") };
        let r = if shared {
            c.transaction_with_xact_lock_shared_timeout(key, t, body)
        } else {
            c.transaction_with_xact_lock_timeout(key, t, body)
        };
        let took = start.elapsed();
        match r {
            Err(Error::Timeout { key: k, timeout }) => assert_eq!((k, timeout), (key, t)),
            other => panic!("{other:?}"),
        }
        assert!(took >= t.mul_f32(0.9), "{took:?}");
        assert!(took < t + Duration::from_secs(2), "{took:?}");
        assert_eq!(sync_depth(&mut c), None, "diesel: no transaction");
        assert_idle_outside_transaction(c_pid);
        assert!(locks_of(c_pid).is_empty());
        assert_eq!(lock_timeout(&mut c), "7s");
    }
    // the connection works for the next one, which succeeds once the holder releases
    let waiter = thread::spawn(move || {
        let r = c.transaction_with_xact_lock_timeout(key, Duration::from_secs(20), |c| {
            Ok::<_, Error>((holder_pids(key), lock_timeout(c)))
        });
        (r, c)
    });
    wait_until(&[key], ASYNC_RELEASE, "c queued", |rows| {
        rows.iter().any(|l| l.pid == c_pid && !l.granted)
    });
    held.release().unwrap();
    let (r, mut c) = waiter.join().unwrap();
    assert_eq!(r.unwrap(), (vec![c_pid], "7s".to_owned()));
    assert_eq!(lock_timeout(&mut c), "7s");
    assert_no_locks(&[key], ASYNC_RELEASE);
}

#[test]
fn already_in_a_transaction_sends_nothing_and_the_outer_one_stays_usable() {
    let mut c = conn();
    let c_pid = pid(&mut c);
    let key = unique_key();
    let id = format!("begin-sync-outer-{key}");
    c.transaction::<_, Error, _>(|c| {
        c.batch_execute("SELECT 'marker-before-begin'")?;
        let t = Duration::from_millis(5);
        let never = |_: &mut PgConnection| -> Result<(), Error> { panic!("must not run") };
        for r in [
            c.transaction_with_xact_lock(key, never),
            c.transaction_with_xact_lock_shared(key, never),
            c.transaction_with_xact_lock_timeout(key, t, never),
            c.transaction_with_xact_lock_shared_timeout(key, t, never),
        ] {
            assert!(
                matches!(r, Err(Error::AlreadyInTransaction { key: k }) if k == key),
                "{r:?}"
            );
        }
        let r = c.transaction_with_xact_lock::<(), diesel::result::Error, _>(key, |_| Ok(()));
        let r = r.map_err(Error::from);
        assert!(
            matches!(r, Err(Error::AlreadyInTransaction { .. })),
            "{r:?}"
        );
        assert_eq!(
            activity(c_pid).query.as_deref(),
            Some("SELECT 'marker-before-begin'")
        );
        assert!(granted(key).is_empty());
        // the outer transaction carries on
        c.xact_lock(key)?;
        insert_row(c, &id)?;
        Ok(())
    })
    .unwrap();
    assert!(row_exists(&id));
    assert!(granted(key).is_empty());
    let e = Error::AlreadyInTransaction { key };
    assert_eq!(
        e.kind(),
        Some(advisory_common::ErrorKind::AlreadyInTransaction)
    );
    assert!(e.to_string().contains("already in a transaction"), "{e}");
}

#[test]
fn question_mark_works_with_both_error_types() {
    let (mut c, mut other) = (conn(), conn());
    let (key, busy) = (unique_key(), unique_key());
    let _held = other.advisory_lock(busy).unwrap();
    let t = Duration::from_millis(20);
    // E = diesel::result::Error: our errors travel boxed and come back with Error::from
    let r = c.transaction_with_xact_lock::<(), diesel::result::Error, _>(key, |c| {
        c.xact_lock_timeout(busy, t)?;
        Ok(())
    });
    let r = r.map_err(Error::from);
    assert!(
        matches!(r, Err(Error::Timeout { key: k, .. }) if k == busy),
        "{r:?}"
    );
    let r =
        c.transaction_with_xact_lock_timeout::<(), diesel::result::Error, _>(busy, t, |_| Ok(()));
    assert!(matches!(r.map_err(Error::from), Err(Error::Timeout { key: k, .. }) if k == busy));
    // E = diesel_advisory::Error: diesel query errors convert
    let r = c.transaction_with_xact_lock::<(), Error, _>(key, |c| {
        diesel::sql_query("SELECT 1/0").execute(c)?;
        Ok(())
    });
    assert!(matches!(r, Err(Error::Database(_))), "{r:?}");
    let r = c.transaction_with_xact_lock::<(), Error, _>(key, |c| c.xact_lock_timeout(busy, t));
    assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
    assert!(granted(key).is_empty());
    assert_eq!(sync_depth(&mut c), None);
    // nested diesel transactions inside are savepoints of this one
    let id = format!("begin-sync-savepoint-{key}");
    let n = c
        .transaction_with_xact_lock::<_, Error, _>(key, |c| {
            let inner = c.transaction::<(), Error, _>(|c| {
                insert_row(c, &id)?;
                Err(Error::NotHeld { key })
            });
            assert!(inner.is_err());
            assert_eq!(
                holder_pids(key).len(),
                1,
                "the savepoint's rollback kept the lock"
            );
            Ok(sync_depth(c))
        })
        .unwrap();
    assert_eq!(n, Some(1));
    assert!(!row_exists(&id));
}
