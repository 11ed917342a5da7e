//! The throwaway PostgreSQL cluster.

use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};

const HELP: &str = "\
advisory-lock tests need a real PostgreSQL server. Either
  * set DATABASE_URL=postgres://user:password@host:port/database (the role needs CREATE on the database), or
  * install the PostgreSQL server binaries (Debian/Ubuntu: `apt-get install -y postgresql`; they are
    looked up on PATH, then in /usr/lib/postgresql/*/bin) so the tests can start a throwaway cluster.";

/// The database the tests run against.
#[derive(Debug)]
pub struct Db {
    url: String,
    cluster: Option<Cluster>,
}

#[derive(Debug)]
struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    as_postgres: bool,
    /// Dropping (closing) this pipe tells the watchdog to stop the server; it is never dropped while
    /// the process lives, so the OS closes it at exit.
    _watchdog_pipe: Mutex<ChildStdin>,
    _watchdog: Mutex<Child>,
}

/// The test database, started (or connected to) on first use in this process.
///
/// Panics with instructions when no server can be had.
pub fn db() -> &'static Db {
    static DB: OnceLock<Db> = OnceLock::new();
    DB.get_or_init(|| match Db::init() {
        Ok(db) => db,
        Err(e) => panic!("{e}\n\n{HELP}"),
    })
}

impl Db {
    /// A connection URL (`postgres://...`) usable by sqlx, diesel (libpq) and diesel-async.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A URL with an `application_name`, so a test can find its own sessions in `pg_stat_activity`.
    pub fn url_with_app(&self, app: &str) -> String {
        let sep = if self.url.contains('?') { '&' } else { '?' };
        format!("{}{sep}application_name={app}", self.url)
    }

    /// `true` when the tests started this server themselves (and so may restart it).
    pub fn is_throwaway(&self) -> bool {
        self.cluster.is_some()
    }

    /// The data directory of the throwaway server (`None` with `DATABASE_URL`).
    pub fn data_dir(&self) -> Option<&Path> {
        self.cluster.as_ref().map(|c| c.data.as_path())
    }

    /// The loopback port of the throwaway server (`None` with `DATABASE_URL`).
    pub fn port(&self) -> Option<u16> {
        self.cluster.as_ref().map(|c| c.port)
    }

    /// Stop the throwaway server (fast shutdown: every session is terminated) and start it again
    /// on the same port. Refuses to touch a server the tests did not start.
    pub fn restart(&self) -> Result<(), String> {
        let c = self
            .cluster
            .as_ref()
            .ok_or("restart refused: DATABASE_URL points at a server these tests did not start")?;
        c.pg_ctl(&["stop", "-m", "fast", "-w"])?;
        c.pg_ctl(&[
            "start",
            "-w",
            "-t",
            "30",
            "-l",
            &c.data.join("log").to_string_lossy(),
            "-o",
            &c.server_opts(),
        ])?;
        Ok(())
    }

    fn init() -> Result<Db, String> {
        if let Ok(url) = std::env::var("DATABASE_URL")
            && !url.trim().is_empty()
        {
            let db = Db { url, cluster: None };
            db.migrate()?;
            return Ok(db);
        }
        let cluster = Cluster::start()?;
        let db = Db {
            url: format!("postgres://postgres@127.0.0.1:{}/postgres", cluster.port),
            cluster: Some(cluster),
        };
        db.migrate()?;
        Ok(db)
    }

    /// Apply the project's migrations with psql, serialized by an advisory lock.
    fn migrate(&self) -> Result<(), String> {
        let psql = self
            .cluster
            .as_ref()
            .map(|c| c.bin.join("psql"))
            .filter(|p| p.exists())
            .or_else(|| which("psql"))
            .ok_or("psql not found (install postgresql-client)")?;
        let mut script = String::from("SELECT pg_advisory_lock(-8250176151532142352);\n");
        for m in crate::MIGRATIONS {
            script.push_str(m);
            script.push('\n');
        }
        script.push_str("SELECT pg_advisory_unlock(-8250176151532142352);\n");
        let mut child = Command::new(psql)
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &self.url])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run psql: {e}"))?;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .map_err(|e| e.to_string())?;
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "cannot prepare the test database at {}: {}",
                self.url,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }
}

impl Cluster {
    fn start() -> Result<Cluster, String> {
        let bin = find_bin_dir().ok_or_else(|| {
            "DATABASE_URL is unset and no PostgreSQL server binaries (initdb, pg_ctl, postgres) were found".to_string()
        })?;
        let as_postgres = is_root();
        let data = std::env::temp_dir().join(format!(
            "advisory-test-pg-{}-{}",
            std::process::id(),
            crate::cluster::random_suffix()
        ));
        std::fs::create_dir_all(&data)
            .map_err(|e| format!("cannot create {}: {e}", data.display()))?;
        if as_postgres {
            run(Command::new("chown").args(["postgres:", &data.to_string_lossy()])).map_err(
                |e| {
                    format!(
                        "running as root, but cannot hand {} to the postgres user: {e}",
                        data.display()
                    )
                },
            )?;
        }
        // The watchdog first, so even a failed start is cleaned up.
        let (pipe, watchdog) = spawn_watchdog(&bin, &data, as_postgres)?;
        let mut cluster = Cluster {
            bin,
            data,
            port: 0,
            as_postgres,
            _watchdog_pipe: Mutex::new(pipe),
            _watchdog: Mutex::new(watchdog),
        };
        let pgdata = cluster.data.join("pgdata");
        cluster.run_pg(
            "initdb",
            &[
                "-D",
                &pgdata.to_string_lossy(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
                "--no-instructions",
            ],
        )?;
        let mut last = String::new();
        for _ in 0..5 {
            cluster.port = free_port()?;
            match cluster.pg_ctl(&[
                "start",
                "-w",
                "-t",
                "30",
                "-l",
                &cluster.data.join("log").to_string_lossy(),
                "-o",
                &cluster.server_opts(),
            ]) {
                Ok(()) => return Ok(cluster),
                Err(e) => last = e, // most likely the port was taken in between: try another
            }
        }
        Err(format!("the throwaway PostgreSQL did not start: {last}"))
    }

    fn server_opts(&self) -> String {
        format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
             -c max_connections=400 -c shared_buffers=64MB -c deadlock_timeout=100ms",
            self.port,
            self.data.display()
        )
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<(), String> {
        let pgdata = self.data.join("pgdata");
        let mut all = vec!["-D", pgdata.to_str().unwrap()];
        all.extend_from_slice(args);
        self.run_pg("pg_ctl", &all)
    }

    fn run_pg(&self, tool: &str, args: &[&str]) -> Result<(), String> {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        cmd.args(args).current_dir(&self.data);
        run(&mut cmd)
    }
}

fn spawn_watchdog(
    bin: &Path,
    data: &Path,
    as_postgres: bool,
) -> Result<(ChildStdin, Child), String> {
    let pg_ctl = bin.join("pg_ctl");
    let pgdata = data.join("pgdata");
    let stop = if as_postgres {
        format!(
            "runuser -u postgres -- '{}' -D '{}' stop -m immediate -w",
            pg_ctl.display(),
            pgdata.display()
        )
    } else {
        format!(
            "'{}' -D '{}' stop -m immediate -w",
            pg_ctl.display(),
            pgdata.display()
        )
    };
    // Reads until EOF (the test process is gone), then stops the server and removes its files.
    // `setsid` and the traps keep a terminal's Ctrl-C from killing the watchdog before it cleans up.
    let script = format!(
        "trap '' INT TERM HUP; cat >/dev/null; if [ -f '{pid}' ]; then {stop} >/dev/null 2>&1; fi; rm -rf '{dir}'",
        pid = pgdata.join("postmaster.pid").display(),
        dir = data.display(),
    );
    let mut child = Command::new("setsid")
        .args(["sh", "-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start the cleanup watchdog (setsid, sh): {e}"))?;
    let pipe = child.stdin.take().expect("piped stdin");
    Ok((pipe, child))
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

pub(crate) fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

pub(crate) fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The directory holding `initdb`, `pg_ctl` and `postgres`: from PATH, else the newest
/// `/usr/lib/postgresql/<version>/bin`.
fn find_bin_dir() -> Option<PathBuf> {
    let complete = |d: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|t| d.join(t).is_file())
    };
    if let Some(dir) = which("initdb")
        .and_then(|p| p.canonicalize().ok())
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .filter(|d| complete(d))
    {
        return Some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, d)| complete(d))
        .collect();
    versions.sort();
    versions.pop().map(|(_, d)| d)
}

pub(crate) fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free loopback port: {e}"))?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// A random suffix for a temporary directory name (std only: a freshly seeded `RandomState`).
pub(crate) fn random_suffix() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() as u32
}
