//! Round trips per call, counted by the loopback proxy for every path (a round trip = a client send
//! after a server reply), so the one-round-trip-per-call floor is measured, not assumed.

use std::time::Duration;

use diesel::{Connection, PgConnection};
use diesel_advisory::{
    AsyncBeginXactLockExt as _, AsyncLockExt as _, AsyncXactLockExt as _, BeginXactLockExt as _,
    LockExt as _, XactLockExt as _,
};
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use sqlx::Connection as _;
use sqlx_advisory::{BeginXactLockExt as _, LockExt as _, XactLockExt as _};

use crate::diesel_paths::{Bb8, floor_async, floor_sync};
use crate::sqlx_paths::{conn_floor, pool, pool_floor};

/// Round trips per call through the counting proxy.
pub async fn count_round_trips(
    purl: &str,
    counter: &crate::proxy::Counter,
    n: usize,
) -> Vec<(String, f64)> {
    let key = advisory_tests::unique_key();
    let p = pool(purl, 1).await;
    let mut conn = sqlx::PgConnection::connect(purl).await.unwrap();
    let mut out = Vec::new();
    macro_rules! count {
        ($name:expr, $body:expr) => {{
            for _ in 0..3 {
                $body;
            }
            let before = counter.get();
            for _ in 0..n {
                $body;
            }
            out.push((
                $name.to_string(),
                (counter.get() - before) as f64 / n as f64,
            ));
        }};
    }
    count!(
        "sqlx PgConnection advisory_lock+release",
        conn.advisory_lock(key)
            .await
            .unwrap()
            .release()
            .await
            .unwrap()
    );
    count!(
        "  raw lock+unlock (floor)",
        conn_floor(&mut conn, key, 1).await
    );
    count!(
        "sqlx PgConnection advisory_lock_timeout+release",
        conn.advisory_lock_timeout(key, Duration::from_secs(5))
            .await
            .unwrap()
            .release()
            .await
            .unwrap()
    );
    count!(
        "sqlx PgConnection try_advisory_lock+release",
        conn.try_advisory_lock(key)
            .await
            .unwrap()
            .unwrap()
            .release()
            .await
            .unwrap()
    );
    count!(
        "sqlx PgPool advisory_lock+release",
        p.advisory_lock(key).await.unwrap().release().await.unwrap()
    );
    count!(
        "  raw on pool checkout (floor)",
        pool_floor(&p, key, 1).await
    );
    count!("sqlx BEGIN+xact_lock_timeout+COMMIT", {
        let mut tx = conn.begin().await.unwrap();
        tx.xact_lock_timeout(key, Duration::from_secs(5))
            .await
            .unwrap();
        tx.commit().await.unwrap();
    });
    count!("sqlx BEGIN+xact_lock+COMMIT", {
        let mut tx = conn.begin().await.unwrap();
        tx.xact_lock(key).await.unwrap();
        tx.commit().await.unwrap();
    });
    count!("sqlx begin_with_xact_lock+COMMIT", {
        conn.begin_with_xact_lock(key)
            .await
            .unwrap()
            .commit()
            .await
            .unwrap();
    });
    count!("sqlx begin_with_xact_lock_timeout+COMMIT", {
        conn.begin_with_xact_lock_timeout(key, Duration::from_secs(5))
            .await
            .unwrap()
            .commit()
            .await
            .unwrap();
    });
    out
}

pub fn count_round_trips_sync(
    purl: &str,
    counter: &crate::proxy::Counter,
    n: usize,
) -> Vec<(String, f64)> {
    let key = advisory_tests::unique_key();
    let mut c = PgConnection::establish(purl).unwrap();
    let mut out = Vec::new();
    let mut count = |name: &str, f: &mut dyn FnMut()| {
        for _ in 0..3 {
            f();
        }
        let before = counter.get();
        for _ in 0..n {
            f();
        }
        out.push((name.to_string(), (counter.get() - before) as f64 / n as f64));
    };
    count("diesel sync advisory_lock+release", &mut || {
        c.advisory_lock(key).unwrap().release().unwrap()
    });
    count("  raw lock+unlock (floor)", &mut || {
        floor_sync(&mut c, key, 1);
    });
    count("diesel sync advisory_lock_timeout+release", &mut || {
        c.advisory_lock_timeout(key, Duration::from_secs(5))
            .unwrap()
            .release()
            .unwrap()
    });
    count("diesel sync transaction+xact_lock_timeout", &mut || {
        c.transaction::<_, diesel_advisory::Error, _>(|c| {
            c.xact_lock_timeout(key, Duration::from_secs(5))
        })
        .unwrap()
    });
    count("diesel sync transaction_with_xact_lock", &mut || {
        c.transaction_with_xact_lock::<_, diesel_advisory::Error, _>(key, |_| Ok(()))
            .unwrap()
    });
    count(
        "diesel sync transaction_with_xact_lock_timeout",
        &mut || {
            c.transaction_with_xact_lock_timeout::<_, diesel_advisory::Error, _>(
                key,
                Duration::from_secs(5),
                |_| Ok(()),
            )
            .unwrap()
        },
    );
    out
}

pub async fn count_round_trips_async(
    purl: &str,
    counter: &crate::proxy::Counter,
    n: usize,
) -> Vec<(String, f64)> {
    let key = advisory_tests::unique_key();
    let mut c = AsyncPgConnection::establish(purl).await.unwrap();
    let bb8: Bb8 = bb8::Pool::builder()
        .max_size(1)
        .build(AsyncDieselConnectionManager::new(purl))
        .await
        .unwrap();
    let mut out = Vec::new();
    macro_rules! count {
        ($name:expr, $body:expr) => {{
            for _ in 0..3 {
                $body;
            }
            let before = counter.get();
            for _ in 0..n {
                $body;
            }
            out.push((
                $name.to_string(),
                (counter.get() - before) as f64 / n as f64,
            ));
        }};
    }
    count!(
        "diesel-async advisory_lock+release",
        c.advisory_lock(key).await.unwrap().release().await.unwrap()
    );
    count!(
        "  raw lock+unlock (floor)",
        floor_async(&mut c, key, 1).await
    );
    count!(
        "diesel-async bb8 advisory_lock+release",
        bb8.advisory_lock(key)
            .await
            .unwrap()
            .release()
            .await
            .unwrap()
    );
    count!(
        "  raw on bb8 checkout (floor)",
        floor_async(&mut bb8.get().await.unwrap(), key, 1).await
    );
    count!(
        "diesel-async transaction+xact_lock",
        c.transaction::<_, diesel_advisory::Error, _>(async |c| c.xact_lock(key).await)
            .await
            .unwrap()
    );
    count!(
        "diesel-async transaction_with_xact_lock",
        c.transaction_with_xact_lock::<_, diesel_advisory::Error, _>(key, async |_| Ok(()))
            .await
            .unwrap()
    );
    out
}
