//! Bad input gets one line on stderr and a documented non-zero exit code, never a panic, a
//! backtrace or a usage dump. Also: the connection comes from libpq's PG* variables when there is
//! no URL, and the tool's sessions are named `pg-advisory` (or PGAPPNAME).

mod support;

use std::net::TcpListener;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::*;

/// One line, `pg-advisory: ` first, containing `needle`, and the exit code `code`.
fn assert_one_line_error(what: &str, o: &Output, code: i32, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "{what}: {err}");
    assert_eq!(err.lines().count(), 1, "{what}: not one line: {err}");
    assert!(err.starts_with("pg-advisory: "), "{what}: {err}");
    assert!(err.contains(needle), "{what}: {needle:?} not in {err}");
    for noise in ["panicked", "backtrace", "Usage:", "RUST_BACKTRACE"] {
        assert!(!err.contains(noise), "{what}: {err}");
    }
    assert!(o.stdout.is_empty(), "{what}: printed {:?}", stdout(o));
}

#[test]
fn usage_errors_exit_2_with_one_line() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["run", "--preset", "nope", "k", "--", "true"],
            "unknown key preset \"nope\"; valid presets: default, sqlx",
        ),
        (&["list", "--key", "k", "--preset", "nope"], "valid presets"),
        (&["status", "--preset", "nope", "k"], "valid presets"),
        (&["key", "--preset", "nope", "k"], "valid presets"),
        (
            &["run", "--timeout", "5x", "k", "--", "true"],
            "malformed duration '5x'",
        ),
        (
            &["run", "--grace=-1s", "k", "--", "true"],
            "malformed duration '-1s'",
        ),
        (
            &["run", "--check-interval", "0", "k", "--", "true"],
            "must be more than zero",
        ),
        (
            &["--connect-timeout", "soon", "list"],
            "malformed duration 'soon'",
        ),
        (
            &["list", "--watch", "--interval", "1 fortnight"],
            "malformed duration",
        ),
        (&["run", "k"], "missing the command to run"),
        (&["run", "k", "true"], "the command goes after --"),
        (
            &["run", "-n", "--timeout", "1s", "k", "--", "true"],
            "cannot be used with",
        ),
        (&["run", "-E", "300", "k", "--", "true"], "300"),
        (
            &["run", "99999999999999999999", "--", "true"],
            "invalid key '99999999999999999999'",
        ),
        (&["status", "1,2147483648"], "each half of a pair key"),
        (&["list", "--key", "pair:(1)"], "expected pair:(a,b)"),
        (&["list", "--preset", "sqlx"], "--key"),
        (&["lsit"], "unrecognized subcommand"),
        (&["status", "-1,2"], "written pair:(-1,"),
        (&["--database-url", "not a url", "list"], "bad database URL"),
        (
            &["--database-url", "mysql://u@h/db", "status", "1"],
            "bad database URL",
        ),
        (
            &["--database-url", "postgres://u@h:notaport/db", "list"],
            "bad database URL",
        ),
    ];
    for (args, needle) in cases {
        let o = output(args);
        assert_one_line_error(&format!("{args:?}"), &o, 2, needle);
    }
}

#[test]
fn an_invalid_pgsslmode_or_pgport_is_bad_input() {
    for (var, value) in [("PGSSLMODE", "sometimes"), ("PGPORT", "port")] {
        let o = output_of(
            bin()
                .env_remove("DATABASE_URL")
                .env(var, value)
                .args(["status", "1"]),
        );
        assert_one_line_error(var, &o, 2, &format!("invalid {var} '{value}'"));
    }
}

#[test]
fn an_unreachable_server_is_69_for_every_command() {
    // a port that was free a moment ago: connection refused
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://nobody:secret@127.0.0.1:{port}/db");
    for args in [&["list"][..], &["status", "x"], &["run", "x", "--", "true"]] {
        let o = output_of(bin().arg("--database-url").arg(&url).args(args));
        assert_one_line_error(
            &format!("{args:?}"),
            &o,
            69,
            "cannot connect to nobody@127.0.0.1",
        );
        assert!(
            !stderr(&o).contains("secret"),
            "password printed: {}",
            stderr(&o)
        );
    }
    // nothing ran
    let d = scratch();
    let o = output_of(bin().arg("--database-url").arg(&url).args([
        "run",
        "x",
        "--",
        "touch",
        d.join("ran").to_str().unwrap(),
    ]));
    assert_eq!(o.status.code(), Some(69));
    assert!(!d.join("ran").exists());
}

#[test]
fn the_connect_timeout_bounds_a_server_that_never_answers() {
    // accepts TCP connections (the kernel's backlog) but never speaks the protocol
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let start = Instant::now();
    let o = output_of(
        bin()
            .args(["--connect-timeout", "500ms", "--database-url"])
            .arg(format!("postgres://u@127.0.0.1:{port}/db"))
            .arg("list"),
    );
    let took = start.elapsed();
    assert_one_line_error(
        "silent server",
        &o,
        69,
        "no answer within 500ms (--connect-timeout)",
    );
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(5),
        "{took:?}"
    );
    // PGCONNECT_TIMEOUT (seconds, as libpq reads it) is the default
    let o = output_of(
        bin()
            .env("PGCONNECT_TIMEOUT", "1")
            .arg("--database-url")
            .arg(format!("postgres://u@127.0.0.1:{port}/db"))
            .arg("list"),
    );
    assert_one_line_error("PGCONNECT_TIMEOUT", &o, 69, "no answer within 1s");
    drop(silent);
}

#[test]
fn help_and_version_document_the_exit_codes() {
    let o = output(&["--help"]);
    assert_eq!(o.status.code(), Some(0));
    let help = stdout(&o);
    for code in ["75", "74", "69", "70", "126", "127", "128+N"] {
        assert!(help.contains(code), "--help lacks {code}");
    }
    for cmd in ["run", "list", "key", "status"] {
        let o = output(&[cmd, "--help"]);
        assert_eq!(o.status.code(), Some(0));
        assert!(
            stdout(&o).contains("Examples:"),
            "{cmd} --help has no examples"
        );
    }
    let o = output(&["--version"]);
    assert_eq!(
        stdout(&o).trim(),
        format!("pg-advisory {}", env!("CARGO_PKG_VERSION"))
    );
}

/// Split the harness URL `postgres://user@host:port/db` into libpq variables.
fn pg_vars() -> Vec<(&'static str, String)> {
    let rest = url()
        .strip_prefix("postgres://")
        .expect("a postgres:// URL");
    let (auth, rest) = rest.split_once('@').expect("user@");
    let (user, password) = auth.split_once(':').unwrap_or((auth, ""));
    let (hostport, db) = rest.split_once('/').expect("/database");
    let db = db.split('?').next().unwrap();
    let (host, port) = hostport.rsplit_once(':').expect("host:port");
    let mut v = vec![
        ("PGHOST", host.to_owned()),
        ("PGPORT", port.to_owned()),
        ("PGUSER", user.to_owned()),
        ("PGDATABASE", db.to_owned()),
    ];
    if !password.is_empty() {
        v.push(("PGPASSWORD", password.to_owned()));
    }
    v
}

fn with_pg_vars(app: Option<&str>) -> Command {
    let mut c = bin();
    c.env_remove("DATABASE_URL").envs(pg_vars());
    if let Some(app) = app {
        c.env("PGAPPNAME", app);
    }
    c
}

#[test]
fn pg_variables_connect_and_the_session_is_named_pg_advisory_unless_pgappname_says_otherwise() {
    for (app, expected) in [
        (None, "pg-advisory"),
        (Some("nightly-cron"), "nightly-cron"),
    ] {
        let key = unique("pgvars");
        let d = scratch();
        let out = d.join("list.json");
        // the child lists the lock its parent holds
        let script = format!("{BIN} list --json --key {key} > {}", out.display());
        let o = output_of(with_pg_vars(app).args(["run", &key, "--", "sh", "-c", &script]));
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(&read(&out)).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
        assert_eq!(v[0]["application_name"], expected);
    }
}
