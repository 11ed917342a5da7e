//! Looking at the server's advisory locks from diesel's sync API: [`AdvisoryLocksExt`].

use advisory_common::LockInfo;
use diesel::PgConnection;

use super::driver::locks;
use crate::error::Error;
use crate::sealed::Sealed;

/// Every advisory lock in the current database, for debugging a stuck lock: kept apart from the
/// locking traits, it takes no lock and releases none.
///
/// Implemented for `&mut PgConnection` (and so the guards, through deref) and, with the `r2d2`
/// feature, for `&r2d2::Pool<ConnectionManager<PgConnection>>` (one checkout for the query).
pub trait AdvisoryLocksExt: Sized + Sealed {
    /// Every advisory lock in the current database (held or awaited, by any session), decoded
    /// into [`LockInfo`]: the first thing to look at when a lock is stuck.
    ///
    /// ```
    /// # use diesel::prelude::*;
    /// # use diesel_advisory::prelude::*;
    /// # let mut conn = PgConnection::establish(advisory_harness::db().url()).unwrap();
    /// let mut guard = conn.advisory_lock(-77_i64)?;
    /// let key = guard.key();
    /// assert!(guard.advisory_locks()?.iter().any(|l| l.key == key && l.granted));
    /// # Ok::<(), diesel_advisory::Error>(())
    /// ```
    fn advisory_locks(self) -> Result<Vec<LockInfo>, Error>;
}

impl AdvisoryLocksExt for &mut PgConnection {
    fn advisory_locks(self) -> Result<Vec<LockInfo>, Error> {
        locks(self)
    }
}
