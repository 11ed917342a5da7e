//! `pg-advisory`: PostgreSQL advisory locks from the shell.
//!
//! * `run KEY -- CMD..`: flock(1) for PostgreSQL (run.rs, child.rs);
//! * `list`: every advisory lock in the database, decoded back to keys (list.rs);
//! * `key NAME`: the key a name maps to under each derivation, and its SQL twin (key.rs);
//! * `status KEY`: exit 0 if free, 1 if held (list.rs).
//!
//! The lock logic is `sqlx-advisory`'s, the SQL text and key derivations `advisory-common`'s; this
//! binary only parses arguments, connects, supervises the child and prints.
#![forbid(unsafe_code)]

mod args;
mod child;
mod conn;
mod exit;
mod key;
mod list;
mod run;
mod table;

use std::process::ExitCode;

use clap::Parser as _;

use args::{Cli, Command};
use exit::Failure;

fn main() -> ExitCode {
    exit::install_panic_hook();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return exit::clap_error(e),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return Failure::internal(format!("cannot start the runtime: {e}")).report(),
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => run::run(&cli.conn, args).await,
            Command::List(args) => list::list(&cli.conn, args).await,
            Command::Status(args) => list::status(&cli.conn, args).await,
            Command::Key(args) => key::key(args),
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(failure) => failure.report(),
    }
}
