//! A private PostgreSQL server for tests: `initdb` in a temporary directory, `postgres` on a free
//! port of 127.0.0.1, one database per test (`CREATE DATABASE`), stopped by pid afterwards.
//!
//! Shared by the controller's store tests (included with `#[path]`, so this file uses only std
//! and tempfile) and the multi-process tests of this crate. PostgreSQL refuses to run as root:
//! as root the server runs as the `postgres` user (or `nobody`) through `setpriv`, the directory
//! chowned to it. A small bash keeper owns the server: it starts and stops it on request and, when
//! the test process exits however it exits (its stdin closes), stops the server by pid and
//! removes the directory. When no PostgreSQL is installed the helpers say so loudly and return
//! `None` (`bash tests/run.sh` installs it).

use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The database superuser the servers are initialised with.
pub const USER: &str = "argus";

/// How long a starting server may take to accept connections.
const START_WAIT: Duration = Duration::from_secs(30);

/// Runs the server, restarts it on `start`, stops it (SIGINT: fast shutdown, by pid) on `stop`,
/// and on end of input stops it and removes the directory. Answers each request with a line.
const KEEPER: &str = r#"
dir=$1; shift
cmd=("$@")
pid=
up() { "${cmd[@]}" >>"$dir/server.log" 2>&1 & pid=$!; }
down() { if [ -n "$pid" ]; then kill -INT "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; pid=; fi; }
up
echo "started $pid"
while read -r req; do
  case $req in
    stop) down; echo stopped ;;
    start) down; up; echo "started $pid" ;;
    *) echo "unknown request $req" ;;
  esac
done
down
rm -rf "$dir"
"#;

/// A private PostgreSQL server; stopped (and its directory removed) when dropped.
pub struct PgServer {
    port: u16,
    bin: PathBuf,
    dir: PathBuf,
    /// The keeper's pipes; `None` once dropped.
    keeper: Mutex<Keeper>,
    /// The server's pid (the postmaster), 0 while stopped.
    pid: AtomicU32,
}

struct Keeper {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

/// The directory of the newest installed PostgreSQL's binaries (`ARGUS_PG_BIN` overrides).
pub fn bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("ARGUS_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

/// Says loudly that a PostgreSQL test is skipped, and why.
pub fn skip_notice(test: &str) {
    eprintln!(
        "\n*** SKIPPED {test}: PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/postgres; \
         `bash tests/run.sh` installs postgresql-15, or set ARGUS_PG_BIN) ***\n"
    );
}

/// One server per test binary, started on first use: `None` (after a loud notice) only when
/// PostgreSQL is not installed. Panics when it is installed and does not start. The server stops
/// when the test process exits (its keeper sees the pipe close).
pub fn shared(test: &str) -> Option<&'static PgServer> {
    static SERVER: OnceLock<Option<PgServer>> = OnceLock::new();
    let server = SERVER
        .get_or_init(|| match PgServer::start() {
            Ok(s) => s,
            Err(e) => panic!("starting the shared PostgreSQL server: {e}"),
        })
        .as_ref();
    if server.is_none() {
        skip_notice(test);
    }
    server
}

/// The uid and gid PostgreSQL runs as when the tests run as root: `postgres`, else `nobody`.
fn unprivileged() -> Result<Option<(u32, u32)>, String> {
    let id = |args: &[&str]| -> Option<u32> {
        let out = Command::new("id").args(args).output().ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    };
    if id(&["-u"]) != Some(0) {
        return Ok(None);
    }
    for user in ["postgres", "nobody"] {
        if let (Some(uid), Some(gid)) = (id(&["-u", user]), id(&["-g", user])) {
            return Ok(Some((uid, gid)));
        }
    }
    Err("running as root and neither a postgres nor a nobody user exists".into())
}

/// A free loopback port (bound and released).
fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("finding a free port: {e}"))
}

impl PgServer {
    /// Initialises and starts a server of its own. `Ok(None)` when PostgreSQL is not installed.
    pub fn start() -> Result<Option<Self>, String> {
        let Some(bin) = bin_dir() else {
            return Ok(None);
        };
        let user = unprivileged()?;
        let dir = tempfile::Builder::new()
            .prefix("argus-pg-")
            .tempdir()
            .map_err(|e| format!("creating the server's directory: {e}"))?
            // The keeper removes it, also when this process dies first.
            .keep();
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .map_err(|e| format!("chown {}: {e}", dir.display()))?;
        }
        let as_user = |program: &Path| -> Command {
            let mut c = match user {
                Some((uid, gid)) => {
                    let mut c = Command::new("setpriv");
                    c.arg(format!("--reuid={uid}"))
                        .arg(format!("--regid={gid}"))
                        .arg("--clear-groups")
                        .arg("--")
                        .arg(program);
                    c
                }
                None => Command::new(program),
            };
            c.current_dir(&dir);
            c
        };
        let data = dir.join("data");
        let out = as_user(&bin.join("initdb"))
            .args(["-A", "trust", "-U", USER, "-E", "UTF8", "--no-sync", "-D"])
            .arg(&data)
            .output()
            .map_err(|e| format!("running initdb: {e}"))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(format!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let port = free_port()?;
        let server = as_user(&bin.join("postgres"));
        let mut keeper = Command::new("bash");
        keeper
            .arg("-c")
            .arg(KEEPER)
            .arg("keeper")
            .arg(&dir)
            .arg(server.get_program())
            .args(server.get_args())
            .arg("-D")
            .arg(&data)
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-k"])
            .arg(&dir)
            .args(["-c", "max_connections=300"])
            // A test server: durability is not what is tested, speed is welcome (a benchmark
            // sets ARGUS_PG_DURABLE=1 to measure the real thing).
            .args(if std::env::var_os("ARGUS_PG_DURABLE").is_some() {
                &[][..]
            } else {
                &[
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                ][..]
            })
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = keeper
            .spawn()
            .map_err(|e| format!("starting the keeper: {e}"))?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().ok_or("no keeper stdout")?);
        let server = Self {
            port,
            bin,
            dir,
            keeper: Mutex::new(Keeper {
                child,
                stdin,
                stdout,
            }),
            pid: AtomicU32::new(0),
        };
        let started = server.answer()?;
        server.note_pid(&started);
        server.wait_ready()?;
        Ok(Some(server))
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The postmaster's pid (0 while stopped).
    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::Relaxed)
    }

    /// The URL of database `name`.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates a database of its own (named after `prefix`, made unique) and returns its URL.
    pub fn create_database(&self, prefix: &str) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let clean: String = prefix
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(40)
            .collect();
        let name = format!(
            "{clean}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        self.psql(&format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("creating database {name}: {e}"));
        self.url(&name)
    }

    /// Runs one SQL statement as the superuser on database `postgres`.
    pub fn psql(&self, sql: &str) -> Result<String, String> {
        self.query(&self.url("postgres"), sql)
    }

    /// Runs one SQL statement on the database of `url` (one of this server's); returns the rows,
    /// one a line, fields separated by `|`.
    pub fn query(&self, url: &str, sql: &str) -> Result<String, String> {
        let database = url.rsplit('/').next().unwrap_or("postgres");
        let out = Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER])
            .args([
                "-d",
                database,
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
            ])
            .args(["-c", sql])
            .output()
            .map_err(|e| format!("running psql: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }

    /// Stops the server (fast shutdown: clients are disconnected) and waits until it is gone.
    pub fn stop(&self) -> Result<(), String> {
        self.request("stop")?;
        self.pid.store(0, Ordering::Relaxed);
        Ok(())
    }

    /// Starts the stopped server again, on the same data and port, and waits until it answers.
    pub fn restart(&self) -> Result<(), String> {
        let started = self.request("start")?;
        self.note_pid(&started);
        self.wait_ready()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    fn note_pid(&self, started: &str) {
        let pid = started
            .strip_prefix("started ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(0);
        self.pid.store(pid, Ordering::Relaxed);
    }

    fn request(&self, req: &str) -> Result<String, String> {
        {
            let mut k = self.keeper.lock().map_err(|_| "keeper lock poisoned")?;
            let stdin = k.stdin.as_mut().ok_or("the keeper is gone")?;
            writeln!(stdin, "{req}").map_err(|e| format!("asking the keeper to {req}: {e}"))?;
            stdin
                .flush()
                .map_err(|e| format!("asking the keeper: {e}"))?;
        }
        self.answer()
    }

    fn answer(&self) -> Result<String, String> {
        let mut k = self.keeper.lock().map_err(|_| "keeper lock poisoned")?;
        let mut line = String::new();
        match k.stdout.read_line(&mut line) {
            Ok(0) | Err(_) => Err(format!("the keeper ended; server log:\n{}", self.log())),
            Ok(_) => Ok(line.trim().to_owned()),
        }
    }

    /// Waits until the server accepts connections (`pg_isready`).
    fn wait_ready(&self) -> Result<(), String> {
        let start = Instant::now();
        loop {
            let ok = Command::new(self.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER])
                .args(["-d", "postgres", "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(());
            }
            if start.elapsed() > START_WAIT {
                return Err(format!(
                    "PostgreSQL did not accept connections within {START_WAIT:?}; log:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Ok(mut k) = self.keeper.lock() {
            // End of input: the keeper stops the server by pid and removes the directory.
            drop(k.stdin.take());
            let _ = k.child.wait();
        }
    }
}
