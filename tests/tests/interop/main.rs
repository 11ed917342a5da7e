//! Issue 15 on a real server: the presets' SQL twins compute the same keys as Rust, sqlx's own
//! `PgAdvisoryLock` is seen under the `sqlx` preset, sqlx's migrator waits on
//! `migration_keys::sqlx`, and diesel migrations run under `MigrationLock` by several concurrent
//! runners apply each migration exactly once. (The Python and npm peers: `tests/peers/`.)
//!
//! Each migration test works in a schema of its own (`schema::Fresh`), so the shared test
//! database is left as it was.

mod diesel_migrations_async;
mod diesel_migrations_sync;
mod presets;
mod schema;
mod sqlx_migrator;
