//! Server restart while guards are held on every path: nothing panics, held guards report the loss,
//! pools reconnect, fresh locks work. A binary of its own: a restart cuts every session.

use std::io::Write as _;
use std::time::Duration;

use advisory_common::ErrorKind;
use advisory_tests::{db, unique_key};
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool as R2d2Pool};
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use sqlx::Connection;
use sqlx::postgres::PgPoolOptions;

fn summary(path: &str, figures: String) {
    let _ = writeln!(
        std::io::stderr(),
        "SUMMARY {:<22} {path:<26} {figures}",
        "server restart"
    );
}

fn lost(kind: Option<ErrorKind>) -> bool {
    kind == Some(ErrorKind::ConnectionLost)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_with_guards_held_everywhere() {
    let d = db();
    if !d.is_throwaway() {
        panic!(
            "the restart scenario needs the throwaway cluster: unset DATABASE_URL for this test"
        );
    }
    let url = d.url();
    // sqlx
    let sp = PgPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await
        .unwrap();
    let mut sc = sqlx::PgConnection::connect(url).await.unwrap();
    // diesel
    let rp = R2d2Pool::builder()
        .max_size(2)
        .build(ConnectionManager::<PgConnection>::new(url))
        .unwrap();
    let mut dc = <PgConnection as diesel::Connection>::establish(url).unwrap();
    let mut ac = AsyncPgConnection::establish(url).await.unwrap();
    let bp: diesel_async::pooled_connection::bb8::Pool<AsyncPgConnection> = bb8::Pool::builder()
        .max_size(2)
        .build(AsyncDieselConnectionManager::new(url))
        .await
        .unwrap();
    let dp = diesel_async::pooled_connection::deadpool::Pool::<AsyncPgConnection>::builder(
        AsyncDieselConnectionManager::new(url),
    )
    .max_size(2)
    .build()
    .unwrap();

    let keys: Vec<_> = (0..7).map(|_| unique_key()).collect();
    {
        use sqlx_advisory::prelude::*;
        let mut g1 = sp.advisory_lock(keys[0]).await.unwrap();
        let mut g2 = sc.advisory_lock(keys[1]).await.unwrap();
        {
            use diesel_advisory::prelude::*;
            let mut g3 = rp.advisory_lock(keys[2]).unwrap();
            let mut g4 = dc.advisory_lock(keys[3]).unwrap();
            let mut g5 = ac.advisory_lock(keys[4]).await.unwrap();
            let mut g6 = bp.advisory_lock(keys[5]).await.unwrap();
            let mut g7 = dp.advisory_lock(keys[6]).await.unwrap();
            assert_eq!(
                advisory_tests::advisory_locks()
                    .iter()
                    .filter(|l| keys.contains(&l.key))
                    .count(),
                7
            );

            tokio::task::spawn_blocking(|| db().restart().unwrap())
                .await
                .unwrap();

            macro_rules! check {
                ($path:literal, $held:expr, $rel:expr) => {{
                    let held = $held;
                    assert!(!matches!(held, Ok(true)), "{}: {held:?}", $path);
                    let held = held.map_err(|e| e.kind());
                    let rel =
                        $rel.expect_err(concat!($path, ": release after a restart must fail"));
                    assert!(lost(rel.kind()), "{}: {rel:?}", $path);
                    summary($path, format!("is_held={held:?} release=\"{rel}\""));
                }};
            }
            check!("diesel r2d2", g3.is_held(), g3.release());
            check!("diesel sync", g4.is_held(), g4.release());
            check!("diesel-async bare", g5.is_held().await, g5.release().await);
            check!("diesel-async bb8", g6.is_held().await, g6.release().await);
            check!(
                "diesel-async deadpool",
                g7.is_held().await,
                g7.release().await
            );
        }
        macro_rules! check {
            ($path:literal, $held:expr, $rel:expr) => {{
                let held = $held;
                assert!(!matches!(held, Ok(true)), "{}: {held:?}", $path);
                let held = held.map_err(|e| e.kind());
                let rel = $rel.expect_err(concat!($path, ": release after a restart must fail"));
                assert!(lost(rel.kind()), "{}: {rel:?}", $path);
                summary($path, format!("is_held={held:?} release=\"{rel}\""));
            }};
        }
        check!("sqlx PgPool", g1.is_held().await, g1.release().await);
        check!("sqlx PgConnection", g2.is_held().await, g2.release().await);
    }
    // pools reconnect; fresh locks work on every pool
    {
        use sqlx_advisory::prelude::*;
        sp.advisory_lock(unique_key())
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
    }
    {
        use diesel_advisory::prelude::*;
        rp.advisory_lock(unique_key()).unwrap().release().unwrap();
        bp.advisory_lock(unique_key())
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
        dp.advisory_lock(unique_key())
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
    }
    advisory_tests::assert_no_locks(&keys, Duration::from_secs(5));
    summary(
        "pools",
        "reconnected=sqlx,r2d2,bb8,deadpool fresh_locks=ok".into(),
    );
}
