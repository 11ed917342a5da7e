//! Lock table full → `Error::LockTableFull`, and the connection is usable afterwards. A separate
//! binary (exhausting the shared lock table would break tests running in parallel); the tests in
//! here are serialized by a mutex.

use std::sync::Mutex;

use advisory_tests::{db, unique_key};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_advisory::Error;
use diesel_advisory::prelude::*;

static SERIAL: Mutex<()> = Mutex::new(());

/// Fill the lock table from a helper session until the server runs out of shared memory.
fn fill_lock_table() -> PgConnection {
    let mut filler = PgConnection::establish(db().url()).unwrap();
    let ns = advisory_tests::unique_i32();
    filler
        .batch_execute(&format!(
            "DO $$ BEGIN FOR i IN 1..10000000 LOOP BEGIN PERFORM pg_advisory_lock({ns}, i); \
             EXCEPTION WHEN out_of_memory THEN EXIT; END; END LOOP; END $$"
        ))
        .unwrap();
    filler
}

#[test]
fn sync_lock_table_full_then_usable() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = PgConnection::establish(db().url()).unwrap();
    let mut filler = fill_lock_table();
    let key = unique_key();
    let r = c.advisory_lock(key).map(|g| g.key());
    assert!(
        matches!(r, Err(Error::LockTableFull { key: k, .. }) if k == key),
        "{r:?}"
    );
    let r = c.transaction::<(), Error, _>(|c| c.xact_lock(key));
    assert!(matches!(r, Err(Error::LockTableFull { .. })), "{r:?}");
    filler
        .batch_execute(advisory_common::sql::UNLOCK_ALL)
        .unwrap();
    c.advisory_lock(key).unwrap().release().unwrap();
}

#[test]
fn async_lock_table_full_then_usable() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(async_lock_table_full());
}

async fn async_lock_table_full() {
    use diesel_async::AsyncConnection;
    let mut c = diesel_async::AsyncPgConnection::establish(db().url())
        .await
        .unwrap();
    let mut filler = fill_lock_table();
    let key = unique_key();
    let r = c
        .try_advisory_lock_shared(key)
        .await
        .map(|g| g.map(|g| g.key()));
    assert!(matches!(r, Err(Error::LockTableFull { .. })), "{r:?}");
    filler
        .batch_execute(advisory_common::sql::UNLOCK_ALL)
        .unwrap();
    c.advisory_lock(key).await.unwrap().release().await.unwrap();
}
