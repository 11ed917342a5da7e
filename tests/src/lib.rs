//! Test support for the advisory-lock crates: a throwaway PostgreSQL cluster, unique keys, and
//! `pg_locks` assertions that wait on an observable condition with a deadline (never a bare sleep).
//!
//! ```no_run
//! let db = advisory_tests::db();
//! println!("tests run against {}", db.url());
//! ```
//!
//! * `DATABASE_URL` set: that server is used (the project's migrations are applied to it, under an
//!   advisory lock so parallel test binaries do not race).
//! * unset: one cluster per test process is created with `initdb` from the installed server binaries
//!   (`PATH`, then `/usr/lib/postgresql/*/bin`), run as the `postgres` user when the tests run as
//!   root, on a free loopback port, with `fsync=off`. A watchdog process holds the read end of a pipe
//!   whose write end lives in the test process: when the process exits, however it exits (success,
//!   panic, abort, SIGKILL), the pipe closes and the watchdog stops the server and deletes its data
//!   directory. No `postgres` process outlives the run.
//! * neither possible: the first test that needs the database fails with a message naming what to
//!   install or set. Tests never skip silently.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod bouncer;
mod cluster;
pub mod events;
mod locks;

pub use cluster::{Db, db};
pub use locks::{
    advisory_locks, assert_no_locks, granted, unique_i32, unique_key, unique_name, wait_until,
    waiting,
};

/// The migrations every test database gets, in order (user migration, then the test schema).
pub const MIGRATIONS: [&str; 2] = [
    include_str!("../../migrations/2026-11-25-000000_advisory_locks/up.sql"),
    include_str!("../../migrations/2026-11-25-000001_advisory_test_schema/up.sql"),
];
