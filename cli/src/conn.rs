//! Connecting: `--database-url`, `DATABASE_URL`, then libpq's `PG*` variables; a bounded wait.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx::{ConnectOptions as _, Connection as _, PgConnection};

use crate::args::ConnArgs;
use crate::exit::Failure;

/// The `application_name` every session of this tool has unless the URL or `PGAPPNAME` says
/// otherwise, so that `list` shows which sessions are `pg-advisory`'s.
pub const APPLICATION_NAME: &str = "pg-advisory";

/// The connect options, without connecting. Bad input (URL, `PGSSLMODE`, `PGPORT`) is a usage
/// error.
pub fn options(args: &ConnArgs) -> Result<PgConnectOptions, Failure> {
    check_env("PGSSLMODE", |v| PgSslMode::from_str(v).is_ok())?;
    check_env("PGPORT", |v| v.parse::<u16>().is_ok())?;
    let opts = match args.database_url.as_deref().map(str::trim) {
        Some(url) if !url.is_empty() => {
            let scheme_ok = url.starts_with("postgres://") || url.starts_with("postgresql://");
            if !scheme_ok {
                return Err(Failure::usage(
                    "bad database URL: expected postgres://user:password@host:port/database",
                ));
            }
            PgConnectOptions::from_str(url)
                .map_err(|e| Failure::usage(format!("bad database URL: {}", strip_config(&e))))?
        }
        _ => PgConnectOptions::new(),
    };
    let opts = if opts.get_application_name().is_none() {
        opts.application_name(APPLICATION_NAME)
    } else {
        opts
    };
    // sqlx logs statements through `log`; nothing is installed to print them, keep it that way.
    Ok(opts.disable_statement_logging())
}

/// Connect within `--connect-timeout`; every failure is [`crate::exit::CONNECT`].
pub async fn connect(args: &ConnArgs) -> Result<PgConnection, Failure> {
    let opts = options(args)?;
    let target = describe(&opts);
    match tokio::time::timeout(args.connect_timeout, PgConnection::connect_with(&opts)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(Failure::connect(format!(
            "cannot connect to {target}: {}",
            strip_config(&e)
        ))),
        Err(_) => Err(Failure::connect(format!(
            "cannot connect to {target}: no answer within {:?} (--connect-timeout)",
            args.connect_timeout
        ))),
    }
}

/// `user@host:port/database`, never the password.
fn describe(opts: &PgConnectOptions) -> String {
    format!(
        "{}@{}:{}/{}",
        opts.get_username(),
        opts.get_host(),
        opts.get_port(),
        opts.get_database().unwrap_or(opts.get_username())
    )
}

fn check_env(name: &str, valid: impl Fn(&str) -> bool) -> Result<(), Failure> {
    match std::env::var(name) {
        Ok(v) if !valid(&v) => Err(Failure::usage(format!("invalid {name} '{v}'"))),
        _ => Ok(()),
    }
}

fn strip_config(e: &sqlx::Error) -> String {
    let s = e.to_string();
    s.strip_prefix("error with configuration: ")
        .unwrap_or(&s)
        .to_owned()
}

/// Close the connection politely; the session ends (and with it every lock it holds) either way.
pub async fn close(conn: PgConnection) {
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), conn.close()).await;
}
