//! The lock protocol without I/O: what an adapter sends next, and what each answer means.
//!
//! A lock call is a short conversation with the server. Which statement comes first (prepared,
//! plain-text, or a savepoint batch), what a `55P03` after a timed session acquire means (ask
//! `pg_locks` whether the lock was granted in that instant), when a savepoint must be rolled back,
//! and what the connection is fit for afterwards: all of that is decided here, once, for sqlx,
//! diesel and diesel-async. An adapter only sends the [`Statement`] it is given, reduces the
//! driver's reply to an [`Answer`] (a boolean row, "done", or an error with its
//! [`ErrorKind`](crate::ErrorKind)), and hands it back, until the conversation [`Finish`]es:
//!
//! ```
//! use advisory_common::protocol::{Acquire, After, Answer, Request, Step};
//! use advisory_common::{ErrorKind, Key, LockMode};
//! use std::time::Duration;
//!
//! // a timed session acquire whose lock_timeout fired as the lock was granted
//! let req = Request::timed(Key::BigInt(7), LockMode::Exclusive, Duration::from_millis(50)).unwrap();
//! let mut acquire = Acquire::<&str>::session(req);
//! let first = acquire.start();
//! assert!(first.sql().contains("pg_advisory_lock($1)"));
//! let Step::Send(check) = acquire.answer(Answer::Failed("55P03", Some(ErrorKind::Timeout))) else {
//!     panic!("a timed-out session acquire is checked")
//! };
//! assert!(check.sql().contains("pg_locks"));
//! let Step::Finish(done) = acquire.answer(Answer::Row(true)) else { panic!() };
//! assert_eq!(done.outcome.ok(), Some(true)); // kept: granted at the timeout
//! assert_eq!(done.after, After::Clean);
//! ```
//!
//! Nothing here performs I/O, so every path is tested without a database (this module's tests
//! walk every request through every answer sequence).

mod acquire;
mod methods;
mod outcome;
mod request;
mod simple;
mod statement;
#[cfg(test)]
mod tests;

pub use acquire::{Acquire, Form};
#[doc(hidden)]
pub use methods::granted;
pub use outcome::{After, Answer, Failure, Finish, Step};
pub use request::{Refused, Request, begin_allowed, session_allowed, xact_allowed};
pub use simple::{begin_statement, held, held_statement, release_statement, released};
pub use statement::{Prepared, Statement, StatementKind};
