//! The sync kinds: a bare `PgConnection` and r2d2 guards, driven as a stack of guards per
//! connection (each level owns one guard and runs further steps on its connection).

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

use diesel::connection::{AnsiTransactionManager, SimpleConnection, TransactionManager};
use diesel::prelude::*;
use diesel_advisory::Error;
use diesel_advisory::prelude::*;
use rand::Rng;

use super::model::{Contender, Model};
use super::world::*;

pub struct Ctx<'a> {
    pub m: &'a mut Model,
    pub contender: &'a mut Contender,
    pub poison: Poison,
    pub steps: usize,
}

impl Ctx<'_> {
    pub fn done(&self) -> bool {
        self.m.step >= self.steps
    }
}

fn query(c: &mut PgConnection, m: &mut Model) -> QueryResult<()> {
    let (sql, n) = numbered(m);
    let got = diesel::sql_query(sql).get_result::<N>(c)?;
    assert_eq!(got.n, n, "{}: a statement got another's answer", m.at());
    Ok(())
}

/// A successful statement on `s`: unless the session is aborted, it works and returns its own
/// answer (I2), and once it is answered nothing queued before lingers (I1).
pub fn query_step(c: &mut PgConnection, s: &mut Session, x: &mut Ctx<'_>) {
    x.m.begin("query");
    let r = query(c, x.m);
    match s.tx {
        Tx::Dangling { aborted: true } => {
            assert!(r.is_err(), "{}: ran in an aborted transaction", x.m.at())
        }
        _ => r.unwrap_or_else(|e| panic!("{}: {e}", x.m.at())),
    }
    if !s.broken {
        x.m.settle(s.pid);
    }
    x.m.check();
}

pub fn acquire<'c>(
    c: &'c mut PgConnection,
    key: advisory_common::Key,
    mode: advisory_common::sql::Mode,
    how: How,
) -> Result<Option<diesel_advisory::LockGuard<'c>>, Error> {
    use advisory_common::sql::Mode::*;
    match (how, mode) {
        (How::Block, Exclusive) => c.advisory_lock(key).map(Some),
        (How::Block, Shared) => c.advisory_lock_shared(key).map(Some),
        (How::Try, Exclusive) => c.try_advisory_lock(key),
        (How::Try, Shared) => c.try_advisory_lock_shared(key),
        (How::Timeout(t), Exclusive) => c.advisory_lock_timeout(key, t).map(Some),
        (How::Timeout(t), Shared) => c.advisory_lock_shared_timeout(key, t).map(Some),
    }
}

/// Run steps on `c` (the connection of stack level `d` of session `s`) until a pop or the end.
pub fn level(c: &mut PgConnection, s: &mut Session, d: usize, x: &mut Ctx<'_>) -> Exit {
    loop {
        if x.done() {
            return Exit::End;
        }
        match x.m.rng.gen_range(0..100) {
            0..=14 if d > 0 => {
                return if x.m.chance(0.5) {
                    Exit::Drop
                } else {
                    Exit::Release
                };
            }
            0..=39 => acquire_step(c, s, d, x),
            40..=52 => query_step(c, s, x),
            53..=59 => {
                x.m.begin("failing query");
                assert!(c.batch_execute("SELECT 1/0").is_err());
                if let Tx::Dangling { .. } = s.tx {
                    // the dangling transaction aborts here, releasing its locks (unless a
                    // lingering savepoint's subtransaction is what aborts)
                    s.tx = Tx::Dangling { aborted: true };
                    if !s.lingering {
                        for (key, mode) in std::mem::take(&mut s.xact) {
                            x.m.remove((s.pid, key, mode));
                        }
                    }
                }
                x.m.check();
            }
            60..=79 if s.tx == Tx::None && !s.broken => transaction_step(c, s, d, x),
            60..=79 => rollback_dangling(c, s, x),
            _ => x.contender.step(x.m),
        }
    }
}

fn acquire_step(c: &mut PgConnection, s: &mut Session, d: usize, x: &mut Ctx<'_>) {
    let (key, mode) = (x.m.key(), x.m.mode());
    let how = pick_how(x.m, x.m.conflict(s.pid, key, mode), false);
    let expect = predict(x.m, s, key, mode, how, x.poison);
    x.m.begin(format!(
        "level {d}: acquire {key} {mode:?} {how:?}, expect {expect:?}"
    ));
    let r = acquire(c, key, mode, how);
    let got = got(&r);
    assert!(
        allowed(expect, got, how, x.poison),
        "{}: got {got:?} ({:?})",
        x.m.at(),
        r.as_ref().err()
    );
    let Ok(Some(g)) = r else {
        // a refused or failed acquire leaves nothing (a poisoned one undid its grant at once)
        x.m.check();
        return;
    };
    x.m.add((s.pid, key, mode));
    x.m.check();
    let hold = (s.pid, key, mode);
    // The guard's whole life, so that a panic inside a transaction on its connection can drop it
    // while unwinding (inside that still open transaction).
    let r = catch_unwind(AssertUnwindSafe(|| {
        let mut g = g;
        let exit = level(&mut g, s, d + 1, x);
        let exit = if exit == Exit::End {
            if x.m.chance(0.5) {
                Exit::Drop
            } else {
                Exit::Release
            }
        } else {
            exit
        };
        x.m.begin(format!(
            "level {d}: {exit:?} guard {key} {mode:?} (tx {:?}, broken {})",
            s.tx, s.broken
        ));
        let r = if exit == Exit::Release {
            g.release()
        } else {
            drop(g);
            Ok(())
        };
        (exit, r)
    }));
    match r {
        Ok((exit, r)) => after_unlock(s, x, hold, exit == Exit::Release, r),
        Err(payload) => match payload.downcast_ref::<ModelPanic>() {
            Some(p) if p.at_guard => {
                x.m.begin(format!(
                    "level {d}: guard {key} dropped by a panic (tx {:?})",
                    s.tx
                ));
                // dropped while unwinding, inside the transaction left open by the panic
                let failed = matches!(s.tx, Tx::Dangling { aborted: true });
                after_unlock(
                    s,
                    x,
                    hold,
                    false,
                    if failed {
                        Err(Error::NotHeld { key })
                    } else {
                        Ok(())
                    },
                );
            }
            _ => resume_unwind(payload),
        },
    }
}

/// After a guard's unlock: it succeeds unless its transaction is aborted, and then the session is
/// marked broken (its hold stays until the connection is closed or discarded).
fn after_unlock(
    s: &mut Session,
    x: &mut Ctx<'_>,
    hold: super::model::Hold,
    explicit: bool,
    r: Result<(), Error>,
) {
    let aborted = matches!(s.tx, Tx::Dangling { aborted: true });
    if aborted {
        if explicit {
            assert!(
                r.is_err(),
                "{}: release in an aborted transaction succeeded",
                x.m.at()
            );
        }
        s.broken = true;
    } else {
        r.unwrap_or_else(|e| panic!("{}: release failed: {e}", x.m.at()));
        x.m.remove(hold);
    }
    x.m.check();
}

fn transaction_step(c: &mut PgConnection, s: &mut Session, d: usize, x: &mut Ctx<'_>) {
    x.m.begin(format!("level {d}: begin transaction"));
    let mut held = Vec::new();
    let mut aborted = false;
    let mut lingering = false;
    let r = catch_unwind(AssertUnwindSafe(|| {
        c.transaction::<(), Error, _>(|c| {
            let mut t = TxState {
                depth: 1,
                held: &mut held,
                aborted: &mut aborted,
                lingering: &mut lingering,
            };
            tx_body(c, s, d, &mut t, x)
        })
    }));
    match r {
        Ok(r) => {
            // committed (Ok) or rolled back (Err): either way the transaction's locks are gone
            x.m.begin(format!(
                "level {d}: transaction ended {:?}",
                r.as_ref().map_err(|_| ())
            ));
            for (key, mode) in held {
                x.m.remove((s.pid, key, mode));
            }
            x.m.check();
        }
        Err(payload) => {
            let at_guard = payload.downcast_ref::<ModelPanic>().map(|p| p.at_guard);
            // diesel does not roll back on a panic: the transaction stays open
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

/// One (sub)transaction level inside `tx_body`.
struct TxState<'a> {
    depth: u32,
    held: &'a mut Vec<(advisory_common::Key, advisory_common::sql::Mode)>,
    aborted: &'a mut bool,
    lingering: &'a mut bool,
}

/// Steps inside a transaction (diesel depth `depth`); `Ok` commits, `Err` rolls back.
fn tx_body(
    c: &mut PgConnection,
    s: &Session,
    d: usize,
    t: &mut TxState<'_>,
    x: &mut Ctx<'_>,
) -> Result<(), Error> {
    let depth = t.depth;
    loop {
        match x.m.rng.gen_range(0..100) {
            _ if x.done() => {
                return if *t.aborted {
                    Err(Error::NotHeld { key: x.m.keys[0] })
                } else {
                    Ok(())
                };
            }
            0..=19 => {
                x.m.begin(format!("tx {depth}: query"));
                let r = query(c, x.m);
                assert_eq!(r.is_err(), *t.aborted, "{}: {r:?}", x.m.at());
            }
            20..=29 => {
                x.m.begin(format!("tx {depth}: failing query"));
                assert!(c.batch_execute("SELECT 1/0").is_err());
                *t.aborted = true;
                // PostgreSQL aborts the (sub)transaction at the error and releases its locks
                // then; after a savepoint rollback that is the lingering savepoint's, not ours
                if !*t.lingering {
                    for (key, mode) in t.held.drain(..) {
                        x.m.remove((s.pid, key, mode));
                    }
                }
            }
            30..=44 if !*t.aborted && depth == 1 && !*t.lingering => {
                let (key, mode) = (x.m.key(), x.m.mode());
                x.m.begin(format!("tx {depth}: try_xact_lock {key} {mode:?}"));
                let (certain, maybe) = x.m.conflict(s.pid, key, mode);
                let got = match mode {
                    advisory_common::sql::Mode::Exclusive => c.try_xact_lock(key),
                    advisory_common::sql::Mode::Shared => c.try_xact_lock_shared(key),
                }
                .unwrap_or_else(|e| panic!("{}: {e}", x.m.at()));
                if !maybe {
                    assert_eq!(got, !certain, "{}", x.m.at());
                }
                if got {
                    x.m.add((s.pid, key, mode));
                    t.held.push((key, mode));
                }
            }
            45..=54 => {
                let (key, mode) = (x.m.key(), x.m.mode());
                x.m.begin(format!("tx {depth}: session lock {key} refused"));
                let r = acquire(c, key, mode, How::Try);
                assert!(
                    matches!(r, Err(Error::AlreadyInTransaction { .. })),
                    "{}: {:?}",
                    x.m.at(),
                    r.map(|g| g.is_some())
                );
            }
            55..=64 if !*t.aborted && depth < 3 => {
                x.m.begin(format!("tx {depth}: savepoint"));
                let (mut inner_aborted, mut inner_held, mut inner_lingering) =
                    (false, Vec::new(), false);
                let r = c.transaction::<(), Error, _>(|c| {
                    let mut inner = TxState {
                        depth: depth + 1,
                        held: &mut inner_held,
                        aborted: &mut inner_aborted,
                        lingering: &mut inner_lingering,
                    };
                    tx_body(c, s, d, &mut inner, x)
                });
                assert!(inner_held.is_empty());
                // a savepoint rolled back (or released) leaves the outer transaction usable;
                // rolled back, diesel leaves the savepoint itself in place
                *t.lingering |= r.is_err();
            }
            65..=79 => {
                x.m.begin(format!(
                    "tx {depth}: end ({})",
                    if *t.aborted { "rollback" } else { "commit" }
                ));
                return if *t.aborted {
                    Err(Error::NotHeld { key: x.m.keys[0] })
                } else {
                    Ok(())
                };
            }
            80..=87 => {
                x.m.begin(format!("tx {depth}: rollback"));
                return Err(Error::NotHeld { key: x.m.keys[0] });
            }
            88..=91 if depth == 1 => {
                let at_guard = d > 0 && x.m.chance(0.6);
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
}

/// The caller rolls back a transaction a panic left open: works unless the session was marked
/// broken (I2: the drop-time unlock never made the caller's own rollback fail).
pub fn rollback_dangling(c: &mut PgConnection, s: &mut Session, x: &mut Ctx<'_>) {
    x.m.begin(format!(
        "rollback dangling transaction ({:?}, broken {})",
        s.tx, s.broken
    ));
    let r = AnsiTransactionManager::rollback_transaction(c);
    if s.broken {
        assert!(r.is_err(), "{}: a broken connection rolled back", x.m.at());
    } else if s.tx != Tx::None {
        r.unwrap_or_else(|e| panic!("{}: the caller's rollback failed: {e}", x.m.at()));
        s.tx = Tx::None;
        for (key, mode) in std::mem::take(&mut s.xact) {
            x.m.remove((s.pid, key, mode));
        }
    }
    x.m.check();
}
