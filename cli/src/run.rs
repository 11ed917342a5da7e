//! `pg-advisory run`: acquire, run the child, release when it exits.
//!
//! The lock is taken with `sqlx-advisory` on one `PgConnection` (session scope: a `LockGuard`;
//! `--xact`: a `Transaction` holding `pg_advisory_xact_lock`). While the child runs, that same
//! connection asks the server every `--check-interval` whether it still holds the lock
//! (`held_sql`, via `LockGuard::is_held` for session locks): a terminated session answers with an
//! error at the next check, so a lost lock is noticed within one interval plus a round trip. The
//! lock is released only after the child has been reaped.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use advisory_common::sql::{self, Mode};
use advisory_common::{Key, KeyValue};
use rustix::process::Signal;
use sqlx::{Connection as _, PgConnection, Postgres, Transaction};
use sqlx_advisory::prelude::*;
use sqlx_advisory::{Error as LockError, LockGuard};
use tokio::time::{Instant, MissedTickBehavior};

use crate::args::{ConnArgs, OnLost, RunArgs};
use crate::child::{self, Signals};
use crate::conn;
use crate::exit::Failure;
use crate::key;
use crate::list;

/// The lock while the child runs.
enum Held<'c> {
    Session(LockGuard<'c>),
    Xact {
        tx: Transaction<'c, Postgres>,
        key: Key,
        mode: Mode,
    },
}

impl Held<'_> {
    /// Does the server say this session still holds the lock? An error means the session is gone
    /// or unusable, which is as good as lost.
    async fn is_held(&mut self) -> Result<bool, String> {
        match self {
            Held::Session(g) => g.is_held().await.map_err(|e| e.to_string()),
            Held::Xact { tx, key, mode } => {
                let q = sqlx::query_scalar::<_, bool>(sql::held_sql(*mode, key.space()));
                let q = match key.value() {
                    KeyValue::BigInt(k) => q.bind(k),
                    KeyValue::Pair(a, b) => q.bind(a).bind(b),
                };
                q.fetch_one(&mut **tx).await.map_err(|e| e.to_string())
            }
        }
    }

    async fn release(self) -> Result<(), String> {
        match self {
            Held::Session(g) => g.release().await.map_err(|e| e.to_string()),
            Held::Xact { tx, .. } => tx.commit().await.map_err(|e| e.to_string()),
        }
    }
}

pub async fn run(conn_args: &ConnArgs, args: RunArgs) -> Result<u8, Failure> {
    let key = key::resolve(&args.key, args.preset)?;
    let mode = if args.shared {
        Mode::Shared
    } else {
        Mode::Exclusive
    };
    let mut signals = Signals::install()?;
    let mut c = tokio::select! {
        c = conn::connect(conn_args) => c?,
        s = signals.recv() => return Ok(child::killed_by(s)),
    };
    let backend_pid: i32 = sqlx::query_scalar(sql::BACKEND_PID)
        .fetch_one(&mut c)
        .await?;
    // Dropping the acquire on a signal is cancel safe (the library's promise), and the session
    // ends with this process anyway.
    let held = match tokio::select! {
        r = acquire(&mut c, key, mode, &args) => r,
        s = signals.recv() => {
            cancel_wait(conn_args, backend_pid).await;
            return Ok(child::killed_by(s));
        }
    } {
        Ok(Acquired::Held(held)) => held,
        Ok(Acquired::Refused) => {
            // Who holds it, asked on a second session: the first one stays borrowed by the
            // refused attempt's (empty) result until this function returns.
            let who = match conn::connect(conn_args).await {
                Ok(mut c2) => who_holds(&mut c2, key).await,
                Err(_) => String::new(),
            };
            return Err(conflict(key, &args, &who));
        }
        Err(e) => return Err(Failure::from_lock_error(&format!("cannot lock {key}"), &e)),
    };
    let mut env = vec![
        ("PG_ADVISORY_KEY", key.unlabeled().to_string()),
        ("PG_ADVISORY_MODE", mode.as_str().to_owned()),
        (
            "PG_ADVISORY_SCOPE",
            if args.xact { "transaction" } else { "session" }.to_owned(),
        ),
        ("PG_ADVISORY_BACKEND_PID", backend_pid.to_string()),
    ];
    if let Some(name) = key.label() {
        env.push(("PG_ADVISORY_KEY_NAME", name.to_owned()));
    }
    let mut child = match child::spawn(&args.command, &env) {
        Ok(child) => child,
        Err(f) => {
            let _ = held.release().await;
            conn::close(c).await;
            return Err(f);
        }
    };
    let outcome = supervise(&mut child, held, &mut signals, &args, key).await;
    conn::close(c).await;
    Ok(outcome)
}

/// Wait for the child, forwarding signals and checking the lock; release after it exits.
async fn supervise(
    child: &mut tokio::process::Child,
    held: Held<'_>,
    signals: &mut Signals,
    args: &RunArgs,
    key: Key,
) -> u8 {
    let check_timeout = args.check_timeout;
    let mut idle = Some(held);
    let mut checking: Option<Check<'_>> = None;
    let mut tick = tokio::time::interval(args.check_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut lost = false;
    let mut kill_at: Option<Instant> = None;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            sig = signals.recv() => child::send(child, sig),
            _ = tick.tick(), if idle.is_some() && !lost => {
                checking = idle.take().map(|h| start_check(h, check_timeout));
            }
            (h, r) = async { checking.as_mut().expect("guarded").await }, if checking.is_some() => {
                checking = None;
                idle = Some(h);
                let reason = match r {
                    Ok(true) => continue,
                    Ok(false) => "the server says this session no longer holds it".to_owned(),
                    Err(e) => e,
                };
                lost = true;
                if args.on_lost == OnLost::Term {
                    eprintln!("pg-advisory: lock {key} lost while the command ran ({reason}); sending TERM");
                    child::send(child, Signal::TERM);
                    kill_at = Some(Instant::now() + args.grace);
                } else {
                    eprintln!("pg-advisory: warning: lock {key} lost while the command runs ({reason}); --on-lost=ignore");
                }
            }
            _ = sleep_until(kill_at), if kill_at.is_some() => {
                eprintln!("pg-advisory: command still running {:?} after TERM; sending KILL", args.grace);
                child::send(child, Signal::KILL);
                kill_at = None;
            }
        }
    };
    // The child is gone (or cannot be waited for): only now is the lock let go.
    if let Some(c) = checking.take() {
        let (h, _) = c.await;
        idle = Some(h);
    }
    let code = match status {
        Ok(s) => child::code(s),
        Err(e) => {
            eprintln!("pg-advisory: cannot wait for the command: {e}");
            crate::exit::DATABASE
        }
    };
    if let Some(h) = idle
        && !lost
        && let Err(e) = h.release().await
    {
        eprintln!("pg-advisory: warning: releasing {key}: {e} (the session is closed anyway)");
    }
    if lost && args.on_lost == OnLost::Term {
        args.lost_exit_code
    } else {
        code
    }
}

/// One "do I still hold it" round trip; it owns the lock while in flight and gives it back.
type Check<'c> = Pin<Box<dyn Future<Output = (Held<'c>, Result<bool, String>)> + 'c>>;

fn start_check(mut h: Held<'_>, limit: Duration) -> Check<'_> {
    Box::pin(async move {
        let r = match tokio::time::timeout(limit, h.is_held()).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {limit:?}")),
        };
        (h, r)
    })
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

enum Acquired<'c> {
    Held(Held<'c>),
    /// Not acquired (`--no-wait`, `--timeout`).
    Refused,
}

/// Take the lock as `args` say.
async fn acquire<'c>(
    c: &'c mut PgConnection,
    key: Key,
    mode: Mode,
    args: &RunArgs,
) -> Result<Acquired<'c>, LockError> {
    let shared = mode == Mode::Shared;
    let timed_out = |r: Result<(), LockError>| match r {
        Ok(()) => Ok(true),
        Err(LockError::Timeout { .. }) => Ok(false),
        Err(e) => Err(e),
    };
    if args.xact {
        let mut tx = c.begin().await?;
        let got = match (args.no_wait, args.timeout, shared) {
            (true, _, false) => tx.try_xact_lock(key).await?,
            (true, _, true) => tx.try_xact_lock_shared(key).await?,
            (false, Some(t), false) => timed_out(tx.xact_lock_timeout(key, t).await)?,
            (false, Some(t), true) => timed_out(tx.xact_lock_shared_timeout(key, t).await)?,
            (false, None, false) => tx.xact_lock(key).await.map(|()| true)?,
            (false, None, true) => tx.xact_lock_shared(key).await.map(|()| true)?,
        };
        if !got {
            tx.rollback().await?;
            return Ok(Acquired::Refused);
        }
        return Ok(Acquired::Held(Held::Xact { tx, key, mode }));
    }
    let guard = match (args.no_wait, args.timeout, shared) {
        (true, _, false) => c.try_advisory_lock(key).await?,
        (true, _, true) => c.try_advisory_lock_shared(key).await?,
        (false, Some(t), s) => {
            let r = if s {
                c.advisory_lock_shared_timeout(key, t).await
            } else {
                c.advisory_lock_timeout(key, t).await
            };
            match r {
                Ok(g) => Some(g),
                Err(LockError::Timeout { .. }) => None,
                Err(e) => return Err(e),
            }
        }
        (false, None, false) => Some(c.advisory_lock(key).await?),
        (false, None, true) => Some(c.advisory_lock_shared(key).await?),
    };
    match guard {
        Some(g) => Ok(Acquired::Held(Held::Session(g))),
        None => Ok(Acquired::Refused),
    }
}

/// Interrupted while waiting: the backend would stay queued for the lock until the wait ends
/// (PostgreSQL does not watch the socket during a lock wait), so cancel the wait from a second
/// session before going.
async fn cancel_wait(conn_args: &ConnArgs, backend_pid: i32) {
    if let Ok(mut c2) = conn::connect(conn_args).await {
        let _ = sqlx::query(sql::CANCEL_LOCK_WAIT)
            .bind(backend_pid)
            .execute(&mut c2)
            .await;
        conn::close(c2).await;
    }
}

/// `; it is held (exclusive) by pid ..` for the conflict message, or nothing.
async fn who_holds(c: &mut PgConnection, key: Key) -> String {
    match list::holders(c, key).await {
        Ok(h) if !h.is_empty() => {
            let h: Vec<String> = h.iter().map(list::describe_holder).collect();
            format!("; it {}", h.join("; it "))
        }
        _ => String::new(),
    }
}

/// The lock was not acquired: say so (and who holds it), exit with the conflict code.
fn conflict(key: Key, args: &RunArgs, who: &str) -> Failure {
    let how = match args.timeout {
        Some(t) => format!("not acquired within {}", human(t)),
        None => "held by another session (--no-wait)".to_owned(),
    };
    Failure::new(args.conflict_exit_code, format!("lock {key} {how}{who}"))
}

fn human(d: Duration) -> String {
    crate::table::human(d)
}
