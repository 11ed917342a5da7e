//! Looking at `pg_locks` from an independent observer session.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use advisory_common::{Key, LockInfo, sql};
use diesel::prelude::*;
use diesel::sql_types::{Bool, Double, Int4, Int8, Nullable, Text};

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = Int8)]
    classid: i64,
    #[diesel(sql_type = Int8)]
    objid: i64,
    #[diesel(sql_type = Int4)]
    objsubid: i32,
    #[diesel(sql_type = Text)]
    mode: String,
    #[diesel(sql_type = Bool)]
    granted: bool,
    #[diesel(sql_type = Int4)]
    pid: i32,
    #[diesel(sql_type = Nullable<Text>)]
    application_name: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    usename: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    state: Option<String>,
    #[diesel(sql_type = Nullable<Double>)]
    wait_seconds: Option<f64>,
    #[diesel(sql_type = Nullable<Double>)]
    xact_seconds: Option<f64>,
    #[diesel(sql_type = Nullable<Text>)]
    query: Option<String>,
}

fn observer() -> &'static Mutex<Option<PgConnection>> {
    static OBSERVER: OnceLock<Mutex<Option<PgConnection>>> = OnceLock::new();
    OBSERVER.get_or_init(|| Mutex::new(None))
}

/// Every advisory lock in the test database (held or awaited, by anyone), as the server reports it
/// through [`sql::LOCKS_SQL`], read on a dedicated observer connection.
pub fn advisory_locks() -> Vec<LockInfo> {
    let mut guard = observer().lock().unwrap_or_else(|p| p.into_inner());
    for attempt in 0..2 {
        if guard.is_none() {
            let url = crate::db().url_with_app("advisory-observer");
            *guard = Some(
                PgConnection::establish(&url)
                    .unwrap_or_else(|e| panic!("observer cannot connect: {e}")),
            );
        }
        match diesel::sql_query(sql::LOCKS_SQL).load::<Row>(guard.as_mut().unwrap()) {
            Ok(rows) => {
                return rows
                    .into_iter()
                    .filter_map(|r| {
                        LockInfo::from_row(
                            r.classid,
                            r.objid,
                            r.objsubid,
                            &r.mode,
                            r.granted,
                            r.pid,
                            r.application_name,
                            r.usename,
                            r.state,
                            r.wait_seconds,
                            r.xact_seconds,
                            r.query,
                        )
                    })
                    .collect();
            }
            // the server may have been restarted by a fault test: reconnect once
            Err(e) if attempt == 0 => {
                let _ = e;
                *guard = None;
            }
            Err(e) => panic!("observer cannot read pg_locks: {e}"),
        }
    }
    unreachable!()
}

/// Granted holds of `key` (one entry per holding session and mode).
pub fn granted(key: impl Into<Key>) -> Vec<LockInfo> {
    let key = key.into();
    advisory_locks()
        .into_iter()
        .filter(|l| l.key == key && l.granted)
        .collect()
}

/// Sessions waiting for `key`.
pub fn waiting(key: impl Into<Key>) -> Vec<LockInfo> {
    let key = key.into();
    advisory_locks()
        .into_iter()
        .filter(|l| l.key == key && !l.granted)
        .collect()
}

/// Poll `pg_locks` until `cond` holds for the advisory locks on `keys`, or panic after `within`
/// with `what` and the rows last seen. Returns the rows that satisfied the condition.
pub fn wait_until(
    keys: &[Key],
    within: Duration,
    what: &str,
    mut cond: impl FnMut(&[LockInfo]) -> bool,
) -> Vec<LockInfo> {
    let deadline = Instant::now() + within;
    loop {
        let rows: Vec<LockInfo> = advisory_locks()
            .into_iter()
            .filter(|l| keys.contains(&l.key))
            .collect();
        if cond(&rows) {
            return rows;
        }
        if Instant::now() >= deadline {
            panic!("pg_locks did not show {what} within {within:?}; last seen: {rows:#?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Assert that no session holds or waits for any of `keys`, allowing `within` for releases that
/// travel asynchronously (a dropped pool guard's unlock, a closed connection's backend exit).
pub fn assert_no_locks(keys: &[Key], within: Duration) {
    wait_until(keys, within, "no advisory locks on these keys", |rows| {
        rows.is_empty()
    });
}

/// A key no other test uses (random, bigint space).
pub fn unique_key() -> Key {
    Key::BigInt(rand::random::<i64>())
}

/// A random `i32`, for pair keys no other test uses.
pub fn unique_i32() -> i32 {
    rand::random::<i32>()
}

/// A key name no other test uses.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}:{:016x}", rand::random::<u64>())
}
