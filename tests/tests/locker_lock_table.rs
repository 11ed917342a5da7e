//! The locker against a full lock table: a binary of its own (a full lock table would break
//! parallel tests).

use std::time::Duration;

use advisory_tests::unique_key;
use sqlx::postgres::PgConnectOptions;
use sqlx_advisory::{Error, Locker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_lock_table_is_a_typed_error_and_the_locker_stays_usable() {
    // max_locks_per_transaction * (max_connections + max_prepared_transactions) bounds the table;
    // take far more than it holds
    let locker = Locker::with_options(
        advisory_tests::db()
            .url()
            .parse::<PgConnectOptions>()
            .unwrap(),
        Default::default(),
    );
    let ks: Vec<_> = (0..200_000).map(|_| unique_key()).collect();
    let leases = locker.lock_all(ks.clone()).await;
    match leases {
        Err(Error::LockTableFull { .. }) => {}
        Ok(l) => {
            eprintln!(
                "the server holds {} locks: lock table larger than this test",
                l.len()
            );
            return;
        }
        Err(e) => panic!("{e:?}"),
    }
    // all or nothing, and usable afterwards
    let k = unique_key();
    let lease = locker.lock(k).await.unwrap();
    lease.release().await.unwrap();
    let first = ks[..100].to_vec();
    tokio::task::spawn_blocking(move || {
        advisory_tests::assert_no_locks(&first, Duration::from_secs(10));
    })
    .await
    .unwrap();
}
