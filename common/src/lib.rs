//! Driver-independent core of the PostgreSQL advisory-lock crates
//! ([`sqlx-advisory`](https://docs.rs/sqlx-advisory) and [`diesel-advisory`](https://docs.rs/diesel-advisory)).
//!
//! You never need to depend on it yourself: both adapters re-export everything a user meets.
//! What users touch:
//!
//! * [`Key`]: the two advisory key spaces of PostgreSQL and the string → key derivations
//!   ([`Key::name`], plus compatibility presets [`Key::sqlx`] and [`Key::postgresql_lock`]); a key
//!   derived from a name keeps it for messages ([`Key::Labeled`], [`Key::value`]);
//! * [`Preset`], [`Namespace`], [`migration_keys`]: other ecosystems' key derivations, scoped
//!   names, and the keys migration tools lock;
//! * [`schema`]: the SQL shipped to users (`advisory_key(text)`, the `advisory_locks` view);
//! * [`LockInfo`]: `pg_locks` + `pg_stat_activity` rows decoded back into [`Key`]s;
//! * [`ErrorKind`]: what kind of lock failure an adapter's error is.
//!
//! The adapters' machinery is public for them only and hidden from these docs, with no stability
//! promise: `sql` (every statement they send, as `&'static str` so drivers cache the prepared
//! statement, keys always bound as parameters) and the SQLSTATE classification.
//!
//! With the `tokio` feature, [`shell`] is the lock service (`Locker`, `Lease`, `Leadership`)
//! written once over a driver trait; the adapters' lockers are made of it.
//!
//! [`protocol`] is the lock protocol without I/O that every adapter drives: which statement to
//! send next and what each answer means (grant-at-timeout check, savepoint and lock-then-`BEGIN`
//! batches, what a failure leaves the connection fit for), so an adapter only does the I/O.
//!
//! ```
//! use advisory_common::{Key, KeySpace, KeyValue};
//!
//! let key = Key::name("orders:42");
//! assert_eq!(key, Key::from("orders:42"));
//! assert_eq!(key.space(), KeySpace::BigInt);
//! assert_eq!(key.value(), KeyValue::BigInt(-8476019149258318077));
//! assert_eq!(key.to_string(), r#""orders:42" (bigint:-8476019149258318077)"#);
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![deny(missing_debug_implementations)]

mod adapter_error;
mod crc32;
mod error;
mod info;
mod interop;
mod key;
mod label;
#[doc(hidden)]
pub mod locker;
pub mod migration_keys;
mod mode;
mod namespace;
mod preset;
pub mod protocol;
pub mod schema;
#[doc(hidden)]
pub mod sql;
mod timeout;

pub use error::ErrorKind;
#[doc(hidden)]
pub use error::{classify_sqlstate, sqlstate_from_message};
pub use info::LockInfo;
pub use key::{Key, KeySpace};
pub use label::{KeyValue, LABEL_MAX, Labeled};
#[cfg(feature = "tokio")]
pub use locker::shell;
pub use mode::LockMode;
pub use namespace::Namespace;
pub use preset::{ParsePresetError, Preset};
pub use timeout::TimeoutOutOfRange;
#[doc(hidden)]
pub use timeout::timeout_millis;
