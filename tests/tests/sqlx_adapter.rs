//! `sqlx-advisory` against a real PostgreSQL server. Every test asserts what `pg_locks` says (read
//! on an independent observer session), waits on observable conditions with deadlines, and uses
//! its own random keys, so the tests run in parallel.

#[path = "sqlx_adapter/begin.rs"]
mod begin;
#[path = "sqlx_adapter/cancel.rs"]
mod cancel;
#[path = "sqlx_adapter/drop.rs"]
mod drop;
#[path = "sqlx_adapter/errors.rs"]
mod errors;
#[path = "sqlx_adapter/exclusion.rs"]
mod exclusion;
#[path = "sqlx_adapter/keys.rs"]
mod keys;
#[path = "sqlx_adapter/reentrancy.rs"]
mod reentrancy;
#[path = "sqlx_adapter/support.rs"]
mod support;
#[path = "sqlx_adapter/timeout.rs"]
mod timeout;
#[path = "sqlx_adapter/xact.rs"]
mod xact;
