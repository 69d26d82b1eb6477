//! What watching a host costs: the real node agent against a private tmux server with S sessions
//! of programs that print now and then (the hidden `bench ticker` mode), for a fixed time at its
//! default 1 s probe interval; then, on the same sessions, the shell-style probe of the source
//! chapter (`tmux has-session`, the pane pid, `pstree`, `tmux capture-pane | tail -30 | md5sum`
//! per session per round). Both sides include the tmux server's CPU spent on their behalf,
//! measured against an idle baseline of the same server.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::Rng;

use super::procs::{self, CpuReading};
use super::report::{Machine, Row, Section, table};
use super::{Controller, Scale, Tmux, policy, us};
use crate::eventually;
use crate::spec::{ControllerSpec, NodeAgentSpec};

/// The probe interval the node agent runs with (its default).
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// The shell-style probe of one session, as the source chapter runs it. `$TREE` is `pstree -p`,
/// or `ps --ppid` where psmisc is not installed.
const SHELL_PROBE: &str = r#"tmux -S "$SOCK" has-session -t "=$NAME" &&
pid=$(tmux -S "$SOCK" display-message -p -t "=$NAME:" '#{pane_pid}') &&
$TREE "$pid" > /dev/null &&
tmux -S "$SOCK" capture-pane -p -t "=$NAME:" | tail -30 | md5sum > /dev/null"#;

/// The process-tree command of the shell probe: `pstree -p`, else `ps --ppid`.
fn tree_command() -> &'static str {
    if which("pstree") {
        "pstree -p"
    } else {
        "ps -o pid=,comm= --ppid"
    }
}

/// The sizes and durations of one run.
struct Plan {
    sizes: Vec<usize>,
    idle: Duration,
    measure: Duration,
    /// Sessions probed by the shell baseline per round (at most), and its rounds.
    shell_sessions: usize,
    shell_rounds: usize,
}

impl Plan {
    fn new(scale: Scale) -> Self {
        match scale {
            Scale::Full => Self {
                sizes: vec![10, 50, 200],
                idle: Duration::from_secs(6),
                measure: Duration::from_secs(20),
                shell_sessions: 50,
                shell_rounds: 2,
            },
            Scale::Smoke => Self {
                sizes: vec![5],
                idle: Duration::from_secs(1),
                measure: Duration::from_secs(3),
                shell_sessions: 5,
                shell_rounds: 1,
            },
        }
    }
}

/// Figures for one size.
#[derive(Debug, Clone)]
struct Figures {
    sessions: usize,
    rounds: f64,
    agent_cpu: Duration,
    agent_rss_kib: u64,
    agent_peak_kib: u64,
    /// tmux server CPU on behalf of the node agent (above idle) during the measurement.
    tmux_for_agent: Duration,
    shell_probes: usize,
    shell_cpu: Duration,
    tmux_for_shell: Duration,
}

impl Figures {
    fn per_probe(&self, d: Duration) -> Duration {
        d.div_f64((self.sessions as f64 * self.rounds).max(1.0))
    }
    fn agent_per_probe(&self) -> Duration {
        self.per_probe(self.agent_cpu)
    }
    fn agent_tmux_per_probe(&self) -> Duration {
        self.per_probe(self.tmux_for_agent)
    }
    fn shell_per_probe(&self) -> Duration {
        self.shell_cpu.div_f64(self.shell_probes.max(1) as f64)
    }
    fn shell_tmux_per_probe(&self) -> Duration {
        self.tmux_for_shell.div_f64(self.shell_probes.max(1) as f64)
    }
}

/// The program in every benchmark session: prints a numbered line every `period`, starting at a
/// random phase, forever (the tmux server is killed at the end).
pub fn ticker(period: Duration) -> anyhow::Result<()> {
    let mut rng = rand::rng();
    let phase = rng.random_range(0..period.as_millis().max(1) as u64);
    std::thread::sleep(Duration::from_millis(phase));
    let mut out = std::io::stdout();
    for n in 1u64.. {
        writeln!(
            out,
            "step {n}: compiled {} files, {} tests passed",
            n * 3,
            n * 7
        )?;
        out.flush()?;
        std::thread::sleep(period);
    }
    Ok(())
}

/// Runs the probe-cost benchmark and returns its report section.
pub async fn run(scale: Scale, machine: &Machine) -> anyhow::Result<Section> {
    if !which("pstree") {
        println!("probe: pstree is missing (psmisc): the shell baseline uses `ps --ppid`");
    }
    let plan = Plan::new(scale);
    let dir = super::workdir("probe")?;
    let controller = ControllerSpec::new()
        .policy(&policy(""))
        .env("RUST_LOG", "warn")
        .quiet()
        .start(dir.path())
        .await?;
    let mut all = Vec::new();
    for &size in &plan.sizes {
        let f = measure(&plan, size, &controller, dir.path())
            .await
            .with_context(|| format!("probe cost with {size} sessions"))?;
        println!(
            "probe: {size} sessions: node agent {} + tmux {} per session per round, RSS {} KiB (peak {}); shell {} + tmux {} per probe",
            us(f.agent_per_probe()),
            us(f.agent_tmux_per_probe()),
            f.agent_rss_kib,
            f.agent_peak_kib,
            us(f.shell_per_probe()),
            us(f.shell_tmux_per_probe()),
        );
        all.push(f);
    }
    Ok(section(&plan, &all, machine))
}

fn which(program: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

async fn measure(
    plan: &Plan,
    size: usize,
    controller: &Controller,
    dir: &Path,
) -> anyhow::Result<Figures> {
    let tmux = Tmux::new();
    let bench = std::env::current_exe()?;
    let mut rng = rand::rng();
    let names: Vec<String> = (0..size).map(|i| format!("worker-{i:03}")).collect();
    for chunk in names.chunks(25) {
        let mut args: Vec<String> = Vec::new();
        for name in chunk {
            if !args.is_empty() {
                args.push(";".into());
            }
            let period = rng.random_range(2000..8000);
            args.extend([
                "new-session".into(),
                "-d".into(),
                "-s".into(),
                name.clone(),
                "-x".into(),
                "120".into(),
                "-y".into(),
                "40".into(),
                format!("{} ticker --period-ms {period}", bench.display()),
            ]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        tmux.run(&args)?;
    }
    let server: u32 = tmux
        .run(&["display-message", "-p", "#{pid}"])?
        .trim()
        .parse()?;

    // The tmux server's own cost with nobody probing (the tickers print).
    let idle = cpu_over(server, plan.idle).await?;

    let node = format!("probe-{size}");
    let mut agent = NodeAgentSpec::new(&node, &controller.url(), tmux.socket())
        .probe_interval(PROBE_INTERVAL)
        .env("RUST_LOG", "info")
        .quiet()
        .start(dir)?;
    let seen = eventually(
        "the controller to see every session with its agent",
        Duration::from_secs(60),
        || async {
            let s = controller.sessions(&node).await.unwrap_or_default();
            Ok((s.len() == size && s.iter().all(|s| s.agent_pid > 0)).then_some(()))
        },
    )
    .await;
    if let Err(e) = seen {
        agent.check_alive()?;
        return Err(e);
    }
    // Past the first rounds, which capture every pane: the steady state is what costs.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let a0 = CpuReading::of(agent.pid())?;
    let t0 = CpuReading::of(server)?;
    let start = Instant::now();
    tokio::time::sleep(plan.measure).await;
    let a1 = CpuReading::of(agent.pid())?;
    let t1 = CpuReading::of(server)?;
    let elapsed = start.elapsed();
    let mem = procs::memory(agent.pid())?;
    agent.check_alive()?;
    agent.kill();
    let tmux_for_agent = t1.since(&t0).saturating_sub(idle.rate(elapsed));

    // The shell baseline on the same sessions, the node agent stopped.
    let probe_names: Vec<String> = names.iter().take(plan.shell_sessions).cloned().collect();
    let rounds = plan.shell_rounds;
    let socket = tmux.socket().to_path_buf();
    let s0 = CpuReading::of(server)?;
    let c0 = procs::children_cpu_time()?;
    let shell_start = Instant::now();
    let probes =
        tokio::task::spawn_blocking(move || shell_rounds(&socket, &probe_names, rounds)).await??;
    let shell_wall = shell_start.elapsed();
    let c1 = procs::children_cpu_time()?;
    let s1 = CpuReading::of(server)?;
    Ok(Figures {
        sessions: size,
        rounds: elapsed.as_secs_f64() / PROBE_INTERVAL.as_secs_f64(),
        agent_cpu: a1.since(&a0),
        agent_rss_kib: mem.rss_kib,
        agent_peak_kib: mem.peak_kib,
        tmux_for_agent,
        shell_probes: probes,
        shell_cpu: c1.saturating_sub(c0),
        tmux_for_shell: s1.since(&s0).saturating_sub(idle.rate(shell_wall)),
    })
}

/// CPU a process used over a window, as a rate to scale to other windows.
struct IdleCpu {
    cpu: Duration,
    wall: Duration,
}

impl IdleCpu {
    fn rate(&self, over: Duration) -> Duration {
        self.cpu
            .mul_f64(over.as_secs_f64() / self.wall.as_secs_f64().max(1e-3))
    }
}

async fn cpu_over(pid: u32, window: Duration) -> anyhow::Result<IdleCpu> {
    let c0 = CpuReading::of(pid)?;
    let start = Instant::now();
    tokio::time::sleep(window).await;
    let c1 = CpuReading::of(pid)?;
    Ok(IdleCpu {
        cpu: c1.since(&c0),
        wall: start.elapsed(),
    })
}

/// Runs the shell probe over `names` for `rounds` rounds; returns the number of probes.
fn shell_rounds(socket: &Path, names: &[String], rounds: usize) -> anyhow::Result<usize> {
    let mut n = 0;
    for _ in 0..rounds {
        for name in names {
            let status = std::process::Command::new("sh")
                .args(["-c", SHELL_PROBE])
                .env("TREE", tree_command())
                .env("SOCK", socket)
                .env("NAME", name)
                .stdin(std::process::Stdio::null())
                .status()
                .context("running the shell probe")?;
            anyhow::ensure!(status.success(), "shell probe of {name} failed: {status}");
            n += 1;
        }
    }
    Ok(n)
}

fn section(plan: &Plan, all: &[Figures], machine: &Machine) -> Section {
    let mut body = String::from("## Node agent probe cost\n\n");
    let _ = writeln!(
        body,
        "Machine: {}.\n\nThe real `argus-node-agent` (probe interval {} s, heartbeat 2 s, \
         `RUST_LOG=info`) against a private tmux server whose sessions each run a program that \
         prints a line every 2 to 8 s; {} s measured after the first full round. CPU is user + \
         system of the node agent process, per session per probe round; *tmux share* is the tmux \
         server's CPU above its idle rate (measured for {} s before, same sessions). The shell \
         baseline runs the source chapter's probe per session (`sh -c`: `tmux has-session`, \
         `tmux display-message -p '#{{pane_pid}}'`, `{} PID`, `tmux capture-pane -p | \
         tail -30 | md5sum`) on up to {} sessions x {} rounds of the same server, its CPU read \
         from the reaped children (`cutime + cstime`).\n",
        machine.line(),
        PROBE_INTERVAL.as_secs(),
        plan.measure.as_secs(),
        plan.idle.as_secs(),
        tree_command(),
        plan.shell_sessions,
        plan.shell_rounds,
    );
    let mut detail = String::from(
        "| sessions | node agent CPU / session / round | + tmux share | shell probe CPU | + tmux share | ratio (with tmux) | ratio (clients only) | node agent RSS (peak) |\n| --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    let mut rows = Vec::new();
    for f in all {
        let agent = f.agent_per_probe() + f.agent_tmux_per_probe();
        let shell = f.shell_per_probe() + f.shell_tmux_per_probe();
        let ratio = shell.as_secs_f64() / agent.as_secs_f64().max(1e-9);
        let client_ratio =
            f.shell_per_probe().as_secs_f64() / f.agent_per_probe().as_secs_f64().max(1e-9);
        let _ = writeln!(
            detail,
            "| {} | {} | {} | {} | {} | {:.0}x | {:.0}x | {:.1} MiB ({:.1} MiB) |",
            f.sessions,
            us(f.agent_per_probe()),
            us(f.agent_tmux_per_probe()),
            us(f.shell_per_probe()),
            us(f.shell_tmux_per_probe()),
            ratio,
            client_ratio,
            f.agent_rss_kib as f64 / 1024.0,
            f.agent_peak_kib as f64 / 1024.0,
        );
        rows.push(
            Row::target(
                format!("probe CPU per session per round, {} sessions", f.sessions),
                us(agent),
                ">= 100x below the shell baseline",
                ratio >= 100.0,
            )
            .with_baseline(us(shell), ratio),
        );
    }
    if let Some(f) = all.iter().max_by_key(|f| f.sessions) {
        let mib = f.agent_peak_kib as f64 / 1024.0;
        let ok = f.sessions < 200 || mib < 20.0;
        rows.push(Row::target(
            format!("node agent peak RSS, {} sessions", f.sessions),
            format!("{mib:.1} MiB"),
            "< 20 MiB with 200 sessions",
            ok,
        ));
    }
    body.push_str(&table(&rows));
    body.push('\n');
    body.push_str(&detail);
    Section { key: "probe", body }
}
