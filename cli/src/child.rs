//! The child process: spawning it, the signals forwarded to it, its exit status.

use std::ffi::OsString;
use std::io::ErrorKind;
use std::process::ExitStatus;

use rustix::process::{Pid, Signal, kill_process};
use tokio::process::Child;
use tokio::signal::unix::{SignalKind, signal};

use crate::exit::{self, Failure};

/// INT, TERM and HUP, caught from the start (so that a signal while waiting for the lock ends
/// the wait cleanly, and one while the child runs is forwarded to it).
pub struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> Result<Signals, Failure> {
        let one = |k: SignalKind| {
            signal(k).map_err(|e| Failure::internal(format!("cannot install signal handlers: {e}")))
        };
        Ok(Signals {
            int: one(SignalKind::interrupt())?,
            term: one(SignalKind::terminate())?,
            hup: one(SignalKind::hangup())?,
        })
    }

    /// The next signal received.
    pub async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.int.recv() => Signal::INT,
            _ = self.term.recv() => Signal::TERM,
            _ = self.hup.recv() => Signal::HUP,
        }
    }
}

/// The exit code of a process killed by `sig` (as shells report it).
pub fn killed_by(sig: Signal) -> u8 {
    128u8.saturating_add(u8::try_from(sig.as_raw()).unwrap_or(0))
}

/// Start `command` (stdin, stdout and stderr inherited) with `env` added to its environment.
/// Not found is [`exit::NOT_FOUND`], any other spawn failure [`exit::NOT_EXECUTABLE`].
pub fn spawn(command: &[OsString], env: &[(&str, String)]) -> Result<Child, Failure> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| Failure::usage("missing command after --"))?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().map_err(|e| {
        let name = program.to_string_lossy();
        match e.kind() {
            ErrorKind::NotFound => {
                Failure::new(exit::NOT_FOUND, format!("{name}: command not found"))
            }
            _ => Failure::new(exit::NOT_EXECUTABLE, format!("{name}: cannot execute: {e}")),
        }
    })
}

/// Send `sig` to the child if it has not been reaped yet (tokio forgets the pid once it has, so
/// this never signals a recycled pid).
pub fn send(child: &Child, sig: Signal) {
    if let Some(pid) = child.id().and_then(|id| Pid::from_raw(id as i32)) {
        let _ = kill_process(pid, sig);
    }
}

/// The child's status as our exit code: its own code, or 128+N when killed by signal N.
pub fn code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(c), _) => (c & 0xff) as u8,
        (None, Some(s)) => 128u8.saturating_add(u8::try_from(s).unwrap_or(0)),
        (None, None) => exit::DATABASE,
    }
}
