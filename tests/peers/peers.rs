//! The real libraries of other ecosystems against this crate's presets, on a real server: each
//! peer holds a lock that `pg_locks` shows under the matching [`Preset`]'s key (taken by that
//! peer's session, found by its `application_name`) and nothing under any other preset's key, and
//! a Rust session cannot take it; the reverse, Rust holds the preset's key and the peer's try-lock
//! fails, then succeeds once Rust releases.
//!
//! Peers: Python `postgresql-lock` and `django-pglock` (PyPI), npm `advisory-lock` 2.x, and (in
//! `ruby.rs`) Rails' migrator and the with_advisory_lock derivation in real Ruby. Run with
//! `tests/peers/run.sh`, which installs them first (`tests/peers/setup.sh`); this target is
//! `test = false`, so the workspace's `cargo test` leaves it out. A missing peer fails the run,
//! naming what to install; nothing is skipped.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use advisory_common::{Key, Preset};
use advisory_tests::{assert_no_locks, db, granted, unique_name, wait_until};
use diesel::prelude::*;
use diesel_advisory::prelude::*;

mod ruby;
#[allow(dead_code)]
#[path = "../tests/interop/schema.rs"]
mod schema;

const STARTUP: Duration = Duration::from_secs(60);
const SEEN: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug)]
enum Lib {
    PostgresqlLock,
    DjangoPglock,
    NodeAdvisoryLock,
}

impl Lib {
    fn preset(self) -> Preset {
        match self {
            Lib::PostgresqlLock => Preset::PostgresqlLock,
            Lib::DjangoPglock => Preset::DjangoPglock,
            Lib::NodeAdvisoryLock => Preset::NodeAdvisoryLock,
        }
    }
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers")
}

fn command(lib: Lib) -> Command {
    let setup = "run tests/peers/run.sh (or tests/peers/setup.sh) first: it installs the peers";
    match lib {
        Lib::PostgresqlLock | Lib::DjangoPglock => {
            let python = dir().join(".venv/bin/python");
            assert!(python.exists(), "{} is missing; {setup}", python.display());
            let mut c = Command::new(python);
            c.arg(dir().join("peer.py")).arg(lib.preset().name());
            c
        }
        Lib::NodeAdvisoryLock => {
            let module = dir().join("node_modules/advisory-lock");
            assert!(module.exists(), "{} is missing; {setup}", module.display());
            let mut c = Command::new("node");
            c.arg(dir().join("peer.js"));
            c
        }
    }
}

/// A peer process and the lines it prints.
struct Peer {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    what: String,
}

impl Peer {
    fn spawn(lib: Lib, app: &str, name: &str, mode: &str) -> Peer {
        let mut cmd = command(lib);
        cmd.arg(db().url_with_app(app)).arg(name).arg(mode);
        Peer::start(cmd, format!("{lib:?} {mode} {name:?}"))
    }

    fn start(mut cmd: Command, what: String) -> Peer {
        let mut child = cmd
            .current_dir(dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what} (is it installed?): {e}"));
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Peer {
            child,
            stdin,
            lines,
            what,
        }
    }

    fn expect(&mut self, want: &str, within: Duration) {
        match self.lines.recv_timeout(within) {
            Ok(line) => assert_eq!(line, want, "{}", self.what),
            Err(e) => panic!(
                "{}: expected {want:?} within {within:?}, got {e:?} (exit: {:?})",
                self.what,
                self.child.try_wait()
            ),
        }
    }

    fn finish(mut self) {
        drop(self.stdin.take());
        let status = self.child.wait().expect("wait for the peer");
        assert!(status.success(), "{} exited with {status}", self.what);
    }
}

/// Names with the edge cases: plain, numeric-looking, non-ASCII, a quote, and one of exactly
/// nine ASCII characters (DistributedLock's packing boundary; irrelevant to these peers, but
/// a different key for every preset all the same).
fn names() -> Vec<String> {
    let r = unique_name("x");
    let tail = &r[r.len() - 6..];
    vec![
        unique_name("peer"),
        format!("{}", rand::random::<u32>()),
        format!("héllo wörld ✓ {tail}"),
        format!("it's {tail}"),
        format!("ab{tail}z"),
    ]
}

fn conn() -> PgConnection {
    PgConnection::establish(&db().url_with_app("peers-rust")).expect("connect")
}

/// The peer holds; `pg_locks` shows the preset's key held by the peer's own session and no other
/// preset's key held by anyone; Rust cannot take it until the peer releases.
fn peer_holds(lib: Lib) {
    let mut conn = conn();
    for name in names() {
        let key = lib.preset().key(&name);
        let app = format!("peer-{}", &unique_name("h")[2..]);
        let mut peer = Peer::spawn(lib, &app, &name, "hold");
        peer.expect("held", STARTUP);
        wait_until(&[key], SEEN, "the peer's hold under its preset", |rows| {
            rows.iter()
                .any(|l| l.granted && l.application_name.as_deref() == Some(app.as_str()))
        });
        for other in Preset::ALL {
            let k = other.key(&name);
            if k != key {
                assert!(granted(k).is_empty(), "{name:?}: {other} key {k} also held");
            }
        }
        assert!(
            conn.try_advisory_lock(key).expect("try").is_none(),
            "{lib:?} holds {name:?} but Rust took {key}"
        );
        peer.stdin
            .as_mut()
            .unwrap()
            .write_all(b"release\n")
            .unwrap();
        peer.expect("released", SEEN);
        peer.finish();
        assert_no_locks(&[key], SEEN);
        let g = conn.try_advisory_lock(key).expect("try").expect("free now");
        g.release().expect("release");
    }
}

/// Rust holds the preset's key; the peer's try-lock fails; after the release it succeeds.
fn rust_holds(lib: Lib) {
    let mut conn = conn();
    for name in names() {
        let key: Key = lib.preset().key(&name);
        let app = format!("peer-{}", &unique_name("t")[2..]);
        let guard = conn.advisory_lock(key).expect("lock");
        let mut peer = Peer::spawn(lib, &app, &name, "try");
        peer.expect("busy", STARTUP);
        peer.finish();
        guard.release().expect("release");
        let mut peer = Peer::spawn(lib, &app, &name, "try");
        peer.expect("acquired", STARTUP);
        peer.finish();
        assert_no_locks(&[key], SEEN);
    }
}

#[test]
fn postgresql_lock_peer_holds() {
    peer_holds(Lib::PostgresqlLock);
}

#[test]
fn postgresql_lock_peer_is_refused_while_rust_holds() {
    rust_holds(Lib::PostgresqlLock);
}

#[test]
fn django_pglock_peer_holds() {
    peer_holds(Lib::DjangoPglock);
}

#[test]
fn django_pglock_peer_is_refused_while_rust_holds() {
    rust_holds(Lib::DjangoPglock);
}

#[test]
fn node_advisory_lock_peer_holds() {
    peer_holds(Lib::NodeAdvisoryLock);
}

#[test]
fn node_advisory_lock_peer_is_refused_while_rust_holds() {
    rust_holds(Lib::NodeAdvisoryLock);
}
