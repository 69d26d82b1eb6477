//! A failing database never stops supervision and loses nothing: the real controller and node
//! agent, a busy fake agent under a stream of Capture commands, and the database made to fail
//! by a full disk (a small tmpfs), by a lock another process holds, and across a SIGTERM.
//! Throughout, the node stays up (its heartbeats are processed); while the store fails,
//! `/readyz` says why, the admin service's gRPC health is NOT_SERVING and a `store_failing`
//! incident is open; afterwards every acknowledged command is in the database.

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argus_proto::v1 as pb;
use argus_tests::cluster::{TestCluster, fake_agent, sref};
use argus_tests::eventually;
use argus_tests::sqlite_lock::Locker;
use argus_tests::tmux::TestTmux;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const WAIT: Duration = Duration::from_secs(30);
/// Concurrent Capture callers.
const CALLERS: usize = 4;
/// Pace of each caller: at most 50 commands/s each (the audit log of an unpaced debug run
/// outgrows a small disk in seconds).
const PACE: Duration = Duration::from_millis(20);

// === the cluster under load ===

/// A controller (database at `db`) and one node agent watching a busy fake agent.
async fn cluster(db: Option<&Path>) -> anyhow::Result<(TestTmux, TestCluster)> {
    let tmux = TestTmux::new();
    tmux.session("busy", &fake_agent("working"), &[("profile", "claude")])?;
    let mut spec = TestCluster::spec();
    if let Some(db) = db {
        spec.config.db = format!("sqlite://{}", db.display());
    }
    let mut c = TestCluster::start(spec).await?;
    c.start_agent("n1", tmux.socket())?;
    c.wait_session("n1", "busy", "the node agent reporting", WAIT, |_| true)
        .await?;
    Ok((tmux, c))
}

/// Capture commands from several callers until stopped; the ids of those acknowledged.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
    callers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(url: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let callers = (0..CALLERS)
            .map(|_| {
                let (stop, acked, url) = (stop.clone(), acked.clone(), url.to_owned());
                tokio::spawn(async move {
                    let Ok(mut admin) = argus_tests::spec::admin(&url).await else {
                        return;
                    };
                    let mut pace = tokio::time::interval(PACE);
                    while !stop.load(Ordering::Relaxed) {
                        pace.tick().await;
                        let call = admin.capture(pb::CaptureRequest {
                            session: sref("n1", "busy"),
                            lines: 1,
                        });
                        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(5), call).await
                        {
                            let r = r.into_inner();
                            if r.status() == pb::CommandStatus::Ok {
                                lock(&acked).push(r.command_id);
                            }
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            acked,
            callers,
        }
    }

    fn acked(&self) -> usize {
        lock(&self.acked).len()
    }

    /// Stops the callers; the acknowledged command ids.
    async fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        for c in self.callers {
            let _ = tokio::time::timeout(Duration::from_secs(10), c).await;
        }
        std::mem::take(&mut *lock(&self.acked))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Every fleet event, collected in the background.
struct Events {
    seen: Arc<Mutex<Vec<pb::FleetEvent>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Events {
    async fn watch(c: &TestCluster) -> anyhow::Result<Self> {
        let mut stream = c
            .admin()
            .await?
            .watch_events(pb::WatchEventsRequest::default())
            .await?
            .into_inner();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let into = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok(Some(e)) = stream.message().await {
                lock(&into).push(e);
            }
        });
        Ok(Self { seen, task })
    }

    fn any(&self, pred: impl Fn(&pb::FleetEvent) -> bool) -> bool {
        lock(&self.seen).iter().any(pred)
    }

    /// Fails when node n1 was ever suspected or declared down.
    fn assert_node_stayed_up(&self) {
        let bad: Vec<_> = lock(&self.seen)
            .iter()
            .filter(|e| e.node_id == "n1" && (e.kind == "node_suspect" || e.kind == "node_down"))
            .cloned()
            .collect();
        assert!(
            bad.is_empty(),
            "the node was declared suspect or down while the store failed: {bad:?}"
        );
    }

    fn incident(&self, kind: &str) -> bool {
        self.any(|e| e.kind == kind && e.message.contains("store_failing"))
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// === what a user checks ===

async fn admin_health(c: &TestCluster) -> anyhow::Result<ServingStatus> {
    let ch = tonic::transport::Channel::from_shared(c.url())?
        .connect()
        .await?;
    let r = HealthClient::new(ch)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "argus.v1.AdminService".into(),
        })
        .await?
        .into_inner();
    Ok(r.status())
}

/// Node n1's health as the controller reports it.
async fn node_health(c: &TestCluster) -> anyhow::Result<String> {
    let nodes = c
        .admin()
        .await?
        .list_nodes(pb::ListNodesRequest {})
        .await?
        .into_inner()
        .nodes;
    Ok(nodes
        .into_iter()
        .find(|n| n.node_id == "n1")
        .map(|n| n.health)
        .unwrap_or_default())
}

/// Every command in the database: id -> status.
fn stored_commands(db: &Path) -> anyhow::Result<HashMap<String, String>> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys\n\
             c = sqlite3.connect(sys.argv[1], timeout=30)\n\
             for i, s in c.execute('SELECT command_id, status FROM commands'): print(i, s)",
        ])
        .arg(db)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "reading {}: {}",
        db.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(i, s)| (i.to_owned(), s.to_owned()))
        .collect())
}

/// Waits until every acknowledged command is in the database with its result.
async fn assert_all_stored(db: &Path, acked: &[String]) -> anyhow::Result<()> {
    let acked: HashSet<&String> = acked.iter().collect();
    let missing = eventually(
        "every acknowledged command in the database",
        WAIT,
        || async {
            let stored = stored_commands(db)?;
            let missing: Vec<&&String> = acked
                .iter()
                .filter(|id| {
                    stored.get(id.as_str()).map(String::as_str) != Some("COMMAND_STATUS_OK")
                })
                .collect();
            Ok(missing.is_empty().then_some(()))
        },
    )
    .await;
    if missing.is_err() {
        let stored = stored_commands(db)?;
        let mut by_status: HashMap<&str, usize> = HashMap::new();
        for id in &acked {
            let status = stored
                .get(id.as_str())
                .map_or("never stored", String::as_str);
            if status != "COMMAND_STATUS_OK" {
                *by_status.entry(status).or_default() += 1;
            }
        }
        anyhow::bail!(
            "of {} acknowledged commands, not stored with their result: {by_status:?}",
            acked.len()
        );
    }
    Ok(())
}

/// Waits until `n` more commands are acknowledged (the load goes on).
async fn more_acked(load: &Load, n: usize) -> anyhow::Result<()> {
    let target = load.acked() + n;
    eventually("more commands acknowledged", WAIT, || async {
        Ok((load.acked() >= target).then_some(()))
    })
    .await
}

// === (a) a full disk ===

/// A small tmpfs mounted for the test, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> anyhow::Result<Option<Self>> {
        let dir = tempfile::Builder::new().prefix("argus-disk-").tempdir()?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Ok(Some(Self { dir })),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs ({}); the full-disk test needs root",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                Ok(None)
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount ({e}); the full-disk test needs root");
                Ok(None)
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the disk with a file; returns its path.
    fn fill(&self) -> anyhow::Result<PathBuf> {
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path)?;
        let chunk = vec![0u8; 16 << 10];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
        Ok(path)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_delays_nothing_and_loses_nothing() -> anyhow::Result<()> {
    // 16 MiB rather than 2: the audit log of a few thousand commands (and SQLite's WAL) must fit
    // once the filler is gone, or the disk is simply full again.
    let Some(disk) = SmallDisk::mount("16m")? else {
        return Ok(());
    };
    let db = disk.path().join("argus.db");
    let (_tmux, c) = cluster(Some(&db)).await?;
    let events = Events::watch(&c).await?;
    let load = Load::start(&c.url());
    more_acked(&load, 20).await?;

    let filler = disk.fill()?;
    let why = c.wait_readyz(false).await?;
    assert!(why.contains("store failing"), "{why}");
    assert!(
        why.contains("full"),
        "the reason names the full disk: {why}"
    );
    assert_eq!(admin_health(&c).await?, ServingStatus::NotServing);
    eventually("a store_failing incident", WAIT, || async {
        Ok(events.incident("incident_opened").then_some(()))
    })
    .await?;
    // Longer than node_suspect_after (6 s): commands go on and the node stays up.
    let failing_since = Instant::now();
    while failing_since.elapsed() < Duration::from_secs(8) {
        more_acked(&load, 10).await?;
    }
    assert_eq!(node_health(&c).await?, "up");
    assert!(c.readyz()?.0 == 503, "still failing while full");

    std::fs::remove_file(&filler)?;
    let freed = Instant::now();
    c.wait_readyz(true).await?;
    let recovery = freed.elapsed();
    eprintln!("store recovered {recovery:?} after the disk was freed");
    assert_eq!(admin_health(&c).await?, ServingStatus::Serving);
    more_acked(&load, 10).await?;
    let acked = load.stop().await;
    assert_all_stored(&db, &acked).await?;
    eventually("the store_failing incident closed", WAIT, || async {
        Ok(events.incident("incident_closed").then_some(()))
    })
    .await?;
    events.assert_node_stayed_up();
    assert_eq!(node_health(&c).await?, "up");
    eprintln!(
        "{} commands acknowledged, all stored; recovery {recovery:?}",
        acked.len()
    );
    Ok(())
}

// === (b) a lock held by another process ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_locked_by_another_process_delays_nothing() -> anyhow::Result<()> {
    let (_tmux, c) = cluster(None).await?;
    let db = c.dir.path().join("argus.db");
    let events = Events::watch(&c).await?;
    let load = Load::start(&c.url());
    more_acked(&load, 20).await?;

    let mut locker = Locker::hold(&db, 10)?;
    let why = c.wait_readyz(false).await?;
    assert!(why.contains("locked"), "the reason names the lock: {why}");
    assert_eq!(admin_health(&c).await?, ServingStatus::NotServing);
    // Commands are acknowledged while the lock is held.
    more_acked(&load, 20).await?;
    assert!(!locker.ended(), "the lock ended before the check");
    eventually("the lock holder to end", WAIT, || {
        let ended = locker.ended();
        async move { Ok(ended.then_some(())) }
    })
    .await?;
    let released = Instant::now();
    c.wait_readyz(true).await?;
    eprintln!(
        "store recovered {:?} after the lock was released",
        released.elapsed()
    );
    more_acked(&load, 10).await?;
    let acked = load.stop().await;
    assert_all_stored(&db, &acked).await?;
    assert!(
        events.incident("incident_opened"),
        "no store_failing incident"
    );
    events.assert_node_stayed_up();
    assert_eq!(node_health(&c).await?, "up");
    Ok(())
}

// === (c) SIGTERM while the store fails ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_the_store_fails_journals_and_the_next_start_replays() -> anyhow::Result<()> {
    let (_tmux, mut c) = cluster(None).await?;
    let db = c.dir.path().join("argus.db");
    let journal = c.dir.path().join("argus.db.journal");
    let load = Load::start(&c.url());
    more_acked(&load, 10).await?;
    let mut locker = Locker::hold(&db, 120)?;
    c.wait_readyz(false).await?;
    more_acked(&load, 20).await?;
    let acked = load.stop().await;

    // SIGTERM, and wait for the controller to finish on its own.
    let mut controller = c.controller.take().expect("a controller");
    let pid = rustix::process::Pid::from_raw(controller.proc.pid() as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM)?;
    eventually("the controller to exit", WAIT, || {
        let exited = controller.proc.check_alive().is_err();
        async move { Ok(exited.then_some(())) }
    })
    .await?;
    let log = controller.proc.log();
    assert!(!log.contains("writes lost"), "writes were lost at shutdown");
    let lines = std::fs::read_to_string(&journal)?.lines().count();
    assert!(lines > 0, "nothing journaled at shutdown");
    drop(controller);
    locker.release();

    // The next start replays the journal before it serves.
    c.start_controller().await?;
    let stored = stored_commands(&db)?;
    let missing = acked
        .iter()
        .filter(|id| stored.get(id.as_str()).map(String::as_str) != Some("COMMAND_STATUS_OK"))
        .count();
    assert_eq!(
        missing,
        0,
        "{missing} of {} acknowledged commands missing after the restart ({lines} journaled)",
        acked.len()
    );
    assert_eq!(std::fs::metadata(&journal)?.len(), 0, "journal emptied");
    Ok(())
}

// === (d) no action whose audit row could be lost ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_death_while_the_store_fails_is_restarted_once_it_takes_writes() -> anyhow::Result<()> {
    let tmux = TestTmux::new();
    tmux.session(
        "crashy",
        &fake_agent("idle"),
        &[("profile", "claude"), ("restart", &fake_agent("idle"))],
    )?;
    let mut c = TestCluster::with_policy("restart_on_death = \"labelled\"").await?;
    c.start_agent("n1", tmux.socket())?;
    let before = c
        .wait_session("n1", "crashy", "the agent seen", WAIT, |s| s.agent_pid > 0)
        .await?;
    let db = c.dir.path().join("argus.db");
    let mut locker = Locker::hold(&db, 60)?;
    c.wait_readyz(false).await?;
    // The agent dies while the store refuses writes: the death is seen, the restart waits (its
    // audit row could only be kept in memory, and a SIGKILL would lose it).
    let pid = rustix::process::Pid::from_raw(before.agent_pid as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::KILL)?;
    c.wait_session("n1", "crashy", "the death seen", WAIT, |s| {
        s.state() == pb::SessionState::Dead
    })
    .await?;
    // The policy restarts after a 1 s backoff; give it three: the session must not come back
    // while the store fails.
    let back = eventually(
        "a restart while the store fails",
        Duration::from_secs(3),
        || {
            let there = tmux.has_session("crashy");
            async move { Ok(there.then_some(())) }
        },
    )
    .await;
    assert!(back.is_err(), "restarted while the store failed");
    locker.release();
    c.wait_readyz(true).await?;
    let after = c
        .wait_session(
            "n1",
            "crashy",
            "restarted once the store takes writes",
            WAIT,
            |s| s.agent_pid > 0 && s.agent_pid != before.agent_pid,
        )
        .await?;
    assert_ne!(after.agent_pid, before.agent_pid);
    let s = c
        .admin()
        .await?
        .get_session(pb::GetSessionRequest {
            session: sref("n1", "crashy"),
            history_limit: 50,
        })
        .await?
        .into_inner();
    assert!(
        s.commands.iter().any(|k| k.action == "restart"),
        "the restart is in the audit: {:?}",
        s.commands
    );
    Ok(())
}
