//! PostgreSQL advisory locks for [diesel](https://diesel.rs) 2.3 (sync) and
//! [diesel-async](https://docs.rs/diesel-async) 0.9: session locks with guards, transaction locks
//! inside `conn.transaction(..)`, and guards that own an r2d2 / bb8 / deadpool checkout.
//!
//! The mirror image of `sqlx-advisory`: same method names, same guard methods, same error
//! variants, same keys (a lock taken here for `"orders:42"` excludes one taken there).
//!
//! ```
//! # #[cfg(feature = "sync")] fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use diesel::prelude::*;
//! use diesel_advisory::prelude::*;
//! # let url = advisory_harness::db().url();
//!
//! let mut conn = PgConnection::establish(url)?;
//! {
//!     let mut guard = conn.advisory_lock("orders:42")?;   // session lock, guard borrows conn
//!     assert!(guard.is_held()?);
//! }                                                        // dropped: unlocked right here
//! conn.transaction::<_, diesel::result::Error, _>(|conn| {
//!     conn.xact_lock("orders:42")?;                        // released by COMMIT / ROLLBACK
//!     Ok(())
//! })?;
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "sync"))] fn main() {}
//! ```
//!
//! | | session scope ([`LockExt`], [`AsyncLockExt`]) | transaction scope ([`XactLockExt`], [`AsyncXactLockExt`]) |
//! |---|---|---|
//! | released by | the guard (`release()` or drop), or the session ending | COMMIT / ROLLBACK |
//! | exclusive, wait | `advisory_lock(key)` | `xact_lock(key)` |
//! | shared, wait | `advisory_lock_shared(key)` | `xact_lock_shared(key)` |
//! | never wait | `try_advisory_lock[_shared](key)` → `Option<guard>` | `try_xact_lock[_shared](key)` → `bool` |
//! | wait at most | `advisory_lock[_shared]_timeout(key, d)` | `xact_lock[_shared]_timeout(key, d)` |
//! | BEGIN + lock, one round trip | | `transaction_with_xact_lock[_shared][_timeout](key[, d], f)` ([`BeginXactLockExt`], [`AsyncBeginXactLockExt`]) |
//!
//! Keys are anything `Into<`[`Key`]`>`: `42_i64`, `(1, 2)`, or a string (hashed with
//! [`Key::name`]).
//!
//! # What a released or dropped guard leaves behind
//!
//! On every connection kind, once a guard is released or dropped, in whatever state its
//! connection is, the lock is gone before the connection's next statement is answered or before
//! the connection is handed to a pool's next user; or else the connection is closed, or marked
//! broken (diesel's transaction manager `InError`: pools discard it, `transaction()` fails). A
//! drop-time unlock never answers one of your statements, and never takes away another guard's
//! hold of the same key (advisory locks are re-entrant: two guards on one key and connection are
//! two holds). Session locks are taken outside transactions only
//! ([`Error::AlreadyInTransaction`], nothing sent).
//!
//! | connection | guard dropped | dropped inside an aborted transaction | acquire / release cancelled |
//! |---|---|---|---|
//! | `&mut PgConnection` | unlocks in `Drop` | marked broken: the lock stays until the connection is closed | sync: nothing to cancel |
//! | r2d2 | unlocks in `Drop`, then returns the connection | marked broken, r2d2 discards it | sync |
//! | `&mut AsyncPgConnection` | unlock queued, runs before your next statement | marked broken whenever diesel-async reports a transaction open (it cannot tell aborted) | the matching unlock is queued, exactly once |
//! | bb8, deadpool | a task unlocks, then returns it (discarded if that fails, or if the task never runs: runtime gone) | discarded | the checkout is discarded |
//!
//! The details are on each guard (`LockGuard`, `R2d2LockGuard`, `AsyncLockGuard`,
//! `Bb8LockGuard`, `DeadpoolLockGuard`) and in `AsyncLockExt`'s `# Cancel safety`.
//!
//! # Features
//!
//! | feature | default | brings in |
//! |---|---|---|
//! | `sync` | yes | [`LockExt`] / [`XactLockExt`] / [`BeginXactLockExt`] for diesel's `PgConnection` (links **libpq**) |
//! | `r2d2` | | [`R2d2LockGuard`] (implies `sync`) |
//! | `async` | | [`AsyncLockExt`] / [`AsyncXactLockExt`] / [`AsyncBeginXactLockExt`] for `AsyncPgConnection` (tokio-postgres) |
//! | `bb8` | | `Bb8LockGuard` (implies `async`) |
//! | `deadpool` | | `DeadpoolLockGuard` (implies `async`) |
//!
//! A diesel-async user never links libpq:
//! `diesel-advisory = { version = "0.1", default-features = false, features = ["async", "bb8"] }`
//! builds without `pq-sys`: `cargo tree -p diesel-advisory --no-default-features --features
//! async,bb8 -e no-dev | grep pq-sys` prints nothing (only this crate's own dev-dependencies, used
//! by its tests, link libpq; dependents never build those).
//!
//! # Statements
//!
//! Every statement text comes from [`advisory_common::sql`]; keys and timeouts are bind
//! parameters. The lock, unlock and `pg_locks` statements are run through a diesel query type that
//! diesel's statement cache (shared by diesel and diesel-async) caches by SQL text, so each is
//! parsed once per connection. Timed attempts inside a transaction use one simple-protocol
//! savepoint batch so a timeout does not abort your transaction, and `transaction_with_xact_lock`
//! opens its transaction with one simple-protocol "lock; `BEGIN`" batch.
//!
//! # Errors
//!
//! diesel does not expose an error's SQLSTATE, so lock failures (`Timeout`, `Deadlock`,
//! `LockTableFull`, `ConnectionLost`) are recognised by the server's primary message. If the
//! server's `lc_messages` selects a translated language, they arrive as [`Error::Database`].
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![deny(missing_debug_implementations)]
// With neither `sync` nor `async` only the error type is left.
#![cfg_attr(not(any(feature = "sync", feature = "async")), allow(dead_code))]

pub mod schema;

mod error;
mod sealed;
mod stmt;

#[cfg(feature = "sync")]
mod sync;

#[cfg(feature = "async")]
mod r#async;

#[cfg(any(feature = "r2d2", feature = "bb8", feature = "deadpool"))]
mod pool;

#[cfg(feature = "migrations")]
mod migrations;

#[cfg(feature = "locker")]
mod locker;

pub use advisory_common::{
    ErrorKind, Key, KeySpace, KeyValue, LABEL_MAX, Labeled, LockInfo, LockMode, TimeoutOutOfRange,
};
pub use advisory_common::{Namespace, ParsePresetError, Preset, migration_keys};
pub use error::{Error, PoolError};

#[cfg(feature = "sync")]
pub use sync::{
    begin::BeginXactLockExt, guard::LockGuard, inspect::AdvisoryLocksExt, session::LockExt,
    xact::XactLockExt,
};

#[cfg(feature = "async")]
pub use r#async::{
    begin::AsyncBeginXactLockExt, guard::AsyncLockGuard, inspect::AsyncAdvisoryLocksExt,
    session::AsyncLockExt, xact::AsyncXactLockExt,
};

#[cfg(feature = "bb8")]
pub use pool::bb8::Bb8LockGuard;
#[cfg(any(feature = "bb8", feature = "deadpool"))]
pub use pool::checkout::AsyncPoolLockGuard;
#[cfg(feature = "deadpool")]
pub use pool::deadpool::DeadpoolLockGuard;
#[cfg(feature = "r2d2")]
pub use pool::r2d2::R2d2LockGuard;

#[cfg(feature = "migrations")]
pub use migrations::{MigrationError, MigrationLock};

#[cfg(feature = "locker")]
pub use locker::{Leadership, Lease, Locker, LockerOptions};

/// `use diesel_advisory::prelude::*;` brings every extension trait into scope.
pub mod prelude {
    #[cfg(feature = "sync")]
    pub use crate::{AdvisoryLocksExt, BeginXactLockExt, LockExt, XactLockExt};
    #[cfg(feature = "async")]
    pub use crate::{AsyncAdvisoryLocksExt, AsyncBeginXactLockExt, AsyncLockExt, AsyncXactLockExt};
}
