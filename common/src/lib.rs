//! Driver-independent core of the PostgreSQL advisory-lock crates
//! ([`sqlx-advisory`](https://docs.rs/sqlx-advisory) and [`diesel-advisory`](https://docs.rs/diesel-advisory)).
//!
//! Everything that is not specific to one database driver lives here, once:
//!
//! * [`Key`]: the two advisory key spaces of PostgreSQL and the string → key derivations
//!   ([`Key::name`], plus compatibility presets [`Key::sqlx`] and [`Key::postgresql_lock`]);
//! * [`Preset`], [`Namespace`], [`migration_keys`]: other ecosystems' key derivations, scoped
//!   names, and the keys migration tools lock;
//! * [`sql`]: every SQL statement the adapters send, as `&'static str` so drivers can cache the
//!   prepared statement, with keys always bound as parameters;
//! * [`schema`]: the SQL shipped to users (`advisory_key(text)`, the `advisory_locks` view);
//! * [`LockInfo`]: `pg_locks` + `pg_stat_activity` rows decoded back into [`Key`]s;
//! * [`ErrorKind`] and [`classify_sqlstate`]: the one place that maps a SQLSTATE to a lock failure, so
//!   both adapters report the same error for the same server answer.
//!
//! ```
//! use advisory_common::{Key, sql::{self, Mode, Scope, Wait}};
//!
//! let key = Key::name("orders:42");
//! assert_eq!(key, Key::from("orders:42"));
//! let text = sql::lock_sql(Scope::Session, Mode::Exclusive, Wait::Block, key.space());
//! assert_eq!(text, "SELECT pg_advisory_lock($1) IS NOT NULL AS locked");
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![deny(missing_debug_implementations)]

mod crc32;
mod error;
mod info;
mod interop;
mod key;
mod label;
pub mod migration_keys;
mod namespace;
mod preset;
pub mod schema;
pub mod sql;
mod timeout;

pub use error::{ErrorKind, classify_sqlstate, sqlstate_from_message};
pub use info::{LockInfo, LockMode};
pub use key::{Key, KeySpace};
pub use label::{KeyValue, LABEL_MAX, Labeled};
pub use namespace::Namespace;
pub use preset::{ParsePresetError, Preset};
pub use timeout::{TimeoutOutOfRange, timeout_millis};
