//! Looking at the server's advisory locks from diesel-async: [`AsyncAdvisoryLocksExt`].

use std::future::Future;

use advisory_common::LockInfo;
use diesel_async::AsyncPgConnection;

use super::driver::locks;
use crate::error::Error;
use crate::sealed::Sealed;

/// Every advisory lock in the current database, for debugging a stuck lock: kept apart from the
/// locking traits, it takes no lock and releases none.
///
/// Implemented for `&mut AsyncPgConnection` (and so the guards, through deref) and, with the `bb8`
/// / `deadpool` features, for their pools (one checkout for the query).
pub trait AsyncAdvisoryLocksExt: Sized + Sealed {
    /// Every advisory lock in the current database (held or awaited, by any session).
    ///
    /// ```
    /// # use diesel_async::{AsyncConnection, AsyncPgConnection};
    /// # use diesel_advisory::prelude::*;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let mut conn = AsyncPgConnection::establish(advisory_harness::db().url()).await?;
    /// let mut guard = conn.advisory_lock(-78_i64).await?;
    /// let key = guard.key();
    /// assert!(guard.advisory_locks().await?.iter().any(|l| l.key == key));
    /// # Ok(())
    /// # }
    /// ```
    fn advisory_locks(self) -> impl Future<Output = Result<Vec<LockInfo>, Error>> + Send;
}

impl AsyncAdvisoryLocksExt for &mut AsyncPgConnection {
    fn advisory_locks(self) -> impl Future<Output = Result<Vec<LockInfo>, Error>> + Send {
        locks(self)
    }
}
