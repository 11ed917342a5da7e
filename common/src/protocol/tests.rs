//! Every request through every answer sequence, without a database.

use std::time::Duration;

use super::*;
use crate::error::ErrorKind;
use crate::key::{Key, KeySpace};
use crate::mode::LockMode;
use crate::sql::{self, MODES, SPACES, Scope, WAITS, Wait};

/// The answers a driver can give, with a label to tell them apart in failures.
fn answers() -> Vec<Answer<&'static str>> {
    vec![
        Answer::Row(true),
        Answer::Row(false),
        Answer::Done,
        Answer::Failed("other", None),
        Answer::Failed("timeout", Some(ErrorKind::Timeout)),
        Answer::Failed("deadlock", Some(ErrorKind::Deadlock)),
        Answer::Failed("full", Some(ErrorKind::LockTableFull)),
        Answer::Failed("lost", Some(ErrorKind::ConnectionLost)),
    ]
}

fn copy(a: &Answer<&'static str>) -> Answer<&'static str> {
    match a {
        Answer::Row(b) => Answer::Row(*b),
        Answer::Done => Answer::Done,
        Answer::Failed(e, k) => Answer::Failed(*e, *k),
    }
}

fn key(space: KeySpace) -> Key {
    match space {
        KeySpace::BigInt => Key::BigInt(-42),
        KeySpace::Pair => Key::Pair(7, -9),
    }
}

fn request(space: KeySpace, mode: LockMode, wait: Wait) -> Request {
    Request::new(key(space), mode, wait, Some(Duration::from_millis(250))).unwrap()
}

/// All machines: session prepared, session literal, transaction.
fn machines(req: Request) -> Vec<Acquire<&'static str>> {
    vec![
        Acquire::session(req),
        Acquire::session_literal(req),
        Acquire::xact(req),
    ]
}

fn placeholders(sql: &str) -> usize {
    (1..=9)
        .take_while(|i| sql.contains(&format!("${i}")))
        .count()
}

/// Drive `acquire` with `script` (answers in order, the last one repeated); every statement it
/// asks for is checked, and the conversation must end within three statements.
fn run(
    mut acquire: Acquire<&'static str>,
    script: &[&Answer<&'static str>],
) -> (Vec<Statement>, Finish<&'static str>) {
    let mut sent = vec![acquire.start()];
    for i in 0..3 {
        let answer = copy(script[i.min(script.len() - 1)]);
        match acquire.answer(answer) {
            Step::Send(s) => sent.push(s),
            Step::Finish(f) => return (sent, f),
        }
    }
    panic!("conversation too long: {sent:?}");
}

#[test]
fn every_request_through_every_answer_sequence() {
    let all = answers();
    let mut conversations = 0;
    for mode in MODES {
        for wait in WAITS {
            for space in SPACES {
                let req = request(space, mode, wait);
                for (first, second) in all.iter().flat_map(|a| all.iter().map(move |b| (a, b))) {
                    for acquire in machines(req) {
                        let (scope, form) = (acquire.scope(), acquire.form());
                        let (sent, fin) = run(acquire, &[first, second]);
                        conversations += 1;
                        check(req, scope, form, &sent, &fin, first, second);
                    }
                }
            }
        }
    }
    assert_eq!(conversations, 2 * 3 * 2 * 8 * 8 * 3);
}

fn check(
    req: Request,
    scope: Scope,
    form: Form,
    sent: &[Statement],
    fin: &Finish<&'static str>,
    first: &Answer<&'static str>,
    second: &Answer<&'static str>,
) {
    let ctx = format!("{scope:?} {form:?} {req:?} {first:?} {second:?} -> {sent:?} {fin:?}");
    // the first statement is the acquire, in its form, with the right parameters
    match (&sent[0], form) {
        (Statement::Prepared(p), Form::Prepared) => {
            assert_eq!(
                p.kind,
                StatementKind::Lock(scope, req.mode(), req.wait()),
                "{ctx}"
            );
            let keys = match req.key().space() {
                KeySpace::BigInt => 1,
                KeySpace::Pair => 2,
            };
            let expect = keys + usize::from(req.wait() == Wait::Timeout);
            assert_eq!(placeholders(p.sql()), expect, "{ctx}");
            assert_eq!(p.ms.is_some(), req.wait() == Wait::Timeout, "{ctx}");
        }
        (Statement::Simple(s), Form::Literal) => {
            let expect = sql::session_lock_literal(req.mode(), req.wait(), req.key(), req.millis());
            assert_eq!(s.as_ref(), expect, "{ctx}");
        }
        (Statement::Simple(s), Form::Savepoint) => {
            assert_eq!(scope, Scope::Transaction, "{ctx}");
            assert_eq!(req.wait(), Wait::Timeout, "{ctx}");
            let expect = sql::savepoint_batch(scope, req.mode(), req.key(), 250);
            assert_eq!(s.as_ref(), expect, "{ctx}");
        }
        _ => panic!("first statement not in its form: {ctx}"),
    }
    // follow-ups: a held check (session scope) or the savepoint rollback, nothing else
    for s in &sent[1..] {
        match s {
            Statement::Prepared(p) => {
                assert_eq!(p.kind, StatementKind::Held(req.mode()), "{ctx}");
                assert_eq!((p.key, p.ms), (req.key(), None), "{ctx}");
                assert_eq!(scope, Scope::Session, "{ctx}");
            }
            Statement::Simple(s) => {
                assert_eq!(s.as_ref(), sql::SAVEPOINT_ROLLBACK, "{ctx}");
                assert_eq!(form, Form::Savepoint, "{ctx}");
            }
        }
    }
    assert!(sent.len() <= 2, "{ctx}");
    // the transaction scope never asks pg_locks; a plain lock never rolls back
    let checked = sent.len() == 2 && form != Form::Savepoint;
    if checked {
        let timed_out = matches!(first, Answer::Failed(_, Some(ErrorKind::Timeout)))
            && req.wait() == Wait::Timeout;
        let try_done = form == Form::Literal && req.wait() == Wait::Try;
        assert!(timed_out || try_done, "checked without cause: {ctx}");
    }
    match &fin.outcome {
        Ok(true) => assert_eq!(fin.after, After::Clean, "{ctx}"),
        // "not granted" is only ever the server's own `false` (or a check that gave no row)
        Ok(false) => assert!(
            matches!(first, Answer::Row(false))
                || checked && matches!(second, Answer::Row(false) | Answer::Done),
            "{ctx}"
        ),
        Err(Failure::Timeout) => {
            assert!(checked && req.wait() == Wait::Timeout, "{ctx}");
        }
        Err(Failure::Check(e)) => {
            assert!(checked, "{ctx}");
            assert!(matches!(second, Answer::Failed(x, _) if x == e), "{ctx}");
            assert_eq!(fin.after, After::MaybeHeld, "{ctx}");
        }
        Err(Failure::Statement(e)) => {
            assert!(matches!(first, Answer::Failed(x, _) if x == e), "{ctx}");
            assert!(!checked, "{ctx}");
        }
    }
    // only a failed check leaves a possible hold; only a failed rollback aborts the transaction
    assert_eq!(
        fin.after == After::MaybeHeld,
        checked && !matches!(second, Answer::Row(_)),
        "{ctx}"
    );
    assert_eq!(
        fin.after == After::TransactionAborted,
        form == Form::Savepoint
            && matches!(first, Answer::Failed(..))
            && matches!(second, Answer::Failed(..)),
        "{ctx}"
    );
    assert_eq!(
        fin.kept_at_timeout,
        checked
            && req.wait() == Wait::Timeout
            && matches!(second, Answer::Row(true))
            && matches!(first, Answer::Failed(..)),
        "{ctx}"
    );
}

fn one(
    acquire: Acquire<&'static str>,
    script: &[Answer<&'static str>],
) -> (Vec<Statement>, Finish<&'static str>) {
    let refs: Vec<_> = script.iter().collect();
    run(acquire, &refs)
}

#[test]
fn granted_and_refused_end_at_once() {
    for wait in WAITS {
        let req = request(KeySpace::BigInt, LockMode::Exclusive, wait);
        let (sent, fin) = one(Acquire::session(req), &[Answer::Row(true)]);
        assert_eq!(
            (sent.len(), fin.outcome.ok(), fin.after),
            (1, Some(true), After::Clean)
        );
    }
    let req = request(KeySpace::Pair, LockMode::Shared, Wait::Try);
    let (_, fin) = one(Acquire::session(req), &[Answer::Row(false)]);
    assert_eq!((fin.outcome.ok(), fin.after), (Some(false), After::Clean));
}

#[test]
fn a_session_timeout_is_checked_and_a_grant_at_the_timeout_kept() {
    let req = request(KeySpace::BigInt, LockMode::Shared, Wait::Timeout);
    let timeout = Answer::Failed("55P03", Some(ErrorKind::Timeout));
    for acquire in [Acquire::session(req), Acquire::session_literal(req)] {
        let (sent, fin) = one(acquire, &[copy(&timeout), Answer::Row(true)]);
        assert_eq!(sent[1], held_statement(req.key(), LockMode::Shared).into());
        assert!(fin.kept_at_timeout);
        assert_eq!((fin.outcome.ok(), fin.after), (Some(true), After::Clean));
    }
    let (_, fin) = one(Acquire::session(req), &[copy(&timeout), Answer::Row(false)]);
    assert!(matches!(fin.outcome, Err(Failure::Timeout)));
    assert_eq!(fin.after, After::Clean);
    let (_, fin) = one(
        Acquire::session(req),
        &[
            copy(&timeout),
            Answer::Failed("lost", Some(ErrorKind::ConnectionLost)),
        ],
    );
    assert!(matches!(fin.outcome, Err(Failure::Check("lost"))));
    assert_eq!(fin.after, After::MaybeHeld);
}

#[test]
fn a_timeout_of_a_waiting_acquire_is_the_applications_own_and_not_clean() {
    // 55P03 on a waiting acquire comes from a lock_timeout the application set: no check, an
    // ordinary driver error, and the outcome not known for sure
    let req = request(KeySpace::BigInt, LockMode::Exclusive, Wait::Block);
    let (sent, fin) = one(
        Acquire::session(req),
        &[Answer::Failed("55P03", Some(ErrorKind::Timeout))],
    );
    assert_eq!(sent.len(), 1);
    assert!(matches!(fin.outcome, Err(Failure::Statement("55P03"))));
    assert_eq!(fin.after, After::Uncertain);
}

#[test]
fn clean_refusals_and_uncertain_failures() {
    let req = request(KeySpace::Pair, LockMode::Exclusive, Wait::Block);
    for (kind, after) in [
        (Some(ErrorKind::Deadlock), After::Clean),
        (Some(ErrorKind::LockTableFull), After::Clean),
        (Some(ErrorKind::ConnectionLost), After::Uncertain),
        (None, After::Uncertain),
    ] {
        let (_, fin) = one(Acquire::session(req), &[Answer::Failed("e", kind)]);
        assert_eq!(fin.after, after, "{kind:?}");
    }
}

#[test]
fn a_timed_transaction_lock_runs_in_a_savepoint_rolled_back_on_failure() {
    let req = request(KeySpace::BigInt, LockMode::Exclusive, Wait::Timeout);
    let (sent, fin) = one(Acquire::xact(req), &[Answer::Done]);
    assert_eq!((sent.len(), fin.outcome.ok()), (1, Some(true)));
    let t = Answer::Failed("55P03", Some(ErrorKind::Timeout));
    let (sent, fin) = one(Acquire::xact(req), &[copy(&t), Answer::Done]);
    assert_eq!(sent[1].sql(), sql::SAVEPOINT_ROLLBACK);
    assert!(matches!(fin.outcome, Err(Failure::Statement("55P03"))));
    assert_eq!(fin.after, After::Clean);
    let (_, fin) = one(Acquire::xact(req), &[copy(&t), Answer::Failed("x", None)]);
    assert_eq!(fin.after, After::TransactionAborted);
    // untimed transaction locks are prepared and never checked
    for wait in [Wait::Block, Wait::Try] {
        let req = request(KeySpace::BigInt, LockMode::Shared, wait);
        assert_eq!(Acquire::<()>::xact(req).form(), Form::Prepared);
    }
}

#[test]
fn a_plain_text_try_asks_pg_locks() {
    let req = request(KeySpace::BigInt, LockMode::Exclusive, Wait::Try);
    for held in [true, false] {
        let (sent, fin) = one(
            Acquire::session_literal(req),
            &[Answer::Done, Answer::Row(held)],
        );
        assert_eq!(
            sent[1],
            held_statement(req.key(), LockMode::Exclusive).into()
        );
        assert_eq!(
            (fin.outcome.ok(), fin.after, fin.kept_at_timeout),
            (Some(held), After::Clean, false)
        );
    }
    let (_, fin) = one(
        Acquire::session_literal(req),
        &[Answer::Done, Answer::Failed("x", None)],
    );
    assert_eq!(fin.after, After::MaybeHeld);
    let req = request(KeySpace::BigInt, LockMode::Exclusive, Wait::Block);
    let (sent, fin) = one(Acquire::session_literal(req), &[Answer::Done]);
    assert_eq!((sent.len(), fin.outcome.ok()), (1, Some(true)));
}

#[test]
fn requests_are_validated_before_anything_is_sent() {
    let k = Key::BigInt(1);
    assert!(Request::timed(k, LockMode::Shared, Duration::from_secs(u64::MAX)).is_err());
    let r = Request::timed(k, LockMode::Shared, Duration::ZERO).unwrap();
    assert_eq!(r.millis(), Some(1));
    let r = Request::new(k, LockMode::Shared, Wait::Try, Some(Duration::from_secs(1))).unwrap();
    assert_eq!((r.wait(), r.timeout(), r.millis()), (Wait::Try, None, None));
    let r = Request::new(k, LockMode::Shared, Wait::Timeout, None).unwrap();
    assert_eq!(r.wait(), Wait::Block);
    assert_eq!(session_allowed(true), Err(Refused::AlreadyInTransaction));
    assert_eq!(session_allowed(false), Ok(()));
    assert_eq!(xact_allowed(false), Err(Refused::NotInTransaction));
    assert_eq!(xact_allowed(true), Ok(()));
    assert_eq!(
        begin_allowed(true).unwrap_err().kind(),
        ErrorKind::AlreadyInTransaction
    );
    assert_eq!(begin_allowed(false), Ok(()));
}

#[test]
fn release_held_and_begin() {
    let k = Key::Pair(1, 2);
    assert_eq!(
        release_statement(k, LockMode::Shared).sql(),
        sql::unlock_sql(LockMode::Shared, KeySpace::Pair)
    );
    assert_eq!(
        held_statement(k, LockMode::Exclusive).sql(),
        sql::held_sql(LockMode::Exclusive, KeySpace::Pair)
    );
    assert_eq!(released::<()>(Answer::Row(true)), Ok(true));
    assert_eq!(released::<()>(Answer::Row(false)), Ok(false));
    assert_eq!(released(Answer::Failed("x", None)), Err("x"));
    let req = Request::timed(k, LockMode::Exclusive, Duration::from_millis(5)).unwrap();
    assert_eq!(
        begin_statement(&req),
        sql::lock_then_begin(LockMode::Exclusive, k, Some(5))
    );
}

#[test]
#[should_panic(expected = "without a statement out")]
fn an_answer_after_the_end_is_a_bug() {
    let mut a = Acquire::<()>::session(Request::block(Key::BigInt(1), LockMode::Exclusive));
    a.start();
    let _ = a.answer(Answer::Row(true));
    let _ = a.answer(Answer::Row(true));
}
