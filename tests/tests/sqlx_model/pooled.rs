//! Owned connections: a `Transaction<'static>` from `pool.begin()` (and `begin_with_xact_lock`),
//! and `PgPool` guards (`PoolLockGuard`), which end in any order, on any thread, after their
//! runtime is gone.

use std::pin::pin;

use advisory_common::sql::Mode;
use rand::Rng;
use sqlx::{PgPool, Postgres, Transaction};
use sqlx_advisory::prelude::*;
use sqlx_advisory::{Error, PoolLockGuard};

use crate::borrowed::{TIMEOUT, Wait, cancelled_query, failing_query, ok_query, transaction, wait};
use crate::world::{World, key, pid_of, poll_n, within};

async fn new_tx(
    w: &mut World,
    pool: &PgPool,
) -> (Transaction<'static, Postgres>, i32, Vec<(i64, Mode)>) {
    let mut xact = Vec::new();
    if w.chance(0.4) {
        let (k, mode, mut how) = (w.key(), w.mode(), wait(w));
        let certain = w.blocked(-1, k, mode);
        let blocked = w.maybe_blocked(-1, k, mode);
        let cancel = w.chance(0.3).then(|| w.rng.gen_range(1..4));
        if how == Wait::Try || (blocked && how == Wait::Block && cancel.is_none()) {
            how = Wait::Timeout;
        }
        let mut fut = Box::pin(async move {
            match (mode, how) {
                (Mode::Exclusive, Wait::Timeout) => {
                    pool.begin_with_xact_lock_timeout(key(k), TIMEOUT).await
                }
                (Mode::Shared, Wait::Timeout) => {
                    pool.begin_with_xact_lock_shared_timeout(key(k), TIMEOUT)
                        .await
                }
                (Mode::Exclusive, _) => pool.begin_with_xact_lock(key(k)).await,
                (Mode::Shared, _) => pool.begin_with_xact_lock_shared(key(k)).await,
            }
        });
        let res = match cancel {
            Some(n) => poll_n(fut.as_mut(), n).await,
            None => Some(within(w, fut.as_mut()).await),
        };
        drop(fut);
        w.note(format!(
            "begin_with_xact_lock {k} {mode:?} {how:?} cancel={cancel:?} blocked={blocked} -> {:?}",
            res.as_ref().map(|r| r.as_ref().map(|_| ()))
        ));
        match res {
            None => {
                if blocked {
                    w.free(k).await;
                }
                // a discarded checkout's session ends soon after: wait for it
                w.check(true).await;
            }
            Some(Ok(mut tx)) if !certain => {
                let pid = pid_of(&mut tx).await;
                w.add(pid, k, mode);
                xact.push((k, mode));
                return (tx, pid, xact);
            }
            Some(Err(Error::Timeout { .. })) if blocked => {}
            Some(other) => w.fail(&format!(
                "begin_with_xact_lock answered {:?} with blocked={blocked}",
                other.map(drop)
            )),
        }
    }
    let mut tx = pool.begin().await.unwrap();
    let pid = pid_of(&mut tx).await;
    w.assert_pid_holds_nothing(pid, "a transaction just begun on a pooled connection")
        .await;
    (tx, pid, xact)
}

/// `Transaction<'static>` from the pool: transaction locks (maybe cancelled), a refused session
/// lock, failing statements, and the transaction's end in every way; then a new one.
pub async fn tx_kind(w: &mut World, pool: &PgPool, mut budget: usize) {
    let (mut tx, mut pid, mut xact) = new_tx(w, pool).await;
    w.live.insert(pid);
    let mut aborted = false;
    let mut must_end = false;
    while budget > 0 {
        budget -= 1;
        // after a cancelled transaction lock its outcome is unknown until the transaction ends:
        // end it now
        let step = if must_end {
            60
        } else {
            w.rng.gen_range(0..100)
        };
        match step {
            0..=29 => {
                let (k, mode, mut how) = (w.key(), w.mode(), wait(w));
                let certain = w.blocked(pid, k, mode);
                let blocked = w.maybe_blocked(pid, k, mode);
                let cancel = w.chance(0.25).then(|| w.rng.gen_range(1..4));
                if blocked && how == Wait::Block && cancel.is_none() {
                    how = Wait::Timeout;
                }
                let mut fut = Box::pin(xact_acquire(&mut tx, k, mode, how));
                let res = match cancel {
                    Some(n) => poll_n(fut.as_mut(), n).await,
                    None => Some(within(w, fut.as_mut()).await),
                };
                drop(fut);
                w.note(format!("xact {k} {mode:?} {how:?} cancel={cancel:?} blocked={blocked} aborted={aborted} -> {res:?}"));
                match res {
                    // Outcome unknown until the transaction ends (a granted transaction lock
                    // stays until then; a cancelled savepoint batch may leave it aborted).
                    None => {
                        if blocked {
                            w.free(k).await;
                        }
                        must_end = true;
                        w.live.remove(&pid);
                    }
                    Some(Err(_)) if aborted => {}
                    Some(Ok(true)) if !certain => {
                        w.add(pid, k, mode);
                        xact.push((k, mode));
                    }
                    Some(Ok(false) | Err(Error::Timeout { .. })) if blocked => {}
                    Some(other) => w.fail(&format!(
                        "xact lock answered {other:?} with blocked={blocked}"
                    )),
                }
            }
            30..=39 => ok_query(w, &mut tx, aborted).await,
            40..=46 => {
                w.note("tx failing query");
                failing_query(w, &mut tx, aborted).await;
                aborted = true;
                // PostgreSQL aborts the transaction at the error (AbortTransaction), which
                // releases its locks then, not at the ROLLBACK
                for (k, m) in xact.drain(..) {
                    w.remove(pid, k, m);
                }
            }
            47..=51 => {
                let k = w.key();
                if !matches!(
                    within(w, tx.advisory_lock(key(k))).await,
                    Err(Error::AlreadyInTransaction { .. })
                ) {
                    w.fail("a session lock inside a transaction was not refused");
                }
            }
            52..=57 => w.contender_step().await,
            58..=75 => {
                let how = w.rng.gen_range(0..4);
                w.note(format!("tx end {how} aborted={aborted}"));
                match how {
                    // After a cancelled request the connection still owes that request's
                    // answer, and sqlx hands it to the next statement (as for any cancelled
                    // query): only then may the end of the transaction report an error.
                    0 => {
                        if let Err(e) = tx.commit().await
                            && !must_end
                        {
                            w.fail(&format!("I2: commit() answered {e}"));
                        }
                    }
                    1 => {
                        if let Err(e) = tx.rollback().await
                            && !must_end
                        {
                            w.fail(&format!("I2: rollback() answered {e}"));
                        }
                    }
                    2 => drop(tx),
                    _ => {
                        let fut = pin!(tx.commit());
                        let _ = poll_n(fut, 1).await;
                    }
                }
                for (k, m) in xact.drain(..) {
                    w.remove(pid, k, m);
                }
                w.live.remove(&pid);
                w.check(true).await;
                (tx, pid, xact) = new_tx(w, pool).await;
                w.live.insert(pid);
                (aborted, must_end) = (false, false);
            }
            _ => continue,
        }
        if !must_end && w.chance(0.5) {
            ok_query(w, &mut tx, aborted).await;
            w.check(true).await;
        } else {
            w.check(false).await;
        }
    }
    drop(tx);
    for (k, m) in xact {
        w.remove(pid, k, m);
    }
    w.live.remove(&pid);
    w.check(true).await;
}

async fn xact_acquire(
    tx: &mut Transaction<'static, Postgres>,
    k: i64,
    mode: Mode,
    how: Wait,
) -> Result<bool, Error> {
    match (mode, how) {
        (Mode::Exclusive, Wait::Block) => tx.xact_lock(key(k)).await.map(|()| true),
        (Mode::Shared, Wait::Block) => tx.xact_lock_shared(key(k)).await.map(|()| true),
        (Mode::Exclusive, Wait::Try) => tx.try_xact_lock(key(k)).await,
        (Mode::Shared, Wait::Try) => tx.try_xact_lock_shared(key(k)).await,
        (Mode::Exclusive, Wait::Timeout) => {
            tx.xact_lock_timeout(key(k), TIMEOUT).await.map(|()| true)
        }
        (Mode::Shared, Wait::Timeout) => tx
            .xact_lock_shared_timeout(key(k), TIMEOUT)
            .await
            .map(|()| true),
    }
}

async fn pool_acquire(
    pool: &PgPool,
    k: i64,
    mode: Mode,
    how: Wait,
) -> Result<Option<PoolLockGuard>, Error> {
    match (mode, how) {
        (Mode::Exclusive, Wait::Block) => pool.advisory_lock(key(k)).await.map(Some),
        (Mode::Shared, Wait::Block) => pool.advisory_lock_shared(key(k)).await.map(Some),
        (Mode::Exclusive, Wait::Try) => pool.try_advisory_lock(key(k)).await,
        (Mode::Shared, Wait::Try) => pool.try_advisory_lock_shared(key(k)).await,
        (Mode::Exclusive, Wait::Timeout) => {
            pool.advisory_lock_timeout(key(k), TIMEOUT).await.map(Some)
        }
        (Mode::Shared, Wait::Timeout) => pool
            .advisory_lock_shared_timeout(key(k), TIMEOUT)
            .await
            .map(Some),
    }
}

/// Use every guard's connection (its answer checked), then compare the model exactly, waiting for
/// closed sessions to end.
async fn settle(w: &mut World, guards: &mut [Held]) {
    for h in guards.iter_mut() {
        ok_query(w, &mut h.g, false).await;
    }
    w.synced();
    w.check(true).await;
}

struct Held {
    g: PoolLockGuard,
    pid: i32,
    k: i64,
    mode: Mode,
}

/// `PgPool` guards: acquired (maybe cancelled, maybe on a runtime that is then shut down), used
/// (queries, failing and cancelled ones, transactions), and ended in any order.
pub async fn pool_kind(w: &mut World, pool: &PgPool, mut budget: usize) {
    let mut guards: Vec<Held> = Vec::new();
    while budget > 0 {
        budget -= 1;
        let i = if guards.is_empty() {
            0
        } else {
            w.rng.gen_range(0..guards.len())
        };
        match w.rng.gen_range(0..100) {
            0..=29 if guards.len() < 3 => {
                let (k, mode, mut how) = (w.key(), w.mode(), wait(w));
                let certain = w.blocked(-1, k, mode);
                let blocked = w.maybe_blocked(-1, k, mode);
                let cancel = w.chance(0.25).then(|| w.rng.gen_range(1..4));
                // a cancelled wait leaves its closed checkout's backend queued until the wait ends: bound it
                if blocked && how == Wait::Block {
                    how = Wait::Timeout;
                }
                let mut fut = Box::pin(pool_acquire(pool, k, mode, how));
                let res = match cancel {
                    Some(n) => poll_n(fut.as_mut(), n).await,
                    None => Some(within(w, fut.as_mut()).await),
                };
                drop(fut);
                w.note(format!(
                    "pool lock {k} {mode:?} {how:?} cancel={cancel:?} blocked={blocked} -> {:?}",
                    res.as_ref().map(|r| r.as_ref().map(|g| g.is_some()))
                ));
                match res {
                    None => {
                        if blocked {
                            w.free(k).await;
                        }
                        settle(w, &mut guards).await; // the discarded checkout's session ends
                    }
                    Some(Ok(Some(mut g))) if !certain => {
                        let pid = pid_of(&mut g).await;
                        w.add(pid, k, mode);
                        w.live.insert(pid);
                        guards.push(Held { g, pid, k, mode });
                    }
                    Some(Ok(None) | Err(Error::Timeout { .. })) if blocked => {}
                    Some(other) => w.fail(&format!(
                        "pool acquire answered {:?} with blocked={blocked}",
                        other.map(|g| g.is_some())
                    )),
                }
            }
            30..=34 if guards.len() < 3 => {
                // acquired on a runtime that is then shut down, dropped after it (on that thread,
                // outside any runtime); the pool lives on
                let (k, mode) = (w.key(), w.mode());
                let p = pool.clone();
                let got = std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    let g = rt.block_on(async {
                        match mode {
                            Mode::Exclusive => p.try_advisory_lock(key(k)).await,
                            Mode::Shared => p.try_advisory_lock_shared(key(k)).await,
                        }
                    });
                    drop(rt);
                    let got = g.as_ref().map(|g| g.is_some()).map_err(|e| e.to_string());
                    drop(g);
                    got
                })
                .join()
                .unwrap();
                let got = got.unwrap_or_else(|e| {
                    w.fail(&format!("a try on a short-lived runtime failed: {e}"))
                });
                w.note(format!(
                    "guard {k} {mode:?} on a runtime that is gone: granted={got}"
                ));
                if (got && w.blocked(-1, k, mode)) || (!got && !w.maybe_blocked(-1, k, mode)) {
                    w.fail("a try on a short-lived runtime disagrees with the model");
                }
                settle(w, &mut guards).await; // its closed connection's session ends
            }
            35..=49 if !guards.is_empty() => {
                let pid = guards[i].pid;
                match w.rng.gen_range(0..4) {
                    0 => ok_query(w, &mut guards[i].g, false).await,
                    1 => failing_query(w, &mut guards[i].g, false).await,
                    2 => cancelled_query(w, &mut guards[i].g).await,
                    _ => transaction(w, &mut guards[i].g, pid).await,
                }
                w.note(format!("used guard on pid {pid}"));
            }
            50..=54 if !guards.is_empty() => {
                let cancel = w.chance(0.5).then(|| w.rng.gen_range(1..3));
                let fut = pin!(guards[i].g.is_held());
                let res = match cancel {
                    Some(n) => poll_n(fut, n).await,
                    None => Some(fut.await),
                };
                if let Some(r) = res
                    && !matches!(r, Ok(true))
                {
                    w.fail(&format!(
                        "I3: is_held() of a live pool guard answered {r:?}"
                    ));
                }
            }
            55..=84 if !guards.is_empty() => {
                let Held { g, pid, k, mode } = guards.swap_remove(i);
                let how = w.rng.gen_range(0..4);
                w.note(format!("end pool guard {k} {mode:?} on pid {pid}: {how}"));
                match how {
                    0 => drop(g),
                    1 => {
                        if let Err(e) = g.release().await {
                            w.fail(&format!("I3: release() of a live pool guard failed: {e}"));
                        }
                    }
                    2 => {
                        let fut = pin!(g.release());
                        if let Some(Err(e)) = poll_n(fut, w.rng.gen_range(1..3)).await {
                            w.fail(&format!("I3: release() of a live pool guard failed: {e}"));
                        }
                    }
                    _ => std::thread::spawn(move || drop(g)).join().unwrap(),
                }
                w.remove(pid, k, mode);
                w.live.remove(&pid);
                // the unlock is on its way (or the connection closing): other sessions see the
                // key free once the server has run it, which `settle` waits for
                settle(w, &mut guards).await;
            }
            85..=92 => w.contender_step().await,
            _ => continue,
        }
        if w.chance(0.5) {
            settle(w, &mut guards).await;
        } else {
            w.check(false).await;
        }
    }
    for Held { g, pid, k, mode } in guards {
        drop(g);
        w.remove(pid, k, mode);
        w.live.remove(&pid);
    }
    w.check(true).await;
}
