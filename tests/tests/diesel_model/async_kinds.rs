//! Sequences for the diesel-async kinds: a bare `AsyncPgConnection`, and bb8 / deadpool pools of
//! two (pool guards, steps on their connections, cancelled acquires and releases, guards outliving
//! the runtime they were acquired on, checks of what the pool hands out next).

use std::future::Future;
use std::ops::DerefMut;
use std::panic::{AssertUnwindSafe, resume_unwind};

use advisory_common::Key;
use advisory_common::sql::Mode;
use diesel_advisory::prelude::*;
use diesel_advisory::{Bb8LockGuard, DeadpoolLockGuard, Error};
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use futures::FutureExt;
use rand::Rng;

use super::async_run::{ACtx, level, run};
use super::async_tx::rollback_dangling;
use super::model::{Contender, Hold, Model};
use super::support::{Bb8, Deadpool};
use super::world::*;

async fn pid_of(c: &mut AsyncPgConnection) -> i32 {
    diesel::sql_query(PID_SQL)
        .get_result::<N>(c)
        .await
        .expect("pid")
        .n
}

/// One sequence on a bare connection.
pub async fn bare(m: &mut Model, steps: usize) {
    let poison = Poison::pick(m);
    let mut c = super::support::aconn().await;
    let pid = pid_of(&mut c).await;
    if let Some(sql) = poison.sql() {
        c.batch_execute(&sql).await.unwrap();
    }
    m.begin(format!("bare connection {pid}, poison {poison:?}"));
    let mut contender = Contender::new();
    let mut s = Session::new(pid);
    let mut x = ACtx {
        m,
        contender: &mut contender,
        poison,
        steps,
    };
    assert_eq!(level(&mut c, &mut s, 0, None, &mut x).await, Exit::End);
    if matches!(s.tx, Tx::Dangling { .. }) {
        rollback_dangling(&mut c, &mut s, &mut x).await;
    }
    x.m.begin("close the connection");
    drop(c);
    x.m.close_session(pid);
    x.contender.release_all(x.m);
    x.m.finish();
}

/// What the model needs of a pool and its guard.
pub trait PoolKind: Clone + Send + Sync + 'static {
    type Guard: DerefMut<Target = AsyncPgConnection> + Send + 'static;
    type Checkout: DerefMut<Target = AsyncPgConnection> + Send;
    fn build(poison: Poison) -> Self;
    fn acquire(
        &self,
        key: Key,
        mode: Mode,
        how: How,
    ) -> impl Future<Output = Result<Option<Self::Guard>, Error>> + Send;
    fn release(g: Self::Guard) -> impl Future<Output = Result<(), Error>> + Send;
    fn get(&self) -> impl Future<Output = Self::Checkout> + Send;
}

fn manager(poison: Poison) -> AsyncDieselConnectionManager<AsyncPgConnection> {
    let mut config = ManagerConfig::default();
    config.custom_setup = Box::new(move |url| {
        let url = url.to_owned();
        Box::pin(async move {
            let mut c = AsyncPgConnection::establish(&url).await?;
            if let Some(sql) = poison.sql() {
                c.batch_execute(&sql)
                    .await
                    .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
            }
            Ok(c)
        })
    });
    AsyncDieselConnectionManager::new_with_config(advisory_tests::db().url(), config)
}

macro_rules! acquire_on {
    ($p:expr, $key:expr, $mode:expr, $how:expr) => {
        match ($how, $mode) {
            (How::Block, Mode::Exclusive) => $p.advisory_lock($key).await.map(Some),
            (How::Block, Mode::Shared) => $p.advisory_lock_shared($key).await.map(Some),
            (How::Try, Mode::Exclusive) => $p.try_advisory_lock($key).await,
            (How::Try, Mode::Shared) => $p.try_advisory_lock_shared($key).await,
            (How::Timeout(t), Mode::Exclusive) => $p.advisory_lock_timeout($key, t).await.map(Some),
            (How::Timeout(t), Mode::Shared) => {
                $p.advisory_lock_shared_timeout($key, t).await.map(Some)
            }
        }
    };
}

const SIZE: usize = 2;

impl PoolKind for Bb8 {
    type Guard = Bb8LockGuard;
    type Checkout = bb8::PooledConnection<'static, AsyncDieselConnectionManager<AsyncPgConnection>>;
    fn build(poison: Poison) -> Self {
        Bb8::builder()
            .max_size(SIZE as u32)
            .connection_timeout(std::time::Duration::from_secs(10))
            .build_unchecked(manager(poison))
    }
    async fn acquire(&self, key: Key, mode: Mode, how: How) -> Result<Option<Bb8LockGuard>, Error> {
        acquire_on!(self, key, mode, how)
    }
    async fn release(g: Bb8LockGuard) -> Result<(), Error> {
        g.release().await
    }
    async fn get(&self) -> Self::Checkout {
        self.get_owned().await.expect("bb8 checkout")
    }
}

impl PoolKind for Deadpool {
    type Guard = DeadpoolLockGuard;
    type Checkout = diesel_async::pooled_connection::deadpool::Object<AsyncPgConnection>;
    fn build(poison: Poison) -> Self {
        Deadpool::builder(manager(poison))
            .max_size(SIZE)
            .build()
            .unwrap()
    }
    async fn acquire(
        &self,
        key: Key,
        mode: Mode,
        how: How,
    ) -> Result<Option<DeadpoolLockGuard>, Error> {
        acquire_on!(self, key, mode, how)
    }
    async fn release(g: DeadpoolLockGuard) -> Result<(), Error> {
        g.release().await
    }
    async fn get(&self) -> Self::Checkout {
        self.get().await.expect("deadpool checkout")
    }
}

struct PoolGuard<G> {
    g: G,
    s: Session,
    hold: Hold,
}

/// One sequence on a pool of kind `P`.
pub async fn pooled<P: PoolKind>(m: &mut Model, steps: usize) {
    let poison = Poison::pick(m);
    let pool = P::build(poison);
    // the pool's connections are established on this (long-lived) runtime
    drop((pool.get().await, pool.get().await));
    m.begin(format!("pool, poison {poison:?}"));
    let mut contender = Contender::new();
    let mut x = ACtx {
        m,
        contender: &mut contender,
        poison,
        steps,
    };
    let mut guards: Vec<PoolGuard<P::Guard>> = Vec::new();
    let mut orphans: Vec<(P::Guard, Hold)> = Vec::new();
    while !x.done() {
        let busy = guards.len() + orphans.len();
        match x.m.rng.gen_range(0..100) {
            0..=24 if busy < SIZE => acquire_pool_guard(&pool, &mut guards, &mut x).await,
            25..=29 if busy < SIZE => orphan(&pool, &mut orphans, &mut x),
            0..=39 if !orphans.is_empty() => {
                let (g, hold) = orphans.swap_remove(0);
                let outside = x.m.chance(0.5);
                x.m.begin(format!(
                    "drop guard {hold:?} acquired on a runtime that has shut down ({})",
                    if outside { "on a plain thread" } else { "here" }
                ));
                if outside {
                    std::thread::spawn(move || drop(g)).join().unwrap();
                } else {
                    drop(g);
                }
                x.m.forget(hold);
                pool_return_check(&pool, guards.len() + orphans.len(), x.m).await;
            }
            0..=44 if !guards.is_empty() => {
                let i = x.m.rng.gen_range(0..guards.len());
                let pg = guards.swap_remove(i);
                finish_pool_guard::<P>(&pool, pg, guards.len() + orphans.len(), &mut x).await;
            }
            0..=74 if !guards.is_empty() => {
                let i = x.m.rng.gen_range(0..guards.len());
                let PoolGuard { g, mut s, hold } = guards.swap_remove(i);
                x.m.begin(format!("steps on the pool guard of {}", s.pid));
                let r = AssertUnwindSafe(async {
                    let mut g = g;
                    level(&mut g, &mut s, 1, Some((hold.1, hold.2)), &mut x).await;
                    g
                })
                .catch_unwind()
                .await;
                match r {
                    Ok(g) => guards.push(PoolGuard { g, s, hold }),
                    Err(p) if p.is::<ModelPanic>() => {
                        // the pool guard was dropped with the transaction the panic left open:
                        // its connection is never reused
                        x.m.begin(format!("pool guard of {} dropped after a panic", s.pid));
                        x.m.close_session(s.pid);
                        pool_return_check(&pool, guards.len() + orphans.len(), x.m).await;
                        x.m.converge();
                    }
                    Err(p) => resume_unwind(p),
                }
            }
            0..=89 => pool_return_check(&pool, busy, x.m).await,
            _ => x.contender.step(x.m),
        }
    }
    while let Some(pg) = guards.pop() {
        finish_pool_guard::<P>(&pool, pg, guards.len() + orphans.len(), &mut x).await;
    }
    for (g, hold) in orphans.drain(..) {
        drop(g);
        x.m.forget(hold);
    }
    pool_return_check(&pool, 0, x.m).await;
    x.m.converge();
    drop(pool);
    x.contender.release_all(x.m);
    x.m.finish();
}

async fn acquire_pool_guard<P: PoolKind>(
    pool: &P,
    guards: &mut Vec<PoolGuard<P::Guard>>,
    x: &mut ACtx<'_>,
) {
    let (key, mode) = (x.m.key(), x.m.mode());
    let cancel = x.cancel(0.35);
    let how = pick_how(x.m, x.m.conflict(-1, key, mode), cancel.is_some());
    let expect = predict(x.m, &Session::new(-1), key, mode, how, x.poison);
    x.m.begin(format!(
        "pool acquire {key} {mode:?} {how:?} (cancel {cancel:?}), expect {expect:?}"
    ));
    let Some(r) = run(pool.acquire(key, mode, how), cancel, x.m.rng.r#gen()).await else {
        // cancelled: the checkout, if the statement may have been sent, is discarded
        x.m.releasing(key, mode);
        x.m.check();
        return;
    };
    let got = got(&r);
    assert!(
        allowed(expect, got, how, x.poison),
        "{}: got {got:?} ({:?})",
        x.m.at(),
        r.as_ref().err()
    );
    if got == Got::Database {
        // granted at the (poisoned) boundary, outcome unknown: the checkout is discarded
        x.m.releasing(key, mode);
    }
    if let Ok(Some(mut g)) = r {
        let pid = pid_of(&mut g).await;
        x.m.settle(pid);
        x.m.add((pid, key, mode));
        guards.push(PoolGuard {
            g,
            s: Session::new(pid),
            hold: (pid, key, mode),
        });
    }
    x.m.check();
}

/// A pool guard acquired on a runtime that then shuts down; the pool lives on.
fn orphan<P: PoolKind>(pool: &P, orphans: &mut Vec<(P::Guard, Hold)>, x: &mut ACtx<'_>) {
    let (key, mode) = (x.m.key(), x.m.mode());
    if x.m.conflict(-1, key, mode) != (false, false) {
        return;
    }
    x.m.begin(format!("acquire {key} {mode:?} on a short-lived runtime"));
    let pool = pool.clone();
    let (g, pid) = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let out = rt.block_on(async {
            let mut g = pool
                .acquire(key, mode, How::Try)
                .await
                .unwrap()
                .expect("free key");
            let pid = pid_of(&mut g).await;
            (g, pid)
        });
        drop(rt);
        out
    })
    .join()
    .unwrap();
    // a connection established on that runtime died with it (and its session); one established
    // on ours lives on and still holds the key
    x.m.maybe((pid, key, mode));
    orphans.push((g, (pid, key, mode)));
    x.m.check();
}

async fn finish_pool_guard<P: PoolKind>(
    pool: &P,
    pg: PoolGuard<P::Guard>,
    in_use: usize,
    x: &mut ACtx<'_>,
) {
    let PoolGuard { g, s, hold } = pg;
    let release = x.m.chance(0.6);
    let polls = if release { x.cancel(0.3) } else { None };
    x.m.begin(format!(
        "pool guard of {}: {} (cancel {polls:?}, tx {:?}, broken {})",
        s.pid,
        if release { "release" } else { "drop" },
        s.tx,
        s.broken
    ));
    let tainted = s.tx != Tx::None || s.broken;
    let r = if release {
        run(P::release(g), polls, x.m.rng.r#gen()).await
    } else {
        drop(g);
        None
    };
    x.m.remove(hold);
    match r {
        Some(Ok(())) if !tainted => x.m.settle(s.pid),
        Some(Err(e)) if !tainted => panic!("{}: release failed: {e}", x.m.at()),
        // dropped (release spawned), cancelled (discarded), or failed (discarded)
        _ => x.m.releasing(hold.1, hold.2),
    }
    if tainted {
        // left in a transaction or marked broken: bb8 and deadpool discard it
        x.m.close_session(s.pid);
    }
    pool_return_check(pool, in_use, x.m).await;
    if tainted {
        x.m.converge();
    }
}

/// I1 for pools: every connection the pool hands out now holds nothing, and works.
async fn pool_return_check<P: PoolKind>(pool: &P, in_use: usize, m: &mut Model) {
    m.begin("pool return check");
    let mut out = Vec::new();
    for _ in in_use..SIZE {
        let mut c = pool.get().await;
        let pid = pid_of(&mut c).await;
        m.assert_fresh_checkout_holds_nothing(pid);
        m.settle(pid);
        out.push(c);
    }
    drop(out);
    m.check();
}
