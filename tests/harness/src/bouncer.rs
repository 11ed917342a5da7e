//! PgBouncer in front of the throwaway server, for the tests that prove what session and
//! transaction pooling do to advisory locks.

use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::{Db, free_port, is_root, which};

/// A running PgBouncer; stopped when dropped, and by its watchdog when the test process exits.
#[derive(Debug)]
pub struct Bouncer {
    url: String,
    port: u16,
    dir: PathBuf,
    pipe: Option<ChildStdin>,
    child: Child,
}

impl Bouncer {
    /// A URL through PgBouncer to the test database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The loopback port PgBouncer listens on.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        drop(self.pipe.take()); // EOF: the watchdog stops pgbouncer
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Db {
    /// Start PgBouncer (`pool_mode` = `"session"` or `"transaction"`) on a free loopback port in
    /// front of the throwaway server, with `pool_size` server connections.
    ///
    /// Needs the `pgbouncer` binary (Debian: `apt-get install pgbouncer`); errors with that advice
    /// when it is missing, and refuses to run in front of a `DATABASE_URL` server.
    pub fn pgbouncer(&self, pool_mode: &str, pool_size: u32) -> Result<Bouncer, String> {
        let pg_port = self
            .port()
            .ok_or("pgbouncer tests need the throwaway cluster (unset DATABASE_URL)")?;
        let exe = which("pgbouncer")
            .or_else(|| Some(PathBuf::from("/usr/sbin/pgbouncer")).filter(|p| p.is_file()))
            .ok_or("pgbouncer not found: install it (Debian: apt-get install pgbouncer)")?;
        let dir = std::env::temp_dir().join(format!(
            "advisory-test-bouncer-{}-{}",
            std::process::id(),
            crate::cluster::random_suffix()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let as_postgres = is_root(); // pgbouncer refuses to run as root
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port()?;
            let ini = dir.join("pgbouncer.ini");
            std::fs::write(
                &ini,
                format!(
                    "[databases]\npostgres = host=127.0.0.1 port={pg_port} dbname=postgres user=postgres\n\
                     [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                     auth_type = any\npool_mode = {pool_mode}\ndefault_pool_size = {pool_size}\nmax_client_conn = 500\n\
                     ignore_startup_parameters = extra_float_digits,options,search_path\n\
                     server_reset_query = DISCARD ALL\nlogfile = {log}\npidfile =\n",
                    log = dir.join("log").display()
                ),
            )
            .map_err(|e| e.to_string())?;
            if as_postgres {
                Command::new("chown")
                    .args(["-R", "postgres:", &dir.to_string_lossy()])
                    .status()
                    .map_err(|e| e.to_string())?;
            }
            let run = if as_postgres {
                format!(
                    "runuser -u postgres -- '{}' '{}'",
                    exe.display(),
                    ini.display()
                )
            } else {
                format!("'{}' '{}'", exe.display(), ini.display())
            };
            let script = format!(
                "trap '' INT TERM HUP; {run} & pid=$!; cat >/dev/null; kill $pid 2>/dev/null; wait $pid"
            );
            let mut child = Command::new("setsid")
                .args(["sh", "-c", &script])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot start pgbouncer: {e}"))?;
            let pipe = child.stdin.take();
            let mut b = Bouncer {
                url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
                port,
                dir: dir.clone(),
                pipe,
                child,
            };
            // ready when it accepts TCP connections (deadline, not a fixed sleep)
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Ok(b);
                }
                if let Ok(Some(_)) = b.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            last = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
            b.dir = PathBuf::new(); // keep the directory for the next attempt
            drop(b);
        }
        let _ = std::fs::remove_dir_all(&dir);
        Err(format!("pgbouncer did not start: {last}"))
    }
}
