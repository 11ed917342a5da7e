//! Exit codes and the one-line error every failure ends in.

use std::process::ExitCode;

/// Bad input: unknown preset, malformed duration or key, bad URL, missing `--` command (also
/// clap's own code for usage errors).
pub const USAGE: u8 = 2;
/// The database could not be reached (or the connection was lost before the lock was taken).
pub const CONNECT: u8 = 69;
/// Any other database error (permission denied, a statement failed), or an internal error.
pub const DATABASE: u8 = 70;
/// `run`: the lock was lost while the child ran, and the child was signalled (`--on-lost=term`).
pub const LOST: u8 = 74;
/// `run`: the lock was not acquired (`--no-wait`, `--timeout`); `-E` / `--conflict-exit-code`.
pub const CONFLICT: u8 = 75;
/// `run`: the command was found but could not be executed.
pub const NOT_EXECUTABLE: u8 = 126;
/// `run`: the command was not found.
pub const NOT_FOUND: u8 = 127;

/// The exit-code table shown at the end of `--help` (kept next to the constants it describes;
/// a unit test checks they agree).
pub const HELP: &str = "\
Exit status:
  run       the command's own status (128+N if it was killed by signal N), or
            75   the lock was not acquired (--no-wait, --timeout); change it with -E
            74   the lock was lost while the command ran and the command was signalled
            126  the command could not be executed, 127 it was not found
            128+N  pg-advisory got signal N while waiting for the lock (the command never ran)
  status    0 the key is free, 1 it is held (the holders are printed on stderr)
  list, key 0
  any       2 bad input (usage, unknown preset, malformed duration, key or URL)
            69 cannot connect to the database (or lost the connection before the lock was taken)
            70 any other database error";

/// Why the program stops without a command's status to return: one line on stderr, one code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: one_line(&message.into()),
        }
    }

    pub fn usage(message: impl Into<String>) -> Failure {
        Failure::new(USAGE, message)
    }

    pub fn connect(message: impl Into<String>) -> Failure {
        Failure::new(CONNECT, message)
    }

    pub fn database(message: impl Into<String>) -> Failure {
        Failure::new(DATABASE, message)
    }

    pub fn internal(message: impl Into<String>) -> Failure {
        Failure::new(DATABASE, message)
    }

    /// A database error after connecting: a lost connection is [`CONNECT`], anything else
    /// [`DATABASE`].
    pub fn from_lock_error(context: &str, e: &sqlx_advisory::Error) -> Failure {
        if e.kind() == Some(advisory_common::ErrorKind::ConnectionLost) {
            Failure::connect(format!("{context}: {e}: {}", source_text(e)))
        } else {
            Failure::database(format!("{context}: {e}"))
        }
    }

    /// Print `pg-advisory: <message>` and return the code.
    pub fn report(self) -> ExitCode {
        eprintln!("pg-advisory: {}", self.message);
        ExitCode::from(self.code)
    }
}

fn source_text(e: &sqlx_advisory::Error) -> String {
    std::error::Error::source(e)
        .map(|s| s.to_string())
        .unwrap_or_default()
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Failure {
        match e {
            sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut => {
                Failure::connect(format!("connection to the database lost: {e}"))
            }
            other => Failure::database(format!("database error: {other}")),
        }
    }
}

/// Write `text` to stdout; a closed pipe (`pg-advisory list | head`) ends the program quietly
/// with 141 (128 + SIGPIPE), as a shell tool killed by SIGPIPE would.
pub fn print(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if out
        .write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .is_err()
    {
        std::process::exit(141);
    }
}

/// A panic (a bug) is reported like any other failure: one line, no backtrace.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        eprintln!(
            "pg-advisory: internal error: {}",
            one_line(&info.to_string())
        );
    }));
}

/// Newlines and runs of whitespace folded, so that every error is one line.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A clap error as one line (help and version are printed as clap prints them).
pub fn clap_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                ExitCode::from(USAGE)
            } else {
                ExitCode::SUCCESS
            }
        }
        kind => {
            let text = e.render().to_string();
            let main = text
                .split("\n\nUsage:")
                .next()
                .unwrap_or(&text)
                .split("\n\nFor more information")
                .next()
                .unwrap_or(&text);
            let main = one_line(main);
            let main = main.strip_prefix("error: ").unwrap_or(&main);
            let running = std::env::args().any(|a| a == "run");
            let message = if kind == ErrorKind::MissingRequiredArgument
                && main.contains("<COMMAND>")
                && !main.contains("<KEY>")
            {
                "missing the command to run: pg-advisory run [OPTIONS] KEY -- COMMAND [ARGS..]"
                    .to_owned()
            } else if kind == ErrorKind::UnknownArgument
                && main.starts_with("unexpected argument '-")
                && main.as_bytes().get(22).is_some_and(u8::is_ascii_digit)
            {
                let arg = main.split('\'').nth(1).unwrap_or_default();
                format!(
                    "unexpected argument '{arg}' (a pair key starting with '-' is written pair:({arg},..))"
                )
            } else if kind == ErrorKind::UnknownArgument && running {
                format!(
                    "{main} (the command goes after --: pg-advisory run [OPTIONS] KEY -- COMMAND [ARGS..])"
                )
            } else {
                format!("{main} (see --help)")
            };
            Failure::usage(message).report()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_names_every_code() {
        for code in [
            USAGE,
            CONNECT,
            DATABASE,
            LOST,
            CONFLICT,
            NOT_EXECUTABLE,
            NOT_FOUND,
        ] {
            assert!(
                HELP.contains(&format!(" {code} ")),
                "{code} missing from the help"
            );
        }
    }

    #[test]
    fn one_line_folds_newlines() {
        assert_eq!(one_line("a\n  b\r\nc "), "a b c");
    }
}
