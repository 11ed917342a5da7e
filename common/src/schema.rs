//! The SQL this project ships to users: the `advisory_key(text)` function (the plain-SQL twin of
//! [`Key::name`](crate::Key::name)) and the `advisory_locks` view (every advisory lock in the
//! database, decoded back into keys: the first thing to look at when a lock is stuck).
//!
//! The same text is `migrations/2026-11-25-000000_advisory_locks/{up,down}.sql` in the
//! repository (diesel's migration layout; plain SQL for sqlx-cli or psql). Each adapter has a
//! `schema::install` / `schema::uninstall` that runs it on a connection, for applications that
//! set up their database from Rust. Both are idempotent (`CREATE OR REPLACE`, `DROP ... IF
//! EXISTS`) and create the objects in the first schema of the session's `search_path`.
//!
//! ```
//! use advisory_common::schema;
//! assert!(schema::INSTALL.contains("CREATE OR REPLACE FUNCTION advisory_key(name text)"));
//! assert!(schema::UNINSTALL.contains("DROP VIEW IF EXISTS advisory_locks"));
//! ```

/// Creates (or replaces) `advisory_key(text) returns bigint` and the view `advisory_locks`.
/// Several statements: run it as a simple-protocol batch (sqlx `raw_sql`, diesel
/// `batch_execute`, psql).
pub const INSTALL: &str = include_str!("../sql/install.sql");

/// Drops what [`INSTALL`] created, if it exists.
pub const UNINSTALL: &str = include_str!("../sql/uninstall.sql");
