//! Chaos: a fleet of fake agents (`chaos/agent.py`: they work, think, hang, die, show a rate
//! limit or a permission question; some labelled `@argus-restart`, some not, and bystander
//! sessions that are no agent) on a private tmux server under the real controller (SQLite, on a
//! small tmpfs when this process may mount one) and the real node agent (through the
//! fault-injecting proxy). Faults come from a schedule drawn from a seed (`chaos/faults.rs`):
//! controller SIGKILL and restart on the same database, node agent SIGKILL, SIGSTOP/SIGCONT,
//! tmux server kill, the database locked by another process, the disk full, a network black
//! hole, and agents dying, hanging, thinking, asking, getting rate-limited. Afterwards the
//! invariants of `chaos/check.rs` are checked against the agents' own logs and the audit. A run
//! prints its seed; `bench chaos --seed N --faults F` replays its schedule.

mod check;
pub mod faults;
mod fleet;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex as SyncMutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::Mutex;

use self::check::{AuditRow, Journal, Rules, Violation};
use self::faults::{Fault, Kind, Pace, Schedule};
use self::fleet::{Fleet, Role};
use super::proxy::Proxy;
use super::report::{Machine, Row, Section, table};
use super::{Scale, Tmux, histogram, record};
use crate::eventually;
use crate::process::Proc;
use crate::spec::{Controller, ControllerSpec, NodeAgentSpec};

/// Fault kinds the smoke schedule leaves out for now, and why. Empty: the smoke draws from every
/// kind. A smoke run fails on a broken safety invariant (1, 3 or 4) and reports a late restart
/// (2) with its seed; a full run fails on any.
pub const SMOKE_OFF: &[(Kind, &str)] = &[];

/// How long the closing controller of a run has to close the commands left open: the policy's
/// command timeout (3 s), a few ticks, and its start.
const CLOSE_BOUND: Duration = Duration::from_secs(20);

/// What the command line asked for.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Replays this seed (default: a fresh one, printed).
    pub seed: Option<u64>,
    /// Number of faults (default: the scale's).
    pub faults: Option<usize>,
    /// Only these kinds of fault (default: every kind the scale runs).
    pub only: Vec<Kind>,
}

/// The size of a run.
#[derive(Debug, Clone, Copy)]
struct Plan {
    labelled: usize,
    unlabelled: usize,
    bystanders: usize,
    faults: usize,
    pace: Pace,
    /// Bound on the fault phase: faults not injected by then are dropped (and reported).
    budget: Duration,
    /// Bound on the wait for every labelled agent to run again after the faults.
    settle: Duration,
}

fn plan(scale: Scale) -> Plan {
    match scale {
        Scale::Full => Plan {
            labelled: 12,
            unlabelled: 3,
            bystanders: 3,
            faults: 1200,
            pace: Pace {
                hold: (500, 3000),
                infra_gap: (200, 1000),
                agent_gap: (150, 1100),
            },
            budget: Duration::from_secs(20 * 60),
            settle: Duration::from_secs(60),
        },
        Scale::Smoke => Plan {
            labelled: 5,
            unlabelled: 2,
            bystanders: 2,
            faults: 40,
            pace: Pace {
                hold: (500, 2500),
                infra_gap: (300, 1200),
                agent_gap: (200, 900),
            },
            budget: Duration::from_secs(50),
            settle: Duration::from_secs(30),
        },
    }
}

/// The policy of the run: restarts of labelled deaths at once (the crash-loop, mass-death and
/// budget brakes lifted, so that every death must be followed by exactly one restart, except in
/// a rate-limit cooldown, which holds the restart until the reset), and a
/// short ladder (idle after 3 unchanged probes, 2 s dwell, hard stall at 20 s) so that hung and
/// idle agents are acted on within the run, while the protected ones must not be. Short node
/// thresholds: a black hole or a stopped node agent makes the node suspect, then down.
const POLICY: &str = "restart_on_death = \"labelled\"
restart_backoff_min = \"0s\"
restart_backoff_max = \"1s\"
crash_loop_crashes = 1000000
max_restarts = 1000000
mass_death_deaths = 1000000
fleet_destructive_per_minute = 1000000
idle_checks = 3
nudge_dwell = \"2s\"
nudge_budget = 1000
hard_stall = \"20s\"
confirm_after = \"1s\"
command_timeout = \"3s\"
rate_limit_cooldown = \"1h\"
node_suspect_after = \"2s\"
node_down_after = \"4s\"
";

/// The node agent's probe interval.
const PROBE: Duration = Duration::from_millis(250);

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Runs the chaos benchmark and returns its section; the section's verdict is missed when any
/// invariant broke (the caller fails the run then).
pub async fn run(scale: Scale, machine: &Machine, opts: Options) -> anyhow::Result<Section> {
    let mut plan = plan(scale);
    if let Some(n) = opts.faults {
        plan.faults = n;
    }
    let seed = opts.seed.unwrap_or_else(rand::random);
    let enabled: Vec<Kind> = if opts.only.is_empty() {
        Kind::ALL
            .into_iter()
            .filter(|k| scale == Scale::Full || !SMOKE_OFF.iter().any(|(off, _)| off == k))
            .collect()
    } else {
        opts.only.clone()
    };
    let replay = replay_command(scale, seed, plan.faults, &opts.only);
    println!(
        "chaos: seed {seed}, {} faults ({scale:?}); replay with `{replay}`",
        plan.faults
    );
    if scale == Scale::Smoke && opts.only.is_empty() {
        for (k, why) in SMOKE_OFF {
            println!(
                "chaos: NOTE the smoke schedule leaves out \"{}\" for now: {why}",
                k.name()
            );
        }
    }
    let agents = plan.labelled + plan.unlabelled;
    let schedule = faults::schedule(seed, plan.faults, &enabled, agents, plan.pace);
    let dir = super::workdir("chaos")?;
    let world = World::start(dir.path(), &plan).await?;
    let started = Instant::now();
    let outcome = world.inject(&schedule, plan.budget, agents).await;
    let fault_phase = started.elapsed();
    let settled = world.settle(plan.settle).await;
    let (audit, audit_note) = world.finish().await;
    let mut journal = world.journal.lock().map(|j| j.clone()).unwrap_or_default();
    journal.links = check::link_changes(dir.path());
    let rules = Rules {
        grace: Duration::from_secs(5),
        tmux_window: Duration::from_secs(3),
    };
    let (violations, tally) = check::check(&world.fleet, &journal, audit.as_deref(), rules);
    let report = Report {
        replay,
        seed,
        scale,
        plan,
        outcome,
        fault_phase,
        settled,
        violations,
        tally,
        audit_note,
        tmpfs: world.tmpfs.is_some(),
        t0: world.t0,
    };
    // `kill-server` can be refused while a killed node agent's control client is still
    // attached (issue 9, item 8), and a server can be left without its socket: end them by pid.
    world.kill_tmux_processes();
    drop(world);
    report.print();
    // The smoke run (in CI) fails on the safety invariants: an action on a busy agent, an action
    // without its audit row, a session outside the named ones touched. Those hold whatever the
    // machine's load. A restart later than 30 s (invariant 2) is reported with its seed only: on
    // a loaded 2-core runner it can be the machine's speed. A full run fails on any.
    if scale == Scale::Smoke
        && let Some(v) = report.violations.iter().find(|v| v.invariant != 2)
    {
        anyhow::bail!(
            "safety invariant {} broken in the smoke run: {}; replay with `{}`",
            v.invariant,
            v.what,
            report.replay
        );
    }
    Ok(report.section(machine))
}

/// The command line that replays a run.
fn replay_command(scale: Scale, seed: u64, faults: usize, only: &[Kind]) -> String {
    let mut s = format!(
        "bench chaos{} --seed {seed} --faults {faults}",
        if scale == Scale::Smoke {
            " --smoke"
        } else {
            ""
        }
    );
    for k in only {
        let _ = write!(s, " --only {}", k.slug());
    }
    s
}

// === The world under test ===

/// The processes and files of one run.
struct World {
    dir: PathBuf,
    spec: ControllerSpec,
    controller: Mutex<Option<Controller>>,
    node_spec: NodeAgentSpec,
    node: Mutex<Option<Proc>>,
    tmux: Tmux,
    proxy: Proxy,
    fleet: Fleet,
    db: PathBuf,
    /// The tmpfs mounted for the database, unmounted on drop.
    tmpfs: Option<Mount>,
    journal: SyncMutex<Journal>,
    /// Unix seconds at the start.
    t0: f64,
}

/// What the fault phase did.
#[derive(Debug, Default)]
struct Outcome {
    injected: BTreeMap<Kind, usize>,
    /// Faults that could not apply when their turn came (no live agent to hit, no tmpfs).
    skipped: BTreeMap<Kind, usize>,
    /// Faults whose injection or recovery failed (printed when they happen).
    failed: BTreeMap<Kind, usize>,
    /// Faults left when the time budget ran out.
    dropped: usize,
}

impl World {
    async fn start(dir: &Path, plan: &Plan) -> anyhow::Result<Self> {
        let t0 = now();
        let dbdir = dir.join("db");
        std::fs::create_dir_all(&dbdir)?;
        let tmpfs = Mount::tmpfs(&dbdir);
        if tmpfs.is_none() {
            println!(
                "chaos: NOTE could not mount a tmpfs for the database (not root?): the disk-full \
                 fault is skipped"
            );
        }
        let db = dbdir.join("argus.db");
        let mut spec = ControllerSpec::new()
            .policy(POLICY)
            .tick(Duration::from_millis(200))
            .env("RUST_LOG", "info")
            .quiet();
        spec.config.db = format!("sqlite://{}", db.display());
        let controller = spec.start(dir).await?;
        let proxy = Proxy::start(spec.config.listen).await?;
        let tmux = Tmux::new();
        let fleet = Fleet::new(
            &dir.join("fleet"),
            plan.labelled,
            plan.unlabelled,
            plan.bystanders,
        )?;
        let mut journal = Journal::default();
        for m in &fleet.members {
            fleet.create(&tmux, m)?;
            journal.creations.push((m.name.clone(), now()));
        }
        let node_spec = NodeAgentSpec::new(
            "chaos-node",
            &format!("http://{}", proxy.addr()),
            tmux.socket(),
        )
        .state_dir("state")
        .probe_interval(PROBE)
        .heartbeat(Duration::from_millis(500))
        .env("RUST_LOG", "info")
        .quiet();
        let node = node_spec.start(dir)?;
        let agents = plan.labelled + plan.unlabelled;
        eventually(
            "every agent known to the controller",
            Duration::from_secs(30),
            || async {
                let s = controller.sessions("chaos-node").await.unwrap_or_default();
                Ok((s.iter().filter(|s| s.agent_pid > 0).count() >= agents).then_some(()))
            },
        )
        .await?;
        Ok(Self {
            dir: dir.to_owned(),
            spec,
            controller: Mutex::new(Some(controller)),
            node_spec,
            node: Mutex::new(Some(node)),
            tmux,
            proxy,
            fleet,
            db,
            tmpfs,
            journal: SyncMutex::new(journal),
            t0,
        })
    }

    fn journal(&self, f: impl FnOnce(&mut Journal)) {
        if let Ok(mut j) = self.journal.lock() {
            f(&mut j);
        }
    }

    /// Runs both fault streams concurrently, within `budget`.
    async fn inject(&self, s: &Schedule, budget: Duration, agents: usize) -> Outcome {
        let deadline = Instant::now() + budget;
        let outcome = SyncMutex::new(Outcome::default());
        let count = |kind: Kind, applied: bool| {
            if let Ok(mut o) = outcome.lock() {
                let map = if applied {
                    &mut o.injected
                } else {
                    &mut o.skipped
                };
                *map.entry(kind).or_default() += 1;
            }
        };
        let infra = async {
            for (i, f) in s.infra.iter().enumerate() {
                if Instant::now() > deadline {
                    return s.infra.len() - i;
                }
                tokio::time::sleep(f.gap).await;
                let from = now();
                let result = self.infra(f).await;
                let to = now();
                self.journal(|j| j.infra.push((f.kind.name(), from, to)));
                println!(
                    "chaos: +{:.1} s to +{:.1} s: {}",
                    from - self.t0,
                    to - self.t0,
                    f.kind.name()
                );
                match result {
                    Ok(applied) => count(f.kind, applied),
                    Err(e) => {
                        // The world recovers at the next fault of the same part (a controller
                        // or node agent that failed to start is started by the next kill).
                        println!(
                            "chaos: at +{:.1} s, {} failed: {e:#}",
                            now() - self.t0,
                            f.kind.name()
                        );
                        if let Ok(mut o) = outcome.lock() {
                            *o.failed.entry(f.kind).or_default() += 1;
                        }
                    }
                }
                if (i + 1) % 50 == 0 {
                    println!(
                        "chaos: {} infrastructure faults done, at +{:.0} s",
                        i + 1,
                        now() - self.t0
                    );
                }
            }
            0
        };
        let agents = async {
            let mut dead_since = BTreeMap::new();
            for (i, f) in s.agents.iter().enumerate() {
                if Instant::now() > deadline {
                    return s.agents.len() - i;
                }
                tokio::time::sleep(f.gap).await;
                self.revive(&mut dead_since);
                count(f.kind, self.agent(f, agents));
            }
            0
        };
        let (a, b) = tokio::join!(infra, agents);
        let mut o = outcome.into_inner().unwrap_or_default();
        o.dropped = a + b;
        o
    }

    /// The operator's part, so that the fleet does not dwindle over a long run: agents that
    /// Argus rightly leaves dead (unlabelled ones, and labelled ones that died in a rate-limit
    /// cooldown, whose restart is due only at the reset) are started again by the runner once
    /// they have been dead for 5 s; Argus's own restarts come well before that. A labelled agent
    /// Argus failed to restart is started again after 30 s (the checker still reports the
    /// missed restart: the runner's start is no restart).
    fn revive(&self, dead_since: &mut BTreeMap<usize, Instant>) {
        for (i, m) in self.fleet.members.iter().enumerate() {
            let after = match m.role {
                Role::Unlabelled => Duration::from_secs(5),
                Role::Labelled if self.fleet.rate_limited(m) => Duration::from_secs(5),
                Role::Labelled => Duration::from_secs(30),
                Role::Bystander => continue,
            };
            if self.fleet.live_pid(m).is_some() {
                dead_since.remove(&i);
                continue;
            }
            let since = *dead_since.entry(i).or_insert_with(Instant::now);
            if since.elapsed() >= after {
                let t = now();
                self.journal(|j| j.creations.push((m.name.clone(), t)));
                if let Err(e) = self.unwedged(|| self.fleet.revive(&self.tmux, m)) {
                    println!("chaos: could not start {} again: {e:#}", m.name);
                }
                dead_since.remove(&i);
            }
        }
    }

    /// One agent fault, on its target or, when that agent is not running, on the next agent
    /// that is; false when none is.
    fn agent(&self, f: &Fault, agents: usize) -> bool {
        let Some((m, pid)) = (0..agents).find_map(|i| {
            let m = self.fleet.members.get((f.target + i) % agents.max(1))?;
            Some((m, self.fleet.live_pid(m)?))
        }) else {
            return false;
        };
        match f.kind.mode() {
            Some(mode) => self.fleet.set_mode(m, mode).is_ok(),
            None => {
                let t = now();
                self.journal(|j| j.agent_kills.push((pid, t)));
                super::procs::sigkill(pid).is_ok()
            }
        }
    }

    /// One infrastructure fault: injected, held, recovered. False when it could not apply.
    async fn infra(&self, f: &Fault) -> anyhow::Result<bool> {
        match f.kind {
            Kind::ControllerKill => {
                let mut c = self.controller.lock().await;
                if let Some(mut old) = c.take() {
                    old.proc.kill();
                }
                tokio::time::sleep(f.hold).await;
                *c = Some(self.start_controller().await?);
            }
            Kind::NodeKill => {
                let mut n = self.node.lock().await;
                if let Some(mut old) = n.take() {
                    old.kill();
                }
                tokio::time::sleep(f.hold).await;
                *n = Some(self.node_spec.start(&self.dir)?);
            }
            Kind::NodeStop => {
                let n = self.node.lock().await;
                let Some(pid) = n.as_ref().map(Proc::pid) else {
                    return Ok(false);
                };
                signal(pid, rustix::process::Signal::STOP)?;
                tokio::time::sleep(f.hold).await;
                signal(pid, rustix::process::Signal::CONT)?;
            }
            Kind::TmuxKill => {
                let t = now();
                let _ = self.tmux.run(&["kill-server"]);
                let done = now();
                self.journal(|j| j.tmux_kills.push((t, done)));
                tokio::time::sleep(f.hold).await;
                // The operator's part: the sessions Argus does not own come back.
                for m in &self.fleet.members {
                    if m.role != Role::Labelled && !self.tmux.has_session(&m.name) {
                        let t = now();
                        self.journal(|j| j.creations.push((m.name.clone(), t)));
                        if let Err(e) = self.unwedged(|| self.fleet.create(&self.tmux, m)) {
                            println!("chaos: could not create {} again: {e:#}", m.name);
                        }
                    }
                }
            }
            Kind::DbLocked => lock_database(&self.db, f.hold).await?,
            Kind::DiskFull => {
                let Some(mount) = &self.tmpfs else {
                    return Ok(false);
                };
                let filler = mount.path.join("filler");
                fill(&filler)?;
                tokio::time::sleep(f.hold).await;
                std::fs::remove_file(&filler).context("removing the filler")?;
            }
            Kind::BlackHole => {
                self.proxy.black_hole();
                tokio::time::sleep(f.hold).await;
                self.proxy.restore();
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Starts the controller on the same ports and database, retrying while the port is still
    /// held by the killed one.
    async fn start_controller(&self) -> anyhow::Result<Controller> {
        let mut last = None;
        for _ in 0..3 {
            match self.spec.start(&self.dir).await {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt")))
            .context("restarting the controller on the same database")
    }

    /// Waits until every labelled agent runs again (or `bound` passes), then a while longer
    /// for commands in flight to finish: the command timeout and a few ticks. Returns how long
    /// the wait for the agents took, `None` when they did not all come back.
    async fn settle(&self, bound: Duration) -> Option<Duration> {
        let start = Instant::now();
        // A fault whose recovery failed may have left a part down: start it now.
        {
            let mut c = self.controller.lock().await;
            if c.is_none() {
                match self.start_controller().await {
                    Ok(started) => *c = Some(started),
                    Err(e) => println!("chaos: the controller does not start: {e:#}"),
                }
            }
            let mut n = self.node.lock().await;
            if n.is_none() {
                match self.node_spec.start(&self.dir) {
                    Ok(started) => *n = Some(started),
                    Err(e) => println!("chaos: the node agent does not start: {e:#}"),
                }
            }
        }
        let labelled: Vec<_> = self
            .fleet
            .members
            .iter()
            .filter(|m| m.role == Role::Labelled)
            .collect();
        let back = eventually("every labelled agent running again", bound, || async {
            Ok(labelled
                .iter()
                .all(|m| self.fleet.live_pid(m).is_some())
                .then_some(()))
        })
        .await
        .is_ok();
        let took = start.elapsed();
        // An observation window, not a wait for a condition: anything still in flight after
        // the command timeout must have been closed by then.
        tokio::time::sleep(Duration::from_secs(5)).await;
        back.then_some(took)
    }

    /// Runs a tmux step of the runner; when tmux answers "server exited unexpectedly" (a server
    /// left without its socket after racing restarts, so that no new one can start), ends every
    /// tmux process of this run's socket by pid, removes the socket and tries once more.
    fn unwedged(&self, step: impl Fn() -> anyhow::Result<()>) -> anyhow::Result<()> {
        match step() {
            Err(e) if format!("{e:#}").contains("server exited unexpectedly") => {
                println!(
                    "chaos: at +{:.1} s, tmux cannot start a server on the socket: ending this \
                     run's tmux processes",
                    now() - self.t0
                );
                self.kill_tmux_processes();
                let _ = std::fs::remove_file(self.tmux.socket());
                step()
            }
            other => other,
        }
    }

    /// SIGKILLs every tmux process whose command line names this run's socket (servers and
    /// clients this run started, directly or through the node agent).
    fn kill_tmux_processes(&self) {
        let socket = self.tmux.socket().as_os_str().as_encoded_bytes().to_vec();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let is_tmux = args.first().is_some_and(|a| a.ends_with(b"tmux"));
            if is_tmux && args.contains(&socket.as_slice()) {
                let _ = super::procs::sigkill(pid);
            }
        }
    }

    /// Stops the controller (gracefully: it drains its writes; no new command after this) and
    /// the node agent, then reads the audit. A command sent just before the end has no answer
    /// yet: as after any controller restart, the next controller process adopts it and closes
    /// it at its deadline. So a controller is started once more on the same database until the
    /// audit has no open command (bounded), which is what invariant 3 checks: nothing stays
    /// pending for ever.
    async fn finish(&self) -> (Option<Vec<AuditRow>>, Option<String>) {
        if let Some(mut c) = self.controller.lock().await.take() {
            c.proc.stop();
        }
        if let Some(mut n) = self.node.lock().await.take() {
            n.stop();
        }
        let open = |rows: &[AuditRow]| rows.iter().filter(|r| !r.finished()).count();
        if read_audit(&self.db).await.is_ok_and(|rows| open(&rows) > 0) {
            match self.start_controller().await {
                Ok(mut c) => {
                    let _ = eventually("the last commands closed", CLOSE_BOUND, || async {
                        Ok(read_audit(&self.db)
                            .await
                            .is_ok_and(|rows| open(&rows) == 0)
                            .then_some(()))
                    })
                    .await;
                    c.proc.stop();
                }
                Err(e) => println!("chaos: the closing controller does not start: {e:#}"),
            }
        }
        match read_audit(&self.db).await {
            Ok(rows) => (Some(rows), None),
            Err(e) => (None, Some(format!("{e:#}"))),
        }
    }
}

fn signal(pid: u32, sig: rustix::process::Signal) -> anyhow::Result<()> {
    let p = rustix::process::Pid::from_raw(pid as i32).context("pid 0")?;
    rustix::process::kill_process(p, sig).with_context(|| format!("signal {sig:?} to {pid}"))
}

/// Holds `BEGIN EXCLUSIVE` on the database from another process (python3's sqlite3) for
/// `hold`.
async fn lock_database(db: &Path, hold: Duration) -> anyhow::Result<()> {
    const SCRIPT: &str = "import sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], timeout=10, isolation_level=None)
c.execute('BEGIN EXCLUSIVE')
print('locked', flush=True)
time.sleep(float(sys.argv[2]))
c.execute('COMMIT')
";
    let mut child = tokio::process::Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(db)
        .arg(format!("{:.3}", hold.as_secs_f64()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting python3 to lock the database")?;
    let out = child.stdout.take().context("piped stdout")?;
    let mut lines = BufReader::new(out).lines();
    // The controller's own writes are short: a lock not granted within 10 s means the
    // controller holds one for good (a wedged store).
    let locked = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await;
    anyhow::ensure!(
        matches!(locked, Ok(Ok(Some(ref l))) if l == "locked"),
        "the database could not be locked within 10 s: the controller holds a lock"
    );
    match tokio::time::timeout(hold + Duration::from_secs(30), child.wait()).await {
        Ok(r) => {
            r?;
        }
        Err(_) => {
            let _ = child.kill().await;
            anyhow::bail!("the lock holder did not end");
        }
    }
    Ok(())
}

/// Writes zeros into `path` until the file system is full.
fn fill(path: &Path) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut f = std::fs::File::create(path).context("creating the filler")?;
    let chunk = vec![0u8; 256 * 1024];
    loop {
        match f.write(&chunk) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) => {
                return Ok(());
            }
            Err(e) => return Err(e).context("filling the disk"),
        }
    }
}

/// The `commands` table (python3's sqlite3: the tests crate has no SQLite driver of its own).
async fn read_audit(db: &Path) -> anyhow::Result<Vec<AuditRow>> {
    const SCRIPT: &str = "import json, sqlite3, sys
c = sqlite3.connect(sys.argv[1], timeout=10)
cols = ['command_id', 'session_name', 'action', 'origin', 'reason', 'issued_at_ms', 'status']
for r in c.execute('SELECT ' + ', '.join(cols) + ' FROM commands ORDER BY issued_at_ms'):
    print(json.dumps(dict(zip(cols, r))))
";
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new("python3")
            .args(["-c", SCRIPT])
            .arg(db)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("reading the audit timed out")??;
    anyhow::ensure!(
        out.status.success(),
        "reading the audit failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).context("an audit row"))
        .collect()
}

/// A tmpfs mounted by this run, unmounted when dropped.
struct Mount {
    path: PathBuf,
}

impl Mount {
    /// Mounts a 64 MiB tmpfs on `path`; `None` when that is not allowed here.
    fn tmpfs(path: &Path) -> Option<Self> {
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64m", "tmpfs"])
            .arg(path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Self {
            path: path.to_owned(),
        })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

// === The report ===

struct Report {
    replay: String,
    seed: u64,
    scale: Scale,
    plan: Plan,
    outcome: Outcome,
    fault_phase: Duration,
    settled: Option<Duration>,
    violations: Vec<Violation>,
    tally: check::Tally,
    audit_note: Option<String>,
    tmpfs: bool,
    t0: f64,
}

impl Report {
    fn injected(&self) -> usize {
        self.outcome.injected.values().sum()
    }

    fn print(&self) {
        println!(
            "chaos: {} faults injected in {:.0} s ({} skipped, {} failed, {} dropped at the time \
             bound)",
            self.injected(),
            self.fault_phase.as_secs_f64(),
            self.outcome.skipped.values().sum::<usize>(),
            self.outcome.failed.values().sum::<usize>(),
            self.outcome.dropped
        );
        for (k, n) in &self.outcome.injected {
            println!("chaos:   {:>5}  {}", n, k.name());
        }
        println!(
            "chaos: {} labelled deaths, {} restarted, {} held by a rate-limit cooldown ({} of \
             them because what lifted it happened out of Argus's sight); {} agent instances",
            self.tally.deaths,
            self.tally.restarted,
            self.tally.held,
            self.tally.held_unseen,
            self.tally.instances
        );
        if let Some(note) = &self.audit_note {
            println!("chaos: the audit could not be read: {note}");
        }
        println!("chaos: {} violations", self.violations.len());
        for v in &self.violations {
            println!(
                "chaos:   [invariant {}] at +{:.1} s: {}",
                v.invariant,
                v.at - self.t0,
                v.what
            );
        }
        if !self.violations.is_empty() {
            println!(
                "chaos: FAILED with seed {}; replay with `{}`",
                self.seed, self.replay
            );
        }
    }

    fn section(&self, machine: &Machine) -> Section {
        let mut body = String::from("## Chaos\n\n");
        let _ = writeln!(
            body,
            "Machine: {}.\n\n`bench chaos`: {} labelled agents (`@argus-restart`, half with \
             `remain-on-exit`), {} unlabelled agents and {} bystander sessions (no agent) on a \
             private tmux server, under the real controller (SQLite{}) and node agent (through \
             the loopback proxy). Faults come from a schedule drawn from a seed, infrastructure \
             faults one at a time (held 0.5 to 3 s), agent faults alongside. The fake agents log \
             every keystroke and signal they receive; the invariants are checked against those \
             logs and the audit. Policy: restarts at once with the crash-loop, mass-death and \
             budget brakes lifted (a death in a rate-limit cooldown is held until the reset, hours away, \
             by design); a short ladder (hard stall 20 s) so that hung agents are acted \
             on; a protected mode counts once it has shown for 5 s.\n\nSeed {}: replay with \
             `{}`.\n",
            machine.line(),
            self.plan.labelled,
            self.plan.unlabelled,
            self.plan.bystanders,
            if self.tmpfs {
                " on a 64 MiB tmpfs"
            } else {
                ", no tmpfs: disk-full skipped"
            },
            self.seed,
            self.replay
        );
        let mut delays = histogram();
        for d in &self.tally.restart_delays {
            record(&mut delays, Duration::from_secs_f64(d.max(0.0)));
        }
        let delays = super::Latency::of(&delays);
        let by_invariant = |i: u8| self.violations.iter().filter(|v| v.invariant == i).count();
        let rows = vec![
            Row::target(
                "faults injected",
                self.injected().to_string(),
                match self.scale {
                    Scale::Full => ">= 1,000",
                    Scale::Smoke => "smoke",
                },
                self.scale == Scale::Smoke || self.injected() >= 1000,
            ),
            Row::target(
                "1. actions on busy, thinking, asking or rate-limited agents",
                by_invariant(1).to_string(),
                "0",
                by_invariant(1) == 0,
            ),
            Row::target(
                "2. labelled deaths not restarted once",
                format!(
                    "{} (of {} deaths, {} held by a rate-limit cooldown, {} of them because \
                     what lifted it happened out of Argus's sight; restarted p50 / p99 / max {})",
                    by_invariant(2),
                    self.tally.deaths,
                    self.tally.held,
                    self.tally.held_unseen,
                    delays.triple()
                ),
                "0",
                by_invariant(2) == 0,
            ),
            Row::target(
                "3. commands without a final audit row, actions without one",
                match &self.audit_note {
                    None => by_invariant(3).to_string(),
                    Some(_) => "audit unreadable".to_owned(),
                },
                "0",
                by_invariant(3) == 0 && self.audit_note.is_none(),
            ),
            Row::target(
                "4. sessions touched outside the named agents",
                by_invariant(4).to_string(),
                "0",
                by_invariant(4) == 0,
            ),
        ];
        body.push_str(&table(&rows));
        if self.scale == Scale::Smoke && !SMOKE_OFF.is_empty() {
            body.push_str(
                "\nLeft out of the smoke schedule for now (today's code breaks an invariant):\n\n",
            );
            for (k, why) in SMOKE_OFF {
                let _ = writeln!(body, "- {}: {why}", k.name());
            }
        }
        body.push_str(
            "\n| fault | injected | skipped (nothing to hit) | failed to inject or recover |\n\
             | --- | --- | --- | --- |\n",
        );
        for k in Kind::ALL {
            let i = self.outcome.injected.get(&k).copied().unwrap_or(0);
            let s = self.outcome.skipped.get(&k).copied().unwrap_or(0);
            let f = self.outcome.failed.get(&k).copied().unwrap_or(0);
            if i + s + f > 0 {
                let _ = writeln!(body, "| {} | {i} | {s} | {f} |", k.name());
            }
        }
        let allowed: Vec<String> = self
            .tally
            .allowed
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
        let _ = writeln!(
            body,
            "\nFault phase {:.0} s{}; every labelled agent running again {}. Actions that \
             reached hung or idle agents (allowed): {}. Audit: {}.",
            self.fault_phase.as_secs_f64(),
            if self.outcome.dropped > 0 {
                format!(
                    " ({} faults dropped at the time bound)",
                    self.outcome.dropped
                )
            } else {
                String::new()
            },
            match self.settled {
                Some(d) => format!("{:.1} s after the last fault", d.as_secs_f64()),
                None => "**not within the bound**".to_owned(),
            },
            if allowed.is_empty() {
                "none".to_owned()
            } else {
                allowed.join(", ")
            },
            self.tally
                .audit
                .iter()
                .map(|(k, n)| format!("{n} {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if !self.violations.is_empty() {
            body.push_str("\nViolations (first 30):\n\n");
            for v in self.violations.iter().take(30) {
                let _ = writeln!(
                    body,
                    "- invariant {}, at +{:.1} s: {}",
                    v.invariant,
                    v.at - self.t0,
                    v.what
                );
            }
        }
        Section { key: "chaos", body }
    }
}
