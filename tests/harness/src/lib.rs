//! A throwaway PostgreSQL for the advisory-lock crates' tests, doctests and examples. Standard
//! library only, so that `cargo run -p sqlx-advisory --example ...` builds sqlx and nothing else.
//!
//! ```no_run
//! let db = advisory_harness::db();
//! println!("tests run against {}", db.url());
//! ```
//!
//! * `DATABASE_URL` set: that server is used (the project's migrations are applied to it, under an
//!   advisory lock so parallel test binaries do not race).
//! * unset: one cluster per process is created with `initdb` from the installed server binaries
//!   (`PATH`, then `/usr/lib/postgresql/*/bin`), run as the `postgres` user when running as root,
//!   on a free loopback port, with `fsync=off`. A watchdog process holds the read end of a pipe
//!   whose write end lives in this process: when the process exits, however it exits (success,
//!   panic, abort, SIGKILL), the pipe closes and the watchdog stops the server and deletes its data
//!   directory. No `postgres` process outlives the run.
//! * neither possible: the first caller fails with a message naming what to install or set.
//!   Nothing skips silently.
//!
//! Examples call [`example_url`] instead: `DATABASE_URL` untouched when set (no migrations are
//! applied to a user's database), a throwaway cluster otherwise.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod bouncer;
mod cluster;

pub use bouncer::Bouncer;
pub use cluster::{Db, db};

/// The migrations every test database gets, in order (user migration, then the test schema).
pub const MIGRATIONS: [&str; 2] = [
    include_str!("../../../common/sql/install.sql"),
    include_str!("../../../migrations/2026-11-25-000001_advisory_test_schema/up.sql"),
];

/// The database an example runs against: `DATABASE_URL` as given when it is set and not empty
/// (nothing is created in it by this function), otherwise a throwaway cluster started for this
/// process and stopped when it exits.
pub fn example_url() -> String {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => url,
        _ => db().url().to_owned(),
    }
}
