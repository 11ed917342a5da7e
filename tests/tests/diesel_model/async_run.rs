//! diesel-async, borrowed: a stack of guards on one `AsyncPgConnection` (bare, or a pool guard's),
//! with every acquire, release, query and transaction future cancellable at a random poll.

use std::future::{Future, poll_fn};
use std::panic::{AssertUnwindSafe, resume_unwind};
use std::pin::{Pin, pin};
use std::task::Poll;

use advisory_common::Key;
use advisory_common::sql::Mode;
use diesel::result::Error as DieselError;
use diesel_advisory::prelude::*;
use diesel_advisory::{AsyncLockGuard, Error};
use diesel_async::{
    AnsiTransactionManager, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection,
    TransactionManager,
};
use futures::FutureExt;
use rand::Rng;

use super::async_tx::{rollback_dangling, transaction_step};
use super::model::{Contender, Hold, Model};
use super::world::*;

pub struct ACtx<'a> {
    pub m: &'a mut Model,
    pub contender: &'a mut Contender,
    pub poison: Poison,
    pub steps: usize,
}

impl ACtx<'_> {
    pub fn done(&self) -> bool {
        self.m.step >= self.steps
    }

    /// `None` (run to completion) or how many `Pending` polls before the future is dropped.
    pub fn cancel(&mut self, p: f64) -> Option<u32> {
        self.m.chance(p).then(|| match self.m.rng.gen_range(0..10) {
            0 => 0,
            1..=5 => 1,
            6..=7 => 2,
            _ => self.m.rng.gen_range(3..12),
        })
    }
}

/// Run `fut` to completion, or drop it after `polls` polls that returned `Pending`, pausing a
/// little between polls (`pauses` seeds how long) so that answers can arrive: a cancellation at
/// a random await point.
pub async fn run<F: Future>(fut: F, polls: Option<u32>, pauses: u64) -> Option<F::Output> {
    let mut fut = pin!(fut);
    let Some(n) = polls else {
        return Some(fut.await);
    };
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(pauses);
    for i in 0..n {
        if i > 0 {
            if rng.gen_bool(0.5) {
                std::thread::sleep(super::model::micros(&mut rng, 400));
            }
            tokio::task::yield_now().await;
        }
        if let Poll::Ready(v) = poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await {
            return Some(v);
        }
    }
    None
}

/// diesel-async marked the connection broken (`InError`): transactions refused, pools discard it.
pub fn marked_broken(c: &mut AsyncPgConnection) -> bool {
    AnsiTransactionManager::transaction_manager_status_mut(c)
        .transaction_depth()
        .is_err()
}

/// After a completed round trip on `c`: anything queued before it has run, so nothing may linger
/// any more, unless the connection is marked broken or its transaction state is unknown (then
/// holds may stay until it is closed or discarded, and pools discard it).
pub fn settle(c: &mut AsyncPgConnection, s: &mut Session, m: &mut Model) {
    if marked_broken(c) {
        s.broken = true;
    } else if s.tx != Tx::Unknown {
        m.settle(s.pid);
    }
    m.check();
}

pub async fn query(c: &mut AsyncPgConnection, m: &mut Model) -> Result<(), DieselError> {
    let (sql, n) = numbered(m);
    let got = diesel::sql_query(sql).get_result::<N>(c).await?;
    assert_eq!(got.n, n, "{}: a statement got another's answer", m.at());
    Ok(())
}

pub async fn acquire(
    c: &mut AsyncPgConnection,
    key: Key,
    mode: Mode,
    how: How,
) -> Result<Option<AsyncLockGuard<'_>>, Error> {
    match (how, mode) {
        (How::Block, Mode::Exclusive) => c.advisory_lock(key).await.map(Some),
        (How::Block, Mode::Shared) => c.advisory_lock_shared(key).await.map(Some),
        (How::Try, Mode::Exclusive) => c.try_advisory_lock(key).await,
        (How::Try, Mode::Shared) => c.try_advisory_lock_shared(key).await,
        (How::Timeout(t), Mode::Exclusive) => c.advisory_lock_timeout(key, t).await.map(Some),
        (How::Timeout(t), Mode::Shared) => c.advisory_lock_shared_timeout(key, t).await.map(Some),
    }
}

type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// Run steps on `c` (stack level `d` of session `s`) until a pop or the end.
pub fn level<'a>(
    c: &'a mut AsyncPgConnection,
    s: &'a mut Session,
    d: usize,
    parent: Option<(Key, Mode)>,
    x: &'a mut ACtx<'_>,
) -> Boxed<'a, Exit> {
    Box::pin(async move {
        loop {
            if x.done() {
                return Exit::End;
            }
            match x.m.rng.gen_range(0..100) {
                0..=11 if d > 0 => {
                    return if x.m.chance(0.5) {
                        Exit::Drop
                    } else {
                        Exit::Release
                    };
                }
                0..=39 => acquire_step(c, s, d, parent, x).await,
                40..=51 => {
                    let polls = x.cancel(0.25);
                    x.m.begin(format!("level {d}: query (cancel {polls:?})"));
                    let pauses = x.m.rng.r#gen();
                    match run(query(c, x.m), polls, pauses).await {
                        Some(r) => {
                            match s.tx {
                                Tx::Dangling { aborted: true } => {
                                    assert!(r.is_err(), "{}", x.m.at())
                                }
                                Tx::Unknown => {}
                                _ => r.unwrap_or_else(|e| panic!("{}: {e}", x.m.at())),
                            }
                            settle(c, s, x.m);
                        }
                        None => x.m.check(),
                    }
                }
                52..=57 => {
                    x.m.begin(format!("level {d}: failing query"));
                    assert!(c.batch_execute("SELECT 1/0").await.is_err());
                    if let Tx::Dangling { .. } = s.tx {
                        // aborted; its locks go right after the error is reported
                        s.tx = Tx::Dangling { aborted: true };
                        if !s.lingering {
                            for (key, mode) in std::mem::take(&mut s.xact) {
                                x.m.remove((s.pid, key, mode));
                                x.m.maybe((s.pid, key, mode));
                            }
                        }
                    }
                    x.m.check();
                }
                58..=79 if s.tx == Tx::None && !s.broken => transaction_step(c, s, d, x).await,
                58..=79 if matches!(s.tx, Tx::Dangling { .. }) => rollback_dangling(c, s, x).await,
                _ => x.contender.step(x.m),
            }
        }
    })
}

async fn acquire_step(
    c: &mut AsyncPgConnection,
    s: &mut Session,
    d: usize,
    parent: Option<(Key, Mode)>,
    x: &mut ACtx<'_>,
) {
    // often the parent's key and mode again: a re-entrant hold on the same session
    let (key, mode) = match parent {
        Some(p) if x.m.chance(0.4) => p,
        _ => (x.m.key(), x.m.mode()),
    };
    let cancel = x.cancel(0.35);
    let others = x.m.conflict(s.pid, key, mode);
    let only_contender = !x.m.conflict_besides(s.pid, x.contender.pid, key, mode);
    let how = pick_how(x.m, others, cancel.is_some() && only_contender);
    let expect = predict(x.m, s, key, mode, how, x.poison);
    x.m.begin(format!(
        "level {d}: acquire {key} {mode:?} {how:?} (cancel {cancel:?}), expect {expect:?}"
    ));
    let pauses = x.m.rng.r#gen();
    let g = match run(acquire(c, key, mode, how), cancel, pauses).await {
        None => {
            // cancelled: granted or not, the unlock is queued behind it; until the session's
            // next statement is answered it may hold the key; a wait for the contender ends now
            x.m.maybe((s.pid, key, mode));
            if others.0 || others.1 {
                x.contender.release_key(x.m, key);
            }
            x.m.check();
            return;
        }
        Some(r) => {
            let got = got(&r);
            assert!(
                allowed(expect, got, how, x.poison),
                "{}: got {got:?} ({:?})",
                x.m.at(),
                r.as_ref().err()
            );
            match r {
                Ok(Some(g)) => g,
                _ => {
                    if got == Got::Database {
                        // unknown outcome (poisoned boundary): the adapter queued the unlock
                        x.m.maybe((s.pid, key, mode));
                    }
                    x.m.check();
                    return;
                }
            }
        }
    };
    x.m.add((s.pid, key, mode));
    x.m.check();
    let hold = (s.pid, key, mode);
    let r = AssertUnwindSafe(async {
        let mut g = g;
        let exit = level(&mut g, s, d + 1, Some((key, mode)), x).await;
        let exit = if exit == Exit::End {
            if x.m.chance(0.5) {
                Exit::Drop
            } else {
                Exit::Release
            }
        } else {
            exit
        };
        let polls = if exit == Exit::Release {
            x.cancel(0.3)
        } else {
            None
        };
        x.m.begin(format!(
            "level {d}: {exit:?} guard {key} {mode:?} (cancel {polls:?}, tx {:?})",
            s.tx
        ));
        if exit == Exit::Release {
            run(g.release(), polls, x.m.rng.r#gen()).await
        } else {
            drop(g);
            None
        }
    })
    .catch_unwind()
    .await;
    match r {
        Ok(released) => after_unlock(c, s, x, hold, released).await,
        Err(payload) => match payload.downcast_ref::<ModelPanic>() {
            Some(p) if p.at_guard => {
                x.m.begin(format!(
                    "level {d}: guard {key} dropped after a panic (tx {:?})",
                    s.tx
                ));
                after_unlock(c, s, x, hold, None).await;
            }
            _ => resume_unwind(payload),
        },
    }
}

/// After a guard ended: `released` is the answer of a completed `release()`, `None` for a drop
/// (the unlock queued) or a cancelled release (queued unless already sent). In a clean session
/// the hold is gone once the next statement is answered. Where the unlock may fail unseen (the
/// guard found a transaction open or interrupted) the connection must be marked broken.
async fn after_unlock(
    c: &mut AsyncPgConnection,
    s: &mut Session,
    x: &mut ACtx<'_>,
    hold: Hold,
    released: Option<Result<(), Error>>,
) {
    x.m.remove(hold);
    let unseen = match released {
        Some(Ok(())) => false,
        Some(Err(e)) => {
            // outside a transaction only on a poisoned session: the exact release asks `pg_locks`
            assert!(
                s.tx != Tx::None || x.poison == Poison::HeldFails,
                "{}: release failed outside a transaction: {e}",
                x.m.at()
            );
            true
        }
        None => true,
    };
    if unseen {
        x.m.maybe(hold);
        if s.tx != Tx::None {
            assert!(
                marked_broken(c),
                "{}: guard ended inside a transaction, connection not marked broken",
                x.m.at()
            );
        }
    }
    if marked_broken(c) {
        s.broken = true;
    }
    x.m.check();
}
