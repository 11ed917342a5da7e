//! What an adapter is told to send: a prepared statement of [`crate::sql`] with its bound
//! parameters, or a simple-protocol text.

use std::borrow::Cow;

use crate::key::Key;
use crate::mode::LockMode;
use crate::sql::{self, Scope, Wait};

/// One statement to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Statement {
    /// A prepared, cached statement with the key (and the milliseconds) bound as parameters;
    /// answered with [`Answer::Row`](super::outcome::Answer::Row).
    Prepared(Prepared),
    /// A simple-protocol text (integers spliced only: a savepoint batch, its rollback, a
    /// plain-text acquire); answered with [`Answer::Done`](super::outcome::Answer::Done).
    Simple(Cow<'static, str>),
}

impl Statement {
    /// The SQL text the server receives (for a prepared statement, with `$n` placeholders).
    pub fn sql(&self) -> &str {
        match self {
            Statement::Prepared(p) => p.sql(),
            Statement::Simple(s) => s,
        }
    }

    /// The prepared statement, if this is one (to prepare it ahead of sending).
    pub fn as_prepared(&self) -> Option<&Prepared> {
        match self {
            Statement::Prepared(p) => Some(p),
            Statement::Simple(_) => None,
        }
    }
}

impl From<Prepared> for Statement {
    fn from(p: Prepared) -> Statement {
        Statement::Prepared(p)
    }
}

/// Which prepared statement of [`crate::sql`]: the text is a function of this value alone, so an
/// adapter may also use it as its statement-cache identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StatementKind {
    /// [`sql::lock_sql`]: returns `locked`.
    Lock(Scope, LockMode, Wait),
    /// [`sql::unlock_sql`]: returns `unlocked`.
    Unlock(LockMode),
    /// [`sql::held_sql`]: returns `held`.
    Held(LockMode),
}

/// A prepared statement and its parameters: the key (`$1`, or `$1, $2`), then for a timed lock the
/// milliseconds (`int4`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Prepared {
    /// Which statement.
    pub kind: StatementKind,
    /// The key, bound as `int8` or two `int4`.
    pub key: Key,
    /// The `lock_timeout` milliseconds, bound last (timed locks only).
    pub ms: Option<i32>,
}

impl Prepared {
    /// The statement text, `&'static` so drivers cache the prepared statement.
    pub fn sql(&self) -> &'static str {
        let space = self.key.space();
        match self.kind {
            StatementKind::Lock(scope, mode, wait) => sql::lock_sql(scope, mode, wait, space),
            StatementKind::Unlock(mode) => sql::unlock_sql(mode, space),
            StatementKind::Held(mode) => sql::held_sql(mode, space),
        }
    }

    /// The lock statement for `scope`.
    pub(crate) fn lock(scope: Scope, req: &super::request::Request) -> Prepared {
        Prepared {
            kind: StatementKind::Lock(scope, req.mode(), req.wait()),
            key: req.key(),
            ms: req.millis(),
        }
    }
}
