//! The waiters: one connection per contended key, blocked in [`wait_free_sql`] until the key is
//! free.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::Driver;
use crate::error::ErrorKind;
use crate::key::Key;
use crate::locker::WaitOutcome;
use crate::locker::sql::wait_free_sql;
use crate::sql::Mode;

/// How many idle waiter connections are kept for reuse.
const IDLE_WAITERS: usize = 4;

/// Idle waiter connections, shared by the waiters of one locker.
pub(super) type IdleWaiters<D> = Arc<Mutex<Vec<<D as Driver>::Waiter>>>;

pub(super) enum WaitMsg {
    Done(Key, u64, WaitOutcome),
}

pub(super) struct Wait {
    pub generation: u64,
    /// Dropped or fired: the waiter cancels its backend's wait and reports `Done`.
    pub cancel: Option<oneshot::Sender<()>>,
}

/// A waiter: block in `pg_advisory_lock` on a separate connection until `key` is free, let it go,
/// report. Reuses idle waiter connections. When cancelled it cancels its backend's wait
/// ([`Driver::cancel`]: a backend blocked in a lock wait does not notice its client leaving),
/// repeating the cancel until its statement has answered: a cancel that reaches the backend before
/// the statement does is ignored by the server.
pub(super) async fn wait_free<D: Driver>(
    driver: Arc<D>,
    key: Key,
    mode: Mode,
    generation: u64,
    mut cancelled: oneshot::Receiver<()>,
    idle: IdleWaiters<D>,
    tx: mpsc::UnboundedSender<WaitMsg>,
) {
    let failed = WaitMsg::Done(
        key,
        generation,
        WaitOutcome::Failed(ErrorKind::ConnectionLost),
    );
    let reused = idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
    let mut conn = match reused {
        Some(c) if D::waiter_usable(&c) => c,
        _ => {
            let opened = tokio::select! {
                c = driver.open_waiter() => c,
                _ = &mut cancelled => {
                    let _ = tx.send(WaitMsg::Done(key, generation, WaitOutcome::Cancelled));
                    return;
                }
            };
            match opened {
                Ok(conn) => conn,
                Err(_) => {
                    let _ = tx.send(failed);
                    return;
                }
            }
        }
    };
    let mut canceller = D::canceller(&conn);
    let mut was_cancelled = false;
    let res = {
        let fut = D::wait_free(&mut conn, wait_free_sql(mode, key.space()), key);
        tokio::pin!(fut);
        tokio::select! {
            r = &mut fut => r,
            _ = &mut cancelled => {
                was_cancelled = true;
                let mut backoff = Duration::from_millis(5);
                loop {
                    driver.cancel(&mut canceller).await;
                    tokio::select! {
                        r = &mut fut => break r,
                        _ = tokio::time::sleep(backoff) => backoff = (backoff * 2).min(Duration::from_secs(1)),
                    }
                }
            }
        }
    };
    let outcome = match res {
        Ok(()) => WaitOutcome::Free,
        Err(_) if was_cancelled => WaitOutcome::Cancelled,
        Err(e) => match D::classify(e).0 {
            Some(ErrorKind::Deadlock) => WaitOutcome::Failed(ErrorKind::Deadlock),
            Some(ErrorKind::LockTableFull) => WaitOutcome::Failed(ErrorKind::LockTableFull),
            _ => WaitOutcome::Failed(ErrorKind::ConnectionLost),
        },
    };
    // a cancelled waiter is not reused: a late duplicate cancel could hit its next wait
    if outcome == WaitOutcome::Free {
        let mut idle = idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < IDLE_WAITERS {
            idle.push(conn);
        }
    }
    let _ = tx.send(WaitMsg::Done(key, generation, outcome));
}
