//! diesel-async transactions: a `conn.transaction(async |c| ..)` future (run to its end,
//! cancelled at a random poll, or left by a panic), the steps inside it, and the caller's
//! rollback of a transaction a panic left open.

use std::future::Future;
use std::panic::{AssertUnwindSafe, resume_unwind};
use std::pin::Pin;

use advisory_common::Key;
use advisory_common::sql::Mode;
use diesel::result::Error as DieselError;
use diesel_advisory::Error;
use diesel_advisory::prelude::*;
use diesel_async::{
    AnsiTransactionManager, AsyncConnection, AsyncPgConnection, SimpleAsyncConnection,
    TransactionManager,
};
use futures::FutureExt;
use rand::Rng;

use super::async_run::{ACtx, acquire, query, run, settle};
use super::world::*;

/// One (sub)transaction level: its diesel depth, the stack level `d` it runs on, and what it did.
pub struct TxState<'a> {
    pub depth: u32,
    pub d: usize,
    pub held: &'a mut Vec<(Key, Mode)>,
    pub aborted: &'a mut bool,
    pub lingering: &'a mut bool,
    /// A transaction lock asked for and not answered yet (its future may be dropped).
    pub pending: &'a mut Option<(Key, Mode)>,
}

fn rollback(x: &ACtx<'_>) -> Result<(), Error> {
    Err(Error::NotHeld { key: x.m.keys[0] })
}

/// Steps inside a transaction; `Ok` commits, `Err` rolls back. A failing statement aborts the
/// (sub)transaction and PostgreSQL releases its locks right then (after a savepoint rollback,
/// which diesel leaves in place, that is the lingering savepoint's subtransaction only).
pub fn tx_body<'a>(
    c: &'a mut AsyncPgConnection,
    pid: i32,
    t: &'a mut TxState<'_>,
    x: &'a mut ACtx<'_>,
) -> Pin<Box<dyn Future<Output = Result<(), Error>> + Send + 'a>> {
    Box::pin(async move {
        let depth = t.depth;
        loop {
            match x.m.rng.gen_range(0..100) {
                _ if x.done() => {
                    return if *t.aborted { rollback(x) } else { Ok(()) };
                }
                0..=19 => {
                    x.m.begin(format!("tx {depth}: query"));
                    let r = query(c, x.m).await;
                    assert_eq!(r.is_err(), *t.aborted, "{}: {r:?}", x.m.at());
                    x.m.settle(pid);
                }
                20..=29 => {
                    x.m.begin(format!("tx {depth}: failing query"));
                    assert!(c.batch_execute("SELECT 1/0").await.is_err());
                    *t.aborted = true;
                    // the server reports the error before it aborts the transaction (and
                    // releases its locks): gone by the next statement's answer
                    if !*t.lingering {
                        for (key, mode) in t.held.drain(..) {
                            x.m.remove((pid, key, mode));
                            x.m.maybe((pid, key, mode));
                        }
                    }
                }
                30..=44 if !*t.aborted && depth == 1 && !*t.lingering => {
                    let (key, mode) = (x.m.key(), x.m.mode());
                    x.m.begin(format!("tx {depth}: try_xact_lock {key} {mode:?}"));
                    let (certain, maybe) = x.m.conflict(pid, key, mode);
                    *t.pending = Some((key, mode));
                    let got = match mode {
                        Mode::Exclusive => c.try_xact_lock(key).await,
                        Mode::Shared => c.try_xact_lock_shared(key).await,
                    }
                    .unwrap_or_else(|e| panic!("{}: {e}", x.m.at()));
                    *t.pending = None;
                    if !maybe {
                        assert_eq!(got, !certain, "{}", x.m.at());
                    }
                    if got {
                        x.m.add((pid, key, mode));
                        t.held.push((key, mode));
                    }
                }
                45..=54 => {
                    let (key, mode) = (x.m.key(), x.m.mode());
                    x.m.begin(format!("tx {depth}: session lock {key} refused"));
                    let r = acquire(c, key, mode, How::Try).await;
                    assert!(
                        matches!(r, Err(Error::AlreadyInTransaction { .. })),
                        "{}: {:?}",
                        x.m.at(),
                        r.map(|g| g.is_some())
                    );
                }
                55..=64 if !*t.aborted && depth < 3 => {
                    x.m.begin(format!("tx {depth}: savepoint"));
                    let (mut aborted, mut held, mut lingering, mut pending) =
                        (false, Vec::new(), false, None);
                    let r = c
                        .transaction::<(), Error, _>(async |c| {
                            let mut inner = TxState {
                                depth: depth + 1,
                                d: t.d,
                                held: &mut held,
                                aborted: &mut aborted,
                                lingering: &mut lingering,
                                pending: &mut pending,
                            };
                            tx_body(c, pid, &mut inner, x).await
                        })
                        .await;
                    assert!(held.is_empty());
                    *t.lingering |= r.is_err();
                }
                65..=79 => {
                    x.m.begin(format!(
                        "tx {depth}: end ({})",
                        if *t.aborted { "rollback" } else { "commit" }
                    ));
                    return if *t.aborted { rollback(x) } else { Ok(()) };
                }
                80..=87 => {
                    x.m.begin(format!("tx {depth}: rollback"));
                    return rollback(x);
                }
                88..=91 if depth == 1 => {
                    let at_guard = t.d > 0 && x.m.chance(0.6);
                    x.m.begin(format!(
                        "tx {depth}: panic (caught at the {})",
                        if at_guard { "guard" } else { "transaction" }
                    ));
                    std::panic::panic_any(ModelPanic { at_guard });
                }
                _ => x.contender.step(x.m),
            }
            x.m.check();
        }
    })
}

pub async fn transaction_step(
    c: &mut AsyncPgConnection,
    s: &mut Session,
    d: usize,
    x: &mut ACtx<'_>,
) {
    let polls = x.cancel(0.25);
    let pauses = x.m.rng.r#gen();
    x.m.begin(format!("level {d}: begin transaction (cancel {polls:?})"));
    let (mut held, mut aborted, mut lingering, mut pending) = (Vec::new(), false, false, None);
    let pid = s.pid;
    let r = {
        let fut = c.transaction::<(), Error, _>(async |c| {
            let mut t = TxState {
                depth: 1,
                d,
                held: &mut held,
                aborted: &mut aborted,
                lingering: &mut lingering,
                pending: &mut pending,
            };
            tx_body(c, pid, &mut t, x).await
        });
        AssertUnwindSafe(run(fut, polls, pauses))
            .catch_unwind()
            .await
    };
    match r {
        Ok(Some(r)) => {
            // committed (Ok) or rolled back (Err): the transaction's locks are gone
            x.m.begin(format!(
                "level {d}: transaction ended {:?}",
                r.as_ref().map_err(|_| ())
            ));
            for (key, mode) in held {
                x.m.remove((pid, key, mode));
            }
            settle(c, s, x.m);
        }
        Ok(None) if polls == Some(0) => x.m.check(),
        Ok(None) => {
            // dropped at a random await point: diesel-async cannot tell what the server is in
            x.m.begin(format!("level {d}: transaction future dropped"));
            s.tx = Tx::Unknown;
            for (key, mode) in held {
                x.m.remove((pid, key, mode));
                x.m.maybe((pid, key, mode));
            }
            if let Some((key, mode)) = pending {
                x.m.maybe((pid, key, mode));
            }
            x.m.check();
        }
        Err(payload) => {
            // diesel-async does not roll back on a panic: the transaction stays open
            let at_guard = payload.downcast_ref::<ModelPanic>().map(|p| p.at_guard);
            s.tx = Tx::Dangling { aborted };
            s.xact = held;
            s.lingering = lingering;
            match at_guard {
                Some(false) => x.m.check(),
                _ => resume_unwind(payload),
            }
        }
    }
}

/// The caller rolls back a transaction a panic left open: it works, unless the connection was
/// marked broken (a guard dropped inside it).
pub async fn rollback_dangling(c: &mut AsyncPgConnection, s: &mut Session, x: &mut ACtx<'_>) {
    x.m.begin(format!(
        "rollback dangling transaction ({:?}, broken {})",
        s.tx, s.broken
    ));
    let r = AnsiTransactionManager::rollback_transaction(c).await;
    match r {
        Ok(()) => {
            s.tx = Tx::None;
            s.broken = false;
            for (key, mode) in std::mem::take(&mut s.xact) {
                x.m.remove((s.pid, key, mode));
            }
            query(c, x.m)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", x.m.at()));
            settle(c, s, x.m);
        }
        Err(DieselError::BrokenTransactionManager) => {
            s.broken = true;
            x.m.check();
        }
        Err(e) => panic!("{}: the caller's rollback failed: {e}", x.m.at()),
    }
}
