//! The lock service (`sqlx_advisory::Locker`) against a real PostgreSQL server: what `pg_locks`
//! and `pg_stat_activity` say, read on an independent observer session.

#[path = "locker/diesel_failover.rs"]
mod diesel_failover;
#[path = "locker/diesel_load.rs"]
mod diesel_load;
#[path = "locker/diesel_locker.rs"]
mod diesel_locker;
#[path = "locker/failover.rs"]
mod failover;
#[path = "locker/load.rs"]
mod load;
#[path = "locker/model.rs"]
mod model;
#[path = "locker/sqlx_locker.rs"]
mod sqlx_locker;
#[path = "locker/support.rs"]
mod support;
