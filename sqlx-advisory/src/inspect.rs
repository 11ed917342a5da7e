//! Looking at the server's advisory locks: [`AdvisoryLocksExt`].

use std::future::Future;

use advisory_common::LockInfo;
use sqlx::{PgConnection, PgPool};

use crate::driver;
use crate::error::Error;
use crate::sealed::Sealed;

/// Every advisory lock in the current database, for debugging a stuck lock: kept apart from the
/// locking traits, it takes no lock and releases none.
///
/// Implemented for `&PgPool` (one checkout for the query) and `&mut PgConnection` (and so
/// `PoolConnection<Postgres>`, `Transaction<'_, Postgres>` and the guards, through deref).
pub trait AdvisoryLocksExt: Sized + Sealed {
    /// Every advisory lock in the current database, held or awaited, by any session, with who
    /// holds it (`pg_locks` + `pg_stat_activity`, see [`LockInfo`]).
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let pool = sqlx::PgPool::connect(advisory_harness::db().url()).await?;
    /// use sqlx_advisory::prelude::*;
    /// use sqlx_advisory::Key;
    /// let g = pool.advisory_lock((3, 14)).await?;
    /// assert!(pool.advisory_locks().await?.iter().any(|l| l.key == Key::Pair(3, 14) && l.granted));
    /// # drop(g); Ok(()) }
    /// ```
    fn advisory_locks(self) -> impl Future<Output = Result<Vec<LockInfo>, Error>> + Send;
}

impl AdvisoryLocksExt for &mut PgConnection {
    fn advisory_locks(self) -> impl Future<Output = Result<Vec<LockInfo>, Error>> + Send {
        driver::advisory_locks(self)
    }
}

impl AdvisoryLocksExt for &PgPool {
    async fn advisory_locks(self) -> Result<Vec<LockInfo>, Error> {
        let mut conn = self.acquire().await.map_err(Error::Pool)?;
        driver::advisory_locks(&mut conn).await
    }
}
