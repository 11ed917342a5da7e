//! The command line (clap derive).

use std::ffi::OsString;
use std::time::Duration;

use advisory_common::Preset;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::exit;

const ABOUT: &str = "PostgreSQL advisory locks from the shell: run a command under a lock, see who holds what, compute keys";

const KEYS: &str = "\
Keys:
  42, -7               a bigint key: pg_advisory_lock(42)
  1,2                  an integer pair: pg_advisory_lock(1, 2)
  bigint:42, pair:(1,2)  the same, as `list` prints them
  orders:42            anything else is a name, hashed into a bigint key by the derivation
                       chosen with --preset (default: `default`, SHA-256; see `pg-advisory key NAME --all`)
  name:42              a name that looks like a number

Connection: --database-url, else DATABASE_URL, else libpq's PGHOST, PGPORT, PGUSER, PGDATABASE,
PGPASSWORD, PGSSLMODE, PGAPPNAME (and ~/.pgpass). application_name is `pg-advisory` unless the URL
or PGAPPNAME sets one.";

#[derive(Debug, Parser)]
#[command(name = "pg-advisory", version, about = ABOUT, after_help = format!("{KEYS}\n\n{}", exit::HELP))]
pub struct Cli {
    #[command(flatten)]
    pub conn: ConnArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// How to reach the database (every command except `key`).
#[derive(Debug, Args)]
pub struct ConnArgs {
    /// postgres://user:password@host:port/database?sslmode=... [env: DATABASE_URL; else libpq's PG* variables]
    #[arg(
        long,
        value_name = "URL",
        global = true,
        env = "DATABASE_URL",
        hide_env = true
    )]
    pub database_url: Option<String>,
    /// Give up connecting after this long (a plain number is seconds) [env: PGCONNECT_TIMEOUT]
    #[arg(long, value_name = "DURATION", global = true, default_value = "10s", value_parser = parse_duration,
          env = "PGCONNECT_TIMEOUT", hide_env = true)]
    pub connect_timeout: Duration,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command while holding a lock (flock(1) for PostgreSQL)
    #[command(after_help = RUN_HELP)]
    Run(RunArgs),
    /// Every advisory lock held or awaited in the database, with who holds it and who waits
    #[command(after_help = LIST_HELP)]
    List(ListArgs),
    /// The key a name maps to under each derivation, and the SQL that computes it in psql
    #[command(after_help = KEY_HELP)]
    Key(KeyArgs),
    /// Exit 0 if KEY is free, 1 if it is held (who holds it goes to stderr)
    #[command(after_help = STATUS_HELP)]
    Status(StatusArgs),
}

const RUN_HELP: &str = "\
Examples:
  pg-advisory run nightly-report -- ./report.sh --all      # wait for the lock, then run
  pg-advisory run --no-wait nightly-report -- ./report.sh  # exit 75 at once if another host runs it
  pg-advisory run --timeout 30s --shared 42 -- ./reader    # shared lock, wait at most 30 s
  */5 * * * * pg-advisory run -n -E 0 sync-job -- /usr/local/bin/sync   # cron: skip quietly if busy

The command gets PG_ADVISORY_KEY (e.g. bigint:42), PG_ADVISORY_MODE (exclusive|shared),
PG_ADVISORY_SCOPE (session|transaction), PG_ADVISORY_BACKEND_PID (the session holding the lock)
and, for a KEY given as a name, PG_ADVISORY_KEY_NAME in its environment. INT, TERM and HUP sent to
pg-advisory are forwarded to it. The lock is released when the command exits, however it exits,
and never while it runs; if pg-advisory itself is killed
with SIGKILL the session ends and the lock is released while the command may still run.

While the command runs, the holding session asks the server every --check-interval whether it still
holds the lock. If it does not (the session was terminated, the server restarted, no answer within
--check-timeout), the command gets TERM, then KILL after --grace, and pg-advisory exits 74
(--on-lost=ignore: a warning only, and the command's own status).

Exit status: the command's (128+N if killed by signal N); 75 not acquired (-E); 74 lock lost;
126/127 command not executable / not found; 69 cannot connect; 70 database error; 2 bad input.";

const LIST_HELP: &str = "\
Examples:
  pg-advisory list                         # table on a terminal
  pg-advisory list --key orders:42         # only that key; a name is matched under every preset
  pg-advisory list --json | jq '.[] | select(.blocked_by != [])'
  pg-advisory list --watch                 # redraw every --interval

Columns: KEY (as bigint:N or pair:(a,b), and the name when --key gave one), MODE, STATE (held or
waiting), PID, APP, USER, CLIENT, AGE (waiting: time waited; held in a transaction: transaction
age; otherwise the session's age, an upper bound, shown as <=), BLOCKED BY (pg_blocking_pids of a
waiter), QUERY (the session's current or last statement).";

const KEY_HELP: &str = "\
Examples:
  pg-advisory key orders:42                 # the default derivation (name)
  pg-advisory key orders:42 --preset sqlx   # what sqlx's PgAdvisoryLock::new(\"orders:42\") locks
  pg-advisory key orders:42 --all           # every derivation, with the SQL to compute it in psql";

const STATUS_HELP: &str = "\
Examples:
  pg-advisory status nightly-report && echo free
  pg-advisory status --preset postgresql-lock orders:42";

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Take the lock in shared mode (other shared holders may hold it too)
    #[arg(long, short = 's')]
    pub shared: bool,
    /// Wait for the lock as long as it takes (the default)
    #[arg(long, conflicts_with_all = ["no_wait", "timeout"])]
    pub wait: bool,
    /// Do not wait: exit with the conflict code if another session holds the lock
    #[arg(long, short = 'n', conflicts_with = "timeout")]
    pub no_wait: bool,
    /// Wait at most this long (30s, 500ms, 2m, 1h; a plain number is seconds), server-side
    #[arg(long, short = 'w', value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Hold a transaction-scope lock in an open transaction (for PgBouncer in transaction mode)
    #[arg(long)]
    pub xact: bool,
    /// How a KEY that is a name becomes a number (see `pg-advisory key NAME --all`)
    #[arg(long, short = 'p', value_name = "NAME", value_parser = parse_preset)]
    pub preset: Option<Preset>,
    /// Exit code when the lock was not acquired (--no-wait, --timeout)
    #[arg(long, short = 'E', value_name = "CODE", default_value_t = exit::CONFLICT)]
    pub conflict_exit_code: u8,
    /// Exit code when the lock was lost while the command ran
    #[arg(long, value_name = "CODE", default_value_t = exit::LOST)]
    pub lost_exit_code: u8,
    /// What to do if the lock is lost while the command runs
    #[arg(long, value_enum, default_value_t = OnLost::Term)]
    pub on_lost: OnLost,
    /// After TERM on a lost lock, wait this long before KILL
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub grace: Duration,
    /// How often the holding session checks that it still holds the lock
    #[arg(long, value_name = "DURATION", default_value = "500ms", value_parser = parse_positive_duration)]
    pub check_interval: Duration,
    /// A check not answered within this long counts as a lost lock
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_positive_duration)]
    pub check_timeout: Duration,
    /// The lock: 42, 1,2 or a name (a pair starting with '-': pair:(-1,2))
    #[arg(allow_negative_numbers = true)]
    pub key: String,
    /// The command to run, after `--`
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnLost {
    /// TERM the command, KILL it after --grace, exit with --lost-exit-code
    Term,
    /// Print a warning and let the command finish
    Ignore,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this key (42, 1,2 or a name)
    #[arg(long, short = 'k', value_name = "KEY", allow_hyphen_values = true)]
    pub key: Option<String>,
    /// Match a name given with --key under this derivation only (default: every one)
    #[arg(long, short = 'p', value_name = "NAME", value_parser = parse_preset, requires = "key")]
    pub preset: Option<Preset>,
    /// One JSON array of objects (with --watch: one array per line)
    #[arg(long)]
    pub json: bool,
    /// Print again every --interval until interrupted
    #[arg(long)]
    pub watch: bool,
    /// The --watch period
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_positive_duration)]
    pub interval: Duration,
}

#[derive(Debug, Args)]
pub struct KeyArgs {
    /// The name (a string key)
    #[arg(allow_hyphen_values = true)]
    pub name: String,
    /// Only this derivation
    #[arg(long, short = 'p', value_name = "NAME", value_parser = parse_preset, conflicts_with = "all")]
    pub preset: Option<Preset>,
    /// Every derivation (the default when --preset is not given)
    #[arg(long)]
    pub all: bool,
    /// JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// How a KEY that is a name becomes a number
    #[arg(long, short = 'p', value_name = "NAME", value_parser = parse_preset)]
    pub preset: Option<Preset>,
    /// The lock: 42, 1,2 or a name (a pair starting with '-': pair:(-1,2))
    #[arg(allow_negative_numbers = true)]
    pub key: String,
}

fn parse_preset(s: &str) -> Result<Preset, String> {
    s.parse::<Preset>().map_err(|e| e.to_string())
}

/// `30s`, `500ms`, `2m`, `1h`, `1.5s`, or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let scale = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 0.001,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(bad_duration(s)),
    };
    let value: f64 = num.parse().map_err(|_| bad_duration(s))?;
    Duration::try_from_secs_f64(value * scale).map_err(|_| bad_duration(s))
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err(format!("'{s}' must be more than zero")),
        d => Ok(d),
    }
}

fn bad_duration(s: &str) -> String {
    format!("malformed duration '{s}' (expected e.g. 30s, 500ms, 2m, 1h, or seconds)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "s", "abc", "10x", "-1s", "1e999", "1..2s", "ms5"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_positive_duration("0s").is_err());
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
