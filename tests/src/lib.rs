//! Test support for the advisory-lock crates: unique keys, and `pg_locks` assertions that wait on
//! an observable condition with a deadline (never a bare sleep), plus the adapters' captured
//! `tracing` events ([`events`]).
//!
//! The throwaway PostgreSQL lives in the small `advisory-harness` crate (no ORM dependencies, so
//! the adapters' doctests and examples can use it); it is re-exported here as [`db`] / [`Db`].
//!
//! ```no_run
//! let db = advisory_tests::db();
//! println!("tests run against {}", db.url());
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod events;
mod locks;

pub use advisory_harness::{Bouncer, Db, MIGRATIONS, db, example_url};
pub use locks::{
    advisory_locks, assert_no_locks, granted, unique_i32, unique_key, unique_name, wait_until,
    waiting,
};
