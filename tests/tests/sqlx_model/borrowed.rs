//! Borrowed guards (`LockGuard` on `&mut PgConnection`, also reached through a `PoolConnection`):
//! guards nest as Rust's borrows force (each on the previous guard's connection), so the driver
//! recurses, one level per guard, and a level ends with the way its guard ends.

use std::pin::pin;
use std::time::Duration;

use advisory_common::sql::Mode;
use futures::future::BoxFuture;
use rand::Rng;
use sqlx::{Connection, PgConnection};
use sqlx_advisory::prelude::*;
use sqlx_advisory::{Error, LockGuard};

use crate::world::{World, key, poll_n, within};

pub const TIMEOUT: Duration = Duration::from_millis(20);

/// How a level (and so its guard) ends.
pub enum Exit {
    Drop,
    Release,
    /// `release()` polled this many times, then dropped.
    CancelRelease(u32),
    /// Ask the guard `is_held()` (possibly cancelled), then go on at that level.
    IsHeld(Option<u32>),
    /// Depth 0 of a `PoolConnection`: give it back to the pool and check out again.
    ReturnToPool,
    End,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Wait {
    Block,
    Try,
    Timeout,
}

pub fn wait(w: &mut World) -> Wait {
    match w.rng.gen_range(0..3) {
        0 => Wait::Block,
        1 => Wait::Try,
        _ => Wait::Timeout,
    }
}

pub async fn acquire(
    conn: &mut PgConnection,
    k: i64,
    mode: Mode,
    wait: Wait,
) -> Result<Option<LockGuard<'_>>, Error> {
    match (mode, wait) {
        (Mode::Exclusive, Wait::Block) => conn.advisory_lock(key(k)).await.map(Some),
        (Mode::Shared, Wait::Block) => conn.advisory_lock_shared(key(k)).await.map(Some),
        (Mode::Exclusive, Wait::Try) => conn.try_advisory_lock(key(k)).await,
        (Mode::Shared, Wait::Try) => conn.try_advisory_lock_shared(key(k)).await,
        (Mode::Exclusive, Wait::Timeout) => {
            conn.advisory_lock_timeout(key(k), TIMEOUT).await.map(Some)
        }
        (Mode::Shared, Wait::Timeout) => conn
            .advisory_lock_shared_timeout(key(k), TIMEOUT)
            .await
            .map(Some),
    }
}

/// A query that must get its own answer (I2); `aborted`: inside an aborted transaction, where the
/// own answer is 25P02.
pub async fn ok_query(w: &mut World, conn: &mut PgConnection, aborted: bool) {
    let n: i32 = w.rng.gen_range(1..1_000_000);
    let res: Result<i32, _> = sqlx::query_scalar("SELECT $1::int4")
        .bind(n)
        .fetch_one(conn)
        .await;
    match (res, aborted) {
        (Ok(v), false) if v == n => {}
        (Err(e), true) if code(&e) == Some("25P02") => {}
        (other, _) => w.fail(&format!("I2: SELECT {n} answered {other:?}")),
    }
}

pub async fn failing_query(w: &mut World, conn: &mut PgConnection, aborted: bool) {
    let e = sqlx::query("SELECT 1/0").execute(conn).await.unwrap_err();
    let want = if aborted { "25P02" } else { "22012" };
    if code(&e) != Some(want) {
        w.fail(&format!("I2: SELECT 1/0 answered {e} (wanted {want})"));
    }
}

/// A query whose future is dropped after a poll or two: its answer is still owed.
pub async fn cancelled_query(w: &mut World, conn: &mut PgConnection) {
    let polls = w.rng.gen_range(1..3);
    let fut = pin!(sqlx::query("SELECT pg_sleep(0.005)").execute(conn));
    let _ = poll_n(fut, polls).await;
}

fn code(e: &sqlx::Error) -> Option<&str> {
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| match c {
            std::borrow::Cow::Borrowed(s) => s,
            std::borrow::Cow::Owned(_) => "other",
        })
}

/// After a step: half the time use the connection (its answer checked) and compare the model
/// exactly; otherwise check only that owned holds are there.
async fn after(w: &mut World, conn: &mut PgConnection) {
    if w.chance(0.5) {
        ok_query(w, conn, false).await;
        w.synced();
        w.check(true).await;
    } else {
        w.check(false).await;
    }
}

/// A transaction on the connection: a few statements (a failing one aborts it), transaction locks,
/// a refused session lock, then commit / rollback / drop / a cancelled commit.
pub async fn transaction(w: &mut World, conn: &mut PgConnection, pid: i32) {
    let mut tx = conn.begin().await.unwrap();
    let mut aborted = false;
    let mut xact = Vec::new();
    for _ in 0..w.rng.gen_range(0..4) {
        match w.rng.gen_range(0..4) {
            0 => ok_query(w, &mut tx, aborted).await,
            1 => {
                failing_query(w, &mut tx, aborted).await;
                aborted = true;
                // PostgreSQL aborts the transaction at the error, releasing its locks then
                for (k, m) in xact.drain(..) {
                    w.remove(pid, k, m);
                }
            }
            2 => {
                let (k, mode) = (w.key(), w.mode());
                let res = match mode {
                    Mode::Exclusive => tx.try_xact_lock(key(k)).await,
                    Mode::Shared => tx.try_xact_lock_shared(key(k)).await,
                };
                w.note(format!("  tx try_xact {k} {mode:?} -> {res:?}"));
                match res {
                    Ok(got)
                        if !aborted
                            && ((got && !w.blocked(pid, k, mode))
                                || (!got && w.maybe_blocked(pid, k, mode))) =>
                    {
                        if got {
                            w.add(pid, k, mode);
                            xact.push((k, mode));
                        }
                    }
                    Err(_) if aborted => {}
                    other => w.fail(&format!("try_xact_lock answered {other:?}")),
                }
            }
            _ => {
                let k = w.key();
                if !matches!(
                    within(w, tx.advisory_lock(key(k))).await,
                    Err(Error::AlreadyInTransaction { .. })
                ) {
                    w.fail("a session lock inside a transaction was not refused");
                }
            }
        }
    }
    let how = w.rng.gen_range(0..4);
    w.note(format!("  tx end {how} (aborted {aborted})"));
    // a dropped transaction (or a cancelled commit) leaves its ROLLBACK queued: its locks go
    // with the connection's next use
    let queued = how >= 2;
    match how {
        0 => {
            if let Err(e) = tx.commit().await {
                w.fail(&format!("I2: commit() answered {e}"));
            }
        }
        1 => {
            if let Err(e) = tx.rollback().await {
                w.fail(&format!("I2: rollback() answered {e}"));
            }
        }
        2 => drop(tx),
        _ => {
            let fut = pin!(tx.commit());
            let _ = poll_n(fut, 1).await;
        }
    }
    for (k, m) in xact {
        if queued {
            w.release_queued(pid, k, m);
        } else {
            w.remove(pid, k, m);
        }
    }
}

/// One level: operations on `conn` until the level's guard ends (or the sequence does).
pub fn level<'a>(
    w: &'a mut World,
    conn: &'a mut PgConnection,
    pid: i32,
    depth: u32,
    budget: &'a mut usize,
    pooled: bool,
) -> BoxFuture<'a, Exit> {
    Box::pin(async move {
        loop {
            if *budget == 0 {
                return Exit::End;
            }
            *budget -= 1;
            match w.rng.gen_range(0..100) {
                0..=34 => nested(w, conn, pid, depth, budget, pooled).await,
                35..=44 => {
                    w.note("query");
                    ok_query(w, conn, false).await;
                }
                45..=52 => {
                    w.note("failing query");
                    failing_query(w, conn, false).await;
                }
                53..=59 => {
                    w.note("cancelled query");
                    cancelled_query(w, conn).await;
                }
                60..=69 => {
                    w.note("transaction");
                    transaction(w, conn, pid).await;
                }
                70..=76 => w.contender_step().await,
                77..=81 if depth > 0 => {
                    let cancel = w.chance(0.5).then(|| w.rng.gen_range(1..3));
                    return Exit::IsHeld(cancel);
                }
                82..=99 if depth > 0 => {
                    return match w.rng.gen_range(0..10) {
                        0..=4 => Exit::Drop,
                        5..=7 => Exit::Release,
                        _ => Exit::CancelRelease(w.rng.gen_range(1..3)),
                    };
                }
                82..=86 if pooled => return Exit::ReturnToPool,
                _ => continue,
            }
            after(w, conn).await;
        }
    })
}

/// A new guard on `conn` (maybe cancelled at a random poll), then the level above it.
async fn nested(
    w: &mut World,
    conn: &mut PgConnection,
    pid: i32,
    depth: u32,
    budget: &mut usize,
    pooled: bool,
) {
    if attempt(w, conn, pid, depth, budget, pooled).await {
        // A cancelled request that waited or was timed: the next answer on the connection comes
        // after its queued undo, so the model is exact again. A cancelled timed request that then
        // timed out leaves its error owed, and sqlx hands it to the connection's next statement
        // (its own statement is not sent then): one such answer is accepted.
        let n: i32 = w.rng.gen_range(1..1_000_000);
        for attempt in 0..2 {
            let res: Result<i32, _> = sqlx::query_scalar("SELECT $1::int4")
                .bind(n)
                .fetch_one(&mut *conn)
                .await;
            match res {
                Ok(v) if v == n => break,
                Err(e) if attempt == 0 && code(&e) == Some("55P03") => {
                    w.note("  the cancelled timed request's own timeout answer")
                }
                other => w.fail(&format!("I2: SELECT {n} answered {other:?}")),
            }
        }
        w.synced();
    }
}

/// `true` if the request was cancelled while it had to wait.
async fn attempt(
    w: &mut World,
    conn: &mut PgConnection,
    pid: i32,
    depth: u32,
    budget: &mut usize,
    pooled: bool,
) -> bool {
    let (k, mode, mut how) = (w.key(), w.mode(), wait(w));
    let certain = w.blocked(pid, k, mode);
    let blocked = w.maybe_blocked(pid, k, mode);
    let cancel = w.chance(0.25).then(|| w.rng.gen_range(1..4));
    if blocked && how == Wait::Block && cancel.is_none() {
        how = Wait::Timeout;
    }
    let mut fut = Box::pin(acquire(conn, k, mode, how));
    let res = match cancel {
        Some(polls) => poll_n(fut.as_mut(), polls).await,
        None => Some(within(w, fut.as_mut()).await),
    };
    drop(fut); // cancelled here if still pending
    w.note(format!(
        "{:depth$}lock {k} {mode:?} {how:?} cancel={cancel:?} blocked={blocked} -> {}",
        "",
        match &res {
            None => "cancelled".to_string(),
            Some(Ok(Some(_))) => "granted".to_string(),
            Some(r) => format!("{:?}", r.as_ref().map(|_| ())),
        },
        depth = depth as usize
    ));
    let mut g = match res {
        None => {
            // cancelled: granted or not, its undo is queued on `conn`; until the connection's
            // next answer another session may still see the hold (I1)
            w.maybe.insert((pid, k, mode));
            if blocked {
                w.free(k).await; // let the server finish the wait
            }
            return blocked || how == Wait::Timeout;
        }
        Some(Ok(Some(g))) if !certain => g,
        Some(Ok(None) | Err(Error::Timeout { .. })) if blocked => return false,
        Some(other) => w.fail(&format!(
            "acquire answered {:?} with blocked={blocked}",
            other.map(|g| g.is_some())
        )),
    };
    w.add(pid, k, mode);
    loop {
        let exit = level(w, &mut g, pid, depth + 1, budget, pooled).await;
        w.note(format!(
            "{:depth$}exit guard {k} {mode:?}",
            "",
            depth = depth as usize
        ));
        match exit {
            Exit::IsHeld(cancel) => {
                let fut = pin!(g.is_held());
                let res = match cancel {
                    Some(n) => poll_n(fut, n).await,
                    None => Some(fut.await),
                };
                if let Some(r) = res
                    && !matches!(r, Ok(true))
                {
                    w.fail(&format!("I3: is_held() of a live guard answered {r:?}"));
                }
                continue;
            }
            Exit::Release => {
                if let Err(e) = g.release().await {
                    w.fail(&format!("I3: release() of a live guard failed: {e}"));
                }
            }
            Exit::CancelRelease(n) => {
                let fut = pin!(g.release());
                if let Some(Err(e)) = poll_n(fut, n).await {
                    w.fail(&format!("I3: release() of a live guard failed: {e}"));
                }
            }
            Exit::Drop | Exit::End => drop(g),
            Exit::ReturnToPool => unreachable!("only at depth 0"),
        }
        if matches!(exit, Exit::Release) {
            w.remove(pid, k, mode);
        } else {
            w.release_queued(pid, k, mode);
        }
        if matches!(exit, Exit::End) {
            *budget = 0;
        }
        return false;
    }
}
