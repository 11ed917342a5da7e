//! Sequences for the sync kinds: one bare `PgConnection`, and an r2d2 pool of two.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool};
use diesel_advisory::prelude::*;
use diesel_advisory::{Error, R2d2LockGuard};
use rand::Rng;

use super::model::{Contender, Hold, Model};
use super::support::{conn, pid};
use super::sync_run::{Ctx, level, rollback_dangling};
use super::world::*;

/// One sequence on a bare connection.
pub fn bare(m: &mut Model, steps: usize) {
    let poison = Poison::pick(m);
    let mut c = conn();
    let pid = pid(&mut c);
    if let Some(sql) = poison.sql() {
        c.batch_execute(&sql).unwrap();
    }
    m.begin(format!("bare connection {pid}, poison {poison:?}"));
    let mut contender = Contender::new();
    let mut s = Session::new(pid);
    let mut x = Ctx {
        m,
        contender: &mut contender,
        poison,
        steps,
    };
    let exit = level(&mut c, &mut s, 0, &mut x);
    assert_eq!(exit, Exit::End);
    if s.tx != Tx::None {
        rollback_dangling(&mut c, &mut s, &mut x);
    }
    x.m.begin("close the connection");
    drop(c);
    x.m.close_session(pid);
    x.contender.release_all(x.m);
    x.m.finish();
}

#[derive(Debug)]
struct Poisoned(Poison);

impl CustomizeConnection<PgConnection, diesel::r2d2::Error> for Poisoned {
    fn on_acquire(&self, c: &mut PgConnection) -> Result<(), diesel::r2d2::Error> {
        if let Some(sql) = self.0.sql() {
            c.batch_execute(&sql)
                .map_err(diesel::r2d2::Error::QueryError)?;
        }
        Ok(())
    }
}

type R2d2 = Pool<ConnectionManager<PgConnection>>;

fn pool_acquire(
    p: &R2d2,
    key: advisory_common::Key,
    mode: advisory_common::sql::Mode,
    how: How,
) -> Result<Option<R2d2LockGuard>, Error> {
    use advisory_common::sql::Mode::*;
    match (how, mode) {
        (How::Block, Exclusive) => p.advisory_lock(key).map(Some),
        (How::Block, Shared) => p.advisory_lock_shared(key).map(Some),
        (How::Try, Exclusive) => p.try_advisory_lock(key),
        (How::Try, Shared) => p.try_advisory_lock_shared(key),
        (How::Timeout(t), Exclusive) => p.advisory_lock_timeout(key, t).map(Some),
        (How::Timeout(t), Shared) => p.advisory_lock_shared_timeout(key, t).map(Some),
    }
}

const R2D2_SIZE: u32 = 2;

/// One sequence on an r2d2 pool: pool guards, steps on their connections (nested guards,
/// transactions, panics), releases, and checks of what the pool hands out next.
pub fn r2d2(m: &mut Model, steps: usize) {
    let poison = Poison::pick(m);
    let pool = Pool::builder()
        .max_size(R2D2_SIZE)
        .min_idle(Some(0))
        .connection_customizer(Box::new(Poisoned(poison)))
        .build(ConnectionManager::<PgConnection>::new(
            advisory_tests::db().url(),
        ))
        .unwrap();
    m.begin(format!("r2d2 pool, poison {poison:?}"));
    let mut contender = Contender::new();
    let mut guards: Vec<(R2d2LockGuard, Session, Hold)> = Vec::new();
    let mut x = Ctx {
        m,
        contender: &mut contender,
        poison,
        steps,
    };
    while !x.done() {
        match x.m.rng.gen_range(0..100) {
            0..=29 if guards.len() < R2D2_SIZE as usize => {
                let (key, mode) = (x.m.key(), x.m.mode());
                let how = pick_how(x.m, x.m.conflict(-1, key, mode), false);
                let expect = predict(x.m, &Session::new(-1), key, mode, how, poison);
                x.m.begin(format!(
                    "r2d2 acquire {key} {mode:?} {how:?}, expect {expect:?}"
                ));
                let r = pool_acquire(&pool, key, mode, how);
                let got = got(&r);
                assert!(
                    allowed(expect, got, how, x.poison),
                    "{}: got {got:?} {:?}",
                    x.m.at(),
                    r.as_ref().err()
                );
                if got == Got::Database {
                    // granted at the (poisoned) boundary, outcome unknown: the checkout is closed
                    x.m.releasing(key, mode);
                }
                if let Ok(Some(mut g)) = r {
                    let pid = diesel::sql_query(PID_SQL)
                        .get_result::<N>(&mut *g)
                        .unwrap()
                        .n;
                    x.m.add((pid, key, mode));
                    guards.push((g, Session::new(pid), (pid, key, mode)));
                }
                x.m.check();
            }
            0..=44 if !guards.is_empty() => {
                let i = x.m.rng.gen_range(0..guards.len());
                let (g, s, hold) = guards.swap_remove(i);
                finish_pool_guard(&mut x, g, s, hold);
            }
            0..=74 if !guards.is_empty() => {
                let i = x.m.rng.gen_range(0..guards.len());
                let (g, mut s, hold) = guards.swap_remove(i);
                x.m.begin(format!("steps on the pool guard of {}", s.pid));
                let r = catch_unwind(AssertUnwindSafe(|| {
                    let mut g = g;
                    level(&mut g, &mut s, 1, &mut x);
                    g
                }));
                match r {
                    Ok(g) => guards.push((g, s, hold)),
                    Err(p) if p.is::<ModelPanic>() => {
                        // dropped while the thread panicked: r2d2 discards its connection
                        x.m.begin(format!("pool guard of {} dropped by a panic", s.pid));
                        x.m.close_session(s.pid);
                        x.m.converge();
                    }
                    Err(p) => resume_unwind(p),
                }
            }
            0..=89 => pool_return_check(&pool, guards.len(), x.m),
            _ => x.contender.step(x.m),
        }
    }
    for (g, s, hold) in guards.drain(..) {
        finish_pool_guard(&mut x, g, s, hold);
    }
    pool_return_check(&pool, 0, x.m);
    drop(pool);
    x.contender.release_all(x.m);
    x.m.finish();
}

/// Drop or release a pool guard. A connection left in a transaction (or marked broken) is
/// discarded by r2d2: its session closes, and every hold with it.
fn finish_pool_guard(x: &mut Ctx<'_>, g: R2d2LockGuard, s: Session, hold: Hold) {
    let release = x.m.chance(0.5);
    x.m.begin(format!(
        "r2d2 guard of {}: {} (tx {:?}, broken {})",
        s.pid,
        if release { "release" } else { "drop" },
        s.tx,
        s.broken
    ));
    let aborted = matches!(s.tx, Tx::Dangling { aborted: true });
    let r = if release {
        g.release()
    } else {
        drop(g);
        Ok(())
    };
    assert_eq!(r.is_err(), release && aborted, "{}: {r:?}", x.m.at());
    if s.tx == Tx::None && !s.broken {
        x.m.remove(hold);
        x.m.check();
    } else {
        x.m.close_session(s.pid);
        x.m.converge();
    }
}

/// I1 for pools: every connection the pool hands out now holds nothing, and works.
fn pool_return_check(pool: &R2d2, in_use: usize, m: &mut Model) {
    m.begin("pool return check");
    let mut out = Vec::new();
    for _ in in_use..R2D2_SIZE as usize {
        let mut c = pool
            .get_timeout(std::time::Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{}: checkout: {e}", m.at()));
        let pid = diesel::sql_query(PID_SQL)
            .get_result::<N>(&mut c)
            .unwrap()
            .n;
        m.assert_fresh_checkout_holds_nothing(pid);
        out.push(c);
    }
    m.check();
}
