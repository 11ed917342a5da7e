//! One acquire as a state machine: [`Acquire::start`] gives the first statement, and each
//! [`Acquire::answer`] the next one or the end.

use std::borrow::Cow;

use super::outcome::{After, Answer, Failure, Finish, Step};
use super::request::Request;
use super::statement::{Prepared, Statement};
use crate::error::ErrorKind;
use crate::sql::{self, Scope, Wait};

/// How the acquire goes out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Form {
    /// The prepared statement of [`sql::lock_sql`], key and milliseconds bound: one round trip,
    /// answered with the `locked` row.
    Prepared,
    /// The same acquire as one simple-protocol text ([`sql::session_lock_literal`]), for an adapter
    /// that must know the request is on its way the moment it hands it over. Its answer carries no
    /// row, so a `try_` is followed by a `pg_locks` check (after a refused try the session does not
    /// hold the key in that mode at all, so "held" is exact).
    Literal,
    /// A timed attempt inside a transaction: one simple-protocol batch (`SAVEPOINT`; timed lock;
    /// `RELEASE SAVEPOINT`, [`sql::savepoint_batch`]), followed on failure by
    /// [`sql::SAVEPOINT_ROLLBACK`] so that the caller's transaction stays usable.
    Savepoint,
}

/// One lock request in flight: which statement to send next, and what each answer means.
///
/// * A granted lock or a refused `try_` ends it at once ([`After::Clean`]).
/// * A session-scope timed acquire that times out (`55P03`) is followed by one [`sql::held_sql`]
///   check: PostgreSQL can grant the lock in the instant `lock_timeout` fires, keep it, and raise
///   the error anyway (`LockErrorCleanup` in `src/backend/storage/lmgr/proc.c`), and neither the
///   failed statement nor a rolled-back savepoint releases a session lock. A timed acquire only
///   ever waits for a key the session does not already hold in that mode (re-entrant requests are
///   granted at once), so "held" means "granted at the timeout": the lock is kept and reported as
///   granted. If the check fails, the outcome is unknown ([`After::MaybeHeld`]).
/// * A failed savepoint batch is followed by its rollback ([`Form::Savepoint`]).
/// * Any other failure ends it: [`After::Clean`] for a clean refusal (timeout, deadlock, full
///   lock table: the server answered that the lock was not granted), [`After::Uncertain`]
///   otherwise.
#[derive(Debug)]
pub struct Acquire<E> {
    req: Request,
    scope: Scope,
    form: Form,
    state: State<E>,
}

#[derive(Debug)]
enum State<E> {
    New,
    /// The lock statement is out.
    Locking,
    /// The `held` check after a timeout is out.
    CheckingTimeout,
    /// The `held` check after a plain-text try is out.
    CheckingTry,
    /// The savepoint rollback after a failed batch is out; the batch's error is kept.
    RollingBack(E),
    Finished,
}

impl<E> Acquire<E> {
    /// A session-scope acquire as a prepared statement (the connection must be outside any
    /// transaction: [`session_allowed`](super::request::session_allowed)).
    pub fn session(req: Request) -> Acquire<E> {
        Acquire::with(req, Scope::Session, Form::Prepared)
    }

    /// A session-scope acquire as one plain-text statement ([`Form::Literal`]).
    pub fn session_literal(req: Request) -> Acquire<E> {
        Acquire::with(req, Scope::Session, Form::Literal)
    }

    /// A transaction-scope acquire (inside a transaction:
    /// [`xact_allowed`](super::request::xact_allowed)): prepared, or for a timed one the savepoint
    /// batch, so that a timeout does not abort the caller's transaction.
    pub fn xact(req: Request) -> Acquire<E> {
        let form = match req.wait() {
            Wait::Timeout => Form::Savepoint,
            Wait::Block | Wait::Try => Form::Prepared,
        };
        Acquire::with(req, Scope::Transaction, form)
    }

    fn with(req: Request, scope: Scope, form: Form) -> Acquire<E> {
        Acquire {
            req,
            scope,
            form,
            state: State::New,
        }
    }

    /// The request.
    pub fn request(&self) -> &Request {
        &self.req
    }

    /// Session or transaction scope.
    pub fn scope(&self) -> Scope {
        self.scope
    }

    /// How the acquire goes out.
    pub fn form(&self) -> Form {
        self.form
    }

    /// The first statement: the acquire itself. From the moment it may have reached the server,
    /// the session may hold the lock.
    ///
    /// # Panics
    /// If called twice.
    pub fn start(&mut self) -> Statement {
        assert!(
            matches!(self.state, State::New),
            "Acquire::start called twice"
        );
        self.state = State::Locking;
        let (req, scope) = (&self.req, self.scope);
        match self.form {
            Form::Prepared => Statement::Prepared(Prepared::lock(scope, req)),
            Form::Literal => Statement::Simple(Cow::Owned(sql::session_lock_literal(
                req.mode(),
                req.wait(),
                req.key(),
                req.millis(),
            ))),
            Form::Savepoint => Statement::Simple(Cow::Owned(sql::savepoint_batch(
                scope,
                req.mode(),
                req.key(),
                req.millis().unwrap_or(1),
            ))),
        }
    }

    /// Consume the answer to the statement last sent.
    ///
    /// # Panics
    /// Before [`start`](Self::start) or after the request has finished.
    pub fn answer(&mut self, answer: Answer<E>) -> Step<E> {
        match std::mem::replace(&mut self.state, State::Finished) {
            State::Locking => self.locking(answer),
            State::CheckingTimeout => match answer {
                Answer::Row(true) => finish_kept(),
                Answer::Row(false) => finish(Err(Failure::Timeout), After::Clean),
                // not an answer a prepared check gives: treat the outcome as unknown
                Answer::Done => finish(Err(Failure::Timeout), After::MaybeHeld),
                Answer::Failed(e, _) => finish(Err(Failure::Check(e)), After::MaybeHeld),
            },
            State::CheckingTry => match answer {
                Answer::Row(held) => finish(Ok(held), After::Clean),
                Answer::Done => finish(Ok(false), After::MaybeHeld),
                Answer::Failed(e, _) => finish(Err(Failure::Check(e)), After::MaybeHeld),
            },
            State::RollingBack(e) => match answer {
                Answer::Row(_) | Answer::Done => finish(Err(Failure::Statement(e)), After::Clean),
                Answer::Failed(_, _) => {
                    finish(Err(Failure::Statement(e)), After::TransactionAborted)
                }
            },
            State::New | State::Finished => panic!("Acquire::answer without a statement out"),
        }
    }

    fn locking(&mut self, answer: Answer<E>) -> Step<E> {
        let (req, scope) = (self.req, self.scope);
        match answer {
            Answer::Row(locked) => finish(Ok(locked), After::Clean),
            // a simple-protocol acquire ran: a waiting form was granted, a try is asked about
            Answer::Done => match (self.form, req.wait()) {
                (Form::Literal, Wait::Try) => {
                    self.state = State::CheckingTry;
                    Step::Send(held_check(&req))
                }
                _ => finish(Ok(true), After::Clean),
            },
            Answer::Failed(e, kind) => {
                if self.form == Form::Savepoint {
                    self.state = State::RollingBack(e);
                    return Step::Send(Statement::Simple(Cow::Borrowed(sql::SAVEPOINT_ROLLBACK)));
                }
                let timed_out = kind == Some(ErrorKind::Timeout) && req.wait() == Wait::Timeout;
                if timed_out && scope == Scope::Session {
                    self.state = State::CheckingTimeout;
                    return Step::Send(held_check(&req));
                }
                let clean = timed_out
                    || matches!(kind, Some(ErrorKind::Deadlock | ErrorKind::LockTableFull));
                let after = if clean {
                    After::Clean
                } else {
                    After::Uncertain
                };
                finish(Err(Failure::Statement(e)), after)
            }
        }
    }
}

fn held_check(req: &Request) -> Statement {
    super::simple::held_statement(req.key(), req.mode()).into()
}

fn finish<E>(outcome: Result<bool, Failure<E>>, after: After) -> Step<E> {
    Step::Finish(Finish {
        outcome,
        after,
        kept_at_timeout: false,
    })
}

fn finish_kept<E>() -> Step<E> {
    Step::Finish(Finish {
        outcome: Ok(true),
        after: After::Clean,
        kept_at_timeout: true,
    })
}
