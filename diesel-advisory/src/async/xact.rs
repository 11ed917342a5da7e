//! Transaction-scope locks for diesel-async's `AsyncPgConnection`: [`AsyncXactLockExt`].

use std::time::Duration;

use advisory_common::Key;
use advisory_common::protocol::Request;
use advisory_common::sql::{Mode, Scope, Wait};
use diesel_async::AsyncPgConnection;

use super::driver::{lock, transaction_depth};
use crate::error::Error;

/// Transaction-scope advisory locks for diesel-async, for use inside
/// `conn.transaction(async |conn| ...)`.
///
/// Held until the outermost transaction commits or rolls back; no guard, no unlock. Each method
/// checks diesel-async's own transaction depth first and returns [`Error::NotInTransaction`]
/// without sending anything when no transaction is open.
///
/// To open a transaction that holds a lock from its start, in one round trip instead of two, use
/// [`transaction_with_xact_lock`](crate::AsyncBeginXactLockExt::transaction_with_xact_lock).
///
/// ```
/// use diesel_async::{AsyncConnection, AsyncPgConnection};
/// use diesel_advisory::prelude::*;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut conn = AsyncPgConnection::establish(advisory_harness::db().url()).await?;
///
/// conn.transaction::<_, diesel::result::Error, _>(async |conn| {
///     conn.xact_lock("orders:42").await?;
///     Ok(())
/// })
/// .await?;
/// # Ok(())
/// # }
/// ```
///
/// # Cancel safety
///
/// Dropping the future after the statement was sent: whatever the server grants belongs to the
/// transaction and is released when it ends; a waiting `xact_lock` keeps the connection busy until
/// granted. Dropping a diesel-async `transaction(..)` future leaves its transaction open, which
/// makes pools discard the connection (closing the session ends the transaction).
pub trait AsyncXactLockExt: Sized + crate::sealed::Sealed {
    advisory_common::__xact_methods! { decl async Error;
        /// Take `key` exclusively until the transaction ends, waiting as long as it takes.
        ///
        /// ```
        /// # use diesel_async::{AsyncConnection, AsyncPgConnection};
        /// # use diesel_advisory::prelude::*;
        /// # #[tokio::main(flavor = "current_thread")]
        /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// # let mut conn = AsyncPgConnection::establish(advisory_harness::db().url()).await?;
        /// conn.transaction(async |conn| conn.xact_lock(3_i64).await).await?;
        /// # Ok(())
        /// # }
        /// ```
        xact_lock;

        /// Take `key` in shared mode until the transaction ends, waiting as long as it takes.
        ///
        /// ```
        /// # use diesel_async::{AsyncConnection, AsyncPgConnection};
        /// # use diesel_advisory::prelude::*;
        /// # #[tokio::main(flavor = "current_thread")]
        /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// # let mut conn = AsyncPgConnection::establish(advisory_harness::db().url()).await?;
        /// conn.transaction(async |conn| conn.xact_lock_shared("config").await).await?;
        /// # Ok(())
        /// # }
        /// ```
        xact_lock_shared;

        /// Try to take `key` exclusively until the transaction ends: `false` if another session holds
        /// it.
        ///
        /// ```
        /// # use diesel_async::{AsyncConnection, AsyncPgConnection};
        /// # use diesel_advisory::prelude::*;
        /// # #[tokio::main(flavor = "current_thread")]
        /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// # let mut conn = AsyncPgConnection::establish(advisory_harness::db().url()).await?;
        /// assert!(conn.transaction(async |conn| conn.try_xact_lock((1, 2)).await).await?);
        /// # Ok(())
        /// # }
        /// ```
        try_xact_lock;

        /// Try to take `key` in shared mode until the transaction ends.
        ///
        /// ```
        /// # use diesel_async::{AsyncConnection, AsyncPgConnection};
        /// # use diesel_advisory::prelude::*;
        /// # #[tokio::main(flavor = "current_thread")]
        /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// # let mut conn = AsyncPgConnection::establish(advisory_harness::db().url()).await?;
        /// assert!(conn.transaction(async |conn| conn.try_xact_lock_shared((1, 3)).await).await?);
        /// # Ok(())
        /// # }
        /// ```
        try_xact_lock_shared;

        /// Take `key` exclusively until the transaction ends, waiting at most `timeout`; the attempt
        /// runs in a savepoint, so [`Error::Timeout`] leaves your transaction usable.
        ///
        /// ```
        /// # use std::time::Duration;
        /// # use diesel_async::{AsyncConnection, AsyncPgConnection};
        /// # use diesel_advisory::prelude::*;
        /// # #[tokio::main(flavor = "current_thread")]
        /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// # let mut conn = AsyncPgConnection::establish(advisory_harness::db().url()).await?;
        /// conn.transaction(async |conn| conn.xact_lock_timeout("k", Duration::from_secs(1)).await)
        ///     .await?;
        /// # Ok(())
        /// # }
        /// ```
        xact_lock_timeout;

        /// Take `key` in shared mode until the transaction ends, waiting at most `timeout`.
        ///
        /// ```
        /// # use std::time::Duration;
        /// # use diesel_async::{AsyncConnection, AsyncPgConnection};
        /// # use diesel_advisory::prelude::*;
        /// # #[tokio::main(flavor = "current_thread")]
        /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
        /// # let mut conn = AsyncPgConnection::establish(advisory_harness::db().url()).await?;
        /// conn.transaction(async |conn| conn.xact_lock_shared_timeout(8_i64, Duration::from_millis(100)).await)
        ///     .await?;
        /// # Ok(())
        /// # }
        /// ```
        xact_lock_shared_timeout;
    }
}

impl AsyncXactLockExt for &mut AsyncPgConnection {
    advisory_common::__xact_methods!(async xact, Error);
}

async fn xact(
    conn: &mut AsyncPgConnection,
    key: Key,
    mode: Mode,
    wait: Wait,
    timeout: Option<Duration>,
) -> Result<bool, Error> {
    if transaction_depth(conn)? == 0 {
        return Err(Error::NotInTransaction { key });
    }
    let req = Request::new(key, mode, wait, timeout)?;
    lock(conn, Scope::Transaction, &req)
        .await
        .map_err(|failed| failed.error)
}
