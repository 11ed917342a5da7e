//! Hostile input and the cross-pool cancellation storm: every bad input gets a typed error a user
//! can act on, nothing panics, and the connection or pool keeps working afterwards.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use advisory_common::{ErrorKind, Key};
use advisory_tests::{assert_no_locks, db, granted, unique_key};
use diesel::prelude::*;
use diesel::sql_types::BigInt;

use super::support::*;

const SQLISH: [&str; 4] = [
    "'; DROP TABLE advisory_test_counters; --",
    "$1); SELECT pg_advisory_unlock_all(); --",
    "\\x00 ' \" ` ; -- /* */",
    "ключ 🔒 鍵 \u{202E}",
];

fn table_exists() -> bool {
    diesel::sql_query("SELECT value FROM advisory_test_counters LIMIT 1")
        .execute(&mut raw())
        .is_ok()
}

mod sqlx_hostile {
    use super::*;
    use sqlx::Connection;
    use sqlx::postgres::{PgConnection, PgPoolOptions};
    use sqlx_advisory::Error;
    use sqlx_advisory::prelude::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hostile_sqlx() {
        // unreachable server: a typed pool error, quickly
        let dead = PgPoolOptions::new()
            .acquire_timeout(Duration::from_secs(2))
            .connect_lazy("postgres://postgres@127.0.0.1:1/postgres")
            .unwrap();
        let e = dead
            .advisory_lock(1_i64)
            .await
            .expect_err("no server there");
        assert!(matches!(e, Error::Pool(_)), "{e:?}");
        summary(
            "hostile input",
            "sqlx unreachable",
            format_args!("error=\"{e}\""),
        );

        // a URL that is not one: sqlx refuses it before any lock call; through `?` it is our Database error
        let e: Error = PgPoolOptions::new()
            .connect_lazy("not a url")
            .unwrap_err()
            .into();
        assert!(matches!(e, Error::Database(_)), "{e:?}");
        summary(
            "hostile input",
            "sqlx bad url",
            format_args!("error=\"{e}\""),
        );

        // pool exhausted: checkout timeout is a typed error, the held guard is unaffected
        let p = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_millis(200))
            .connect(db().url())
            .await
            .unwrap();
        let key = unique_key();
        let g = p.advisory_lock(key).await.unwrap();
        let t = Instant::now();
        let e = p
            .advisory_lock(unique_key())
            .await
            .expect_err("pool is exhausted");
        assert!(matches!(e, Error::Pool(_)), "{e:?}");
        let waited = t.elapsed();
        g.release().await.unwrap();
        summary(
            "hostile input",
            "sqlx pool exhausted",
            format_args!("waited_ms={} error=\"{e}\"", waited.as_millis()),
        );

        // keys that look like SQL are hashed, never spliced
        for s in SQLISH
            .iter()
            .map(|s| s.to_string())
            .chain([String::from("x").repeat(1 << 20)])
        {
            let g = p.advisory_lock(&s).await.unwrap();
            assert_eq!(granted(Key::name(&s)).len(), 1);
            g.release().await.unwrap();
        }
        assert!(table_exists());

        // durations
        let mut c = PgConnection::connect(db().url()).await.unwrap();
        let key = unique_key();
        c.advisory_lock_timeout(key, Duration::ZERO)
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
        let e = c
            .advisory_lock_timeout(key, Duration::MAX)
            .await
            .expect_err("Duration::MAX cannot be a lock_timeout");
        assert!(matches!(e, Error::InvalidTimeout(_)), "{e:?}");
        let other = p.advisory_lock(key).await.unwrap();
        let e = c
            .advisory_lock_timeout(key, Duration::ZERO)
            .await
            .expect_err("held elsewhere");
        assert_eq!(e.kind(), Some(ErrorKind::Timeout), "{e:?}");
        other.release().await.unwrap();

        // transaction lock outside a transaction: refused, nothing taken
        let e = c.xact_lock(key).await.expect_err("not in a transaction");
        assert!(matches!(e, Error::NotInTransaction { .. }), "{e:?}");
        assert!(granted(key).is_empty());

        // releasing a lock the server says is not held
        let mut g = c.advisory_lock(key).await.unwrap();
        sqlx::query("SELECT pg_advisory_unlock_all()")
            .execute(&mut *g)
            .await
            .unwrap();
        let e = g
            .release()
            .await
            .expect_err("released behind the guard's back");
        assert!(matches!(e, Error::NotHeld { .. }), "{e:?}");
        summary(
            "hostile input",
            "sqlx not held",
            format_args!("error=\"{e}\""),
        );

        // everything still works
        c.advisory_lock(key).await.unwrap().release().await.unwrap();
        p.advisory_lock(key).await.unwrap().release().await.unwrap();
    }
}

mod diesel_hostile {
    use super::*;
    use diesel::r2d2::{ConnectionManager, Pool as R2d2Pool};
    use diesel_advisory::Error;
    use diesel_advisory::prelude::*;

    #[test]
    fn hostile_diesel_sync() {
        let dead = R2d2Pool::builder()
            .connection_timeout(Duration::from_secs(1))
            .build_unchecked(ConnectionManager::<PgConnection>::new(
                "postgres://postgres@127.0.0.1:1/postgres",
            ));
        let e = dead.advisory_lock(1_i64).expect_err("no server there");
        assert!(matches!(e, Error::Pool(_)), "{e:?}");
        summary(
            "hostile input",
            "diesel r2d2 unreachable",
            format_args!("error=\"{e}\""),
        );

        let Err(e) = PgConnection::establish("this is not a url") else {
            panic!("a bad url must not connect")
        };
        summary(
            "hostile input",
            "diesel bad url",
            format_args!("error=\"{e}\""),
        );

        let mut c = PgConnection::establish(db().url()).unwrap();
        for s in SQLISH
            .iter()
            .map(|s| s.to_string())
            .chain([String::from("x").repeat(1 << 20)])
        {
            let g = c.advisory_lock(&s).unwrap();
            assert_eq!(granted(Key::name(&s)).len(), 1);
            g.release().unwrap();
        }
        assert!(table_exists());

        let key = unique_key();
        c.advisory_lock_timeout(key, Duration::ZERO)
            .unwrap()
            .release()
            .unwrap();
        let e = c
            .advisory_lock_timeout(key, Duration::MAX)
            .expect_err("Duration::MAX");
        assert!(matches!(e, Error::InvalidTimeout(_)), "{e:?}");
        let e = c.xact_lock(key).expect_err("not in a transaction");
        assert!(matches!(e, Error::NotInTransaction { .. }), "{e:?}");
        assert!(granted(key).is_empty());

        let mut g = c.advisory_lock(key).unwrap();
        diesel::sql_query("SELECT pg_advisory_unlock_all()")
            .execute(&mut *g)
            .unwrap();
        let e = g.release().expect_err("released behind the guard's back");
        assert!(matches!(e, Error::NotHeld { .. }), "{e:?}");
        summary(
            "hostile input",
            "diesel not held",
            format_args!("error=\"{e}\""),
        );
        c.advisory_lock(key).unwrap().release().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hostile_diesel_async_pools() {
        use diesel_async::AsyncPgConnection;
        use diesel_async::pooled_connection::AsyncDieselConnectionManager;
        let url = "postgres://postgres@127.0.0.1:1/postgres";
        let b: super::super::diesel_side::Bb8 = bb8::Pool::builder()
            .connection_timeout(Duration::from_secs(1))
            .build_unchecked(AsyncDieselConnectionManager::<AsyncPgConnection>::new(url));
        let e = b.advisory_lock(1_i64).await.expect_err("no server there");
        assert!(matches!(e, Error::Pool(_)), "{e:?}");
        summary(
            "hostile input",
            "diesel bb8 unreachable",
            format_args!("error=\"{e}\""),
        );
        let d = super::super::diesel_side::Deadpool::builder(AsyncDieselConnectionManager::<
            AsyncPgConnection,
        >::new(url))
        .max_size(1)
        .build()
        .unwrap();
        let e = d.advisory_lock(1_i64).await.expect_err("no server there");
        assert!(matches!(e, Error::Pool(_)), "{e:?}");
        summary(
            "hostile input",
            "diesel deadpool unreachable",
            format_args!("error=\"{e}\""),
        );

        // bare AsyncPgConnection: durations, transaction lock outside a transaction, lock not held
        {
            use diesel_async::AsyncConnection;
            let mut c = AsyncPgConnection::establish(db().url()).await.unwrap();
            let key = unique_key();
            c.advisory_lock_timeout(key, Duration::ZERO)
                .await
                .unwrap()
                .release()
                .await
                .unwrap();
            let e = c
                .advisory_lock_timeout(key, Duration::MAX)
                .await
                .expect_err("Duration::MAX");
            assert!(matches!(e, Error::InvalidTimeout(_)), "{e:?}");
            let e = c.xact_lock(key).await.expect_err("not in a transaction");
            assert!(matches!(e, Error::NotInTransaction { .. }), "{e:?}");
            let mut g = c.advisory_lock(key).await.unwrap();
            diesel_async::RunQueryDsl::execute(
                diesel::sql_query("SELECT pg_advisory_unlock_all()"),
                &mut *g,
            )
            .await
            .unwrap();
            let e = g
                .release()
                .await
                .expect_err("released behind the guard's back");
            assert!(matches!(e, Error::NotHeld { .. }), "{e:?}");
            c.advisory_lock(key).await.unwrap().release().await.unwrap();
            summary(
                "hostile input",
                "diesel-async bare",
                format_args!("zero/huge/outside-tx/not-held all typed; last=\"{e}\""),
            );
        }

        // exhausted bb8 pool with a checkout timeout
        let b = bb8::Pool::builder()
            .max_size(1)
            .connection_timeout(Duration::from_millis(200))
            .build(AsyncDieselConnectionManager::<AsyncPgConnection>::new(
                db().url(),
            ))
            .await
            .unwrap();
        let g = b.advisory_lock(unique_key()).await.unwrap();
        let e = b.advisory_lock(unique_key()).await.expect_err("exhausted");
        assert!(matches!(e, Error::Pool(_)), "{e:?}");
        g.release().await.unwrap();
        b.advisory_lock(unique_key())
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
        summary(
            "hostile input",
            "diesel bb8 exhausted",
            format_args!("error=\"{e}\""),
        );
    }
}

/// 1,000 acquires with random deadlines on one contended key, spread over every async pool path,
/// while another session keeps taking and releasing the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_storm_all_async_pools() {
    let key = unique_key();
    let advisory_common::KeyValue::BigInt(k) = key.value() else {
        unreachable!()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let holder = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut c = raw();
            // a leaked lock must fail the test, not hang it
            diesel::sql_query("SET lock_timeout = '10s'")
                .execute(&mut c)
                .unwrap();
            let mut cycles = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if let Err(e) = diesel::sql_query("SELECT pg_advisory_lock($1)")
                    .bind::<BigInt, _>(k)
                    .execute(&mut c)
                {
                    panic!(
                        "the storm's holder could not get the key for 10 s (a lock leaked?): {e}; {:#?}",
                        advisory_tests::granted(key)
                    );
                }
                // load generation, not synchronisation: keep the key contended for a moment
                std::thread::sleep(Duration::from_millis(2));
                diesel::sql_query("SELECT pg_advisory_unlock($1)")
                    .bind::<BigInt, _>(k)
                    .execute(&mut c)
                    .unwrap();
                cycles += 1;
            }
            cycles
        })
    };
    let t = Instant::now();
    let (s, b, d) = tokio::join!(
        super::sqlx_side::storm_sqlx_pool(334, key),
        super::diesel_side::storm_diesel(333, key, false),
        super::diesel_side::storm_diesel(333, key, true),
    );
    stop.store(true, Ordering::Relaxed);
    let cycles = tokio::task::spawn_blocking(move || holder.join())
        .await
        .unwrap()
        .expect("the storm's holder failed");
    // cancelled waits on closed connections drain once the key is free; nothing may stay held
    tokio::task::spawn_blocking(move || assert_no_locks(&[key], Duration::from_secs(20)))
        .await
        .unwrap();
    let el = t.elapsed();
    for (path, (acq, canc), n) in [
        ("sqlx PgPool", s, 334),
        ("diesel-async bb8", b, 333),
        ("diesel-async deadpool", d, 333),
    ] {
        summary(
            "cancellation storm",
            path,
            format_args!(
                "attempts={n} acquired={acq} cancelled={canc} not_acquired={}",
                n - acq - canc
            ),
        );
    }
    summary(
        "cancellation storm",
        "all",
        format_args!(
            "holder_cycles={cycles} leaked_locks=0 ms={}",
            el.as_millis()
        ),
    );
    let _ = db();
}
