//! PostgreSQL advisory locks for [sqlx](https://docs.rs/sqlx) 0.9 with tokio, on the types you
//! already have: `PgPool`, `PgConnection`, `PoolConnection<Postgres>` and `Transaction<'_, Postgres>`.
//!
//! ```
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let url = advisory_harness::db().url();
//! use std::time::Duration;
//! use sqlx_advisory::prelude::*;
//!
//! let pool = sqlx::PgPool::connect(url).await?;
//!
//! // Session scope: the guard owns a pooled connection and releases the lock when dropped.
//! let guard = pool.advisory_lock("orders:42").await?;
//! assert!(pool.try_advisory_lock("orders:42").await?.is_none());
//! guard.release().await?;
//!
//! // On a connection (or PoolConnection, or Transaction): the guard borrows it.
//! let mut conn = pool.acquire().await?;
//! let g = conn.advisory_lock_timeout((7, 9), Duration::from_secs(1)).await?;
//! drop(g);
//!
//! // Transaction scope: released by COMMIT / ROLLBACK.
//! let mut tx = pool.begin().await?;
//! tx.xact_lock_shared(42_i64).await?;
//! tx.commit().await?;
//! # Ok(()) }
//! ```
//!
//! | | session scope ([`LockExt`]) | transaction scope ([`XactLockExt`]) |
//! |---|---|---|
//! | released by | the guard (`release()` or drop), or the session ending | COMMIT / ROLLBACK |
//! | exclusive, wait | `advisory_lock(key)` | `xact_lock(key)` |
//! | shared, wait | `advisory_lock_shared(key)` | `xact_lock_shared(key)` |
//! | never wait | `try_advisory_lock[_shared](key)` → `Option<guard>` | `try_xact_lock[_shared](key)` → `bool` |
//! | wait at most | `advisory_lock[_shared]_timeout(key, d)` | `xact_lock[_shared]_timeout(key, d)` |
//! | BEGIN + lock, one round trip | | `begin_with_xact_lock[_shared][_timeout](key[, d])` ([`BeginXactLockExt`]) → `Transaction` |
//!
//! Keys: `42_i64`, `(1, 2)` or a string (hashed with [`Key::name`]); see [`Key`].
//!
//! # Guarantees and their limits
//! * **A lock never outlives its guard on a pooled connection**, whether the guard is released,
//!   dropped, dropped during a panic, dropped outside any runtime, or the acquire future is
//!   cancelled: see [`PoolLockGuard`] and [`LockExt`]'s `# Cancel safety`.
//! * On a borrowed connection the guard's drop queues the unlock at once, behind whatever the
//!   connection still owes ([`LockGuard`]); a cancelled acquire queues its own undo. Session
//!   locks are refused inside a transaction ([`Error::AlreadyInTransaction`]).
//! * Timeouts are server-side (`lock_timeout`), one round trip, and leave the session's
//!   `lock_timeout` and the caller's transaction as they were.
//! * Transaction-scope calls outside a transaction return [`Error::NotInTransaction`].
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![deny(missing_debug_implementations)]

mod driver;
mod error;

mod begin;
mod guard;
mod inspect;
mod session;
mod xact;

mod pool;
mod sealed;

mod locker;

pub mod schema;

pub use advisory_common::{
    ErrorKind, Key, KeySpace, KeyValue, LABEL_MAX, Labeled, LockInfo, LockMode, TimeoutOutOfRange,
};
pub use advisory_common::{Namespace, ParsePresetError, Preset, migration_keys};
pub use error::Error;

pub use begin::BeginXactLockExt;
pub use guard::LockGuard;
pub use inspect::AdvisoryLocksExt;
pub use session::LockExt;
pub use xact::XactLockExt;

pub use pool::PoolLockGuard;

pub use locker::{Leadership, Lease, Locker, LockerOptions};

/// `use sqlx_advisory::prelude::*;` brings every extension trait into scope.
pub mod prelude {
    pub use crate::{AdvisoryLocksExt, BeginXactLockExt, LockExt, XactLockExt};
}
