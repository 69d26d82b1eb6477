//! `bench`: Argus's benchmarks (`all`, `probe`, `death`, `silence`, `load`, `chaos`,
//! `replicas`), writing their figures into `docs/performance.md`; `--smoke` runs a tiny
//! configuration of each for CI and writes nothing unless `--out` is given.

use std::path::PathBuf;
use std::time::Duration;

use argus_tests::bench::{self, Scale, Which, chaos, load};
use clap::{Parser, Subcommand};

/// Benchmarks of the node agent and the controller, measured side by side with baselines.
#[derive(Parser, Debug)]
#[command(about)]
struct Args {
    #[command(subcommand)]
    which: Cmd,
    /// A tiny configuration of each benchmark (for CI); writes no report unless --out is given.
    #[arg(long, global = true)]
    smoke: bool,
    /// The markdown report to update (default: docs/performance.md of this checkout).
    #[arg(long, global = true)]
    out: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Every benchmark, in order.
    All,
    /// Node agent probe cost against the shell-style probe.
    Probe,
    /// Death detection and restart.
    Death,
    /// Host silence: time to suspect and to down.
    Silence,
    /// One controller under a simulated fleet.
    Load {
        /// Simulated node agents.
        #[arg(long)]
        nodes: Option<usize>,
        /// Sessions per node.
        #[arg(long)]
        sessions: Option<usize>,
        /// Attach streams per HTTP/2 connection.
        #[arg(long)]
        streams_per_conn: Option<usize>,
        /// Changed-session observations per node per second.
        #[arg(long)]
        rate: Option<f64>,
        /// Scripted deaths per second across the fleet.
        #[arg(long)]
        faults: Option<f64>,
        /// Length of the load phase in seconds.
        #[arg(long)]
        seconds: Option<u64>,
        /// Measure the plan over mutual TLS too, right after the plaintext one.
        #[arg(long)]
        tls: bool,
        /// Measure the plan with the controller's metrics off too, right after metrics on.
        #[arg(long)]
        metrics_off: bool,
    },
    /// Invariants under a seeded schedule of faults (controller, node agent, tmux, database,
    /// disk, network, agents).
    Chaos {
        /// Replays the schedule of this seed (printed by every run).
        #[arg(long)]
        seed: Option<u64>,
        /// Number of faults (default: 1200; 40 with --smoke).
        #[arg(long)]
        faults: Option<usize>,
        /// Only this kind of fault (repeatable): controller-kill, node-kill, node-stop,
        /// tmux-kill, db-locked, disk-full, black-hole, agent-killed, agent-exits, agent-hangs,
        /// agent-idle, agent-works, agent-thinks, agent-asks, agent-rate-limited.
        #[arg(long, value_parser = parse_kind)]
        only: Vec<chaos::faults::Kind>,
    },
    /// One controller replica against three behind haproxy on one PostgreSQL (needs both
    /// installed; not part of `all`).
    Replicas,
    /// (internal) The program of the probe benchmark's sessions: prints a line every period.
    #[command(hide = true)]
    Ticker {
        #[arg(long)]
        period_ms: u64,
    },
}

fn parse_kind(s: &str) -> Result<chaos::faults::Kind, String> {
    chaos::faults::Kind::from_slug(s).ok_or_else(|| format!("no fault kind {s:?}"))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let scale = if args.smoke {
        Scale::Smoke
    } else {
        Scale::Full
    };
    let which = match args.which {
        Cmd::Ticker { period_ms } => {
            return bench::probe_cost::ticker(Duration::from_millis(period_ms));
        }
        Cmd::All => Which::All,
        Cmd::Replicas => Which::Replicas,
        Cmd::Probe => Which::Probe,
        Cmd::Death => Which::Death,
        Cmd::Silence => Which::Silence,
        Cmd::Chaos { seed, faults, only } => Which::Chaos(chaos::Options { seed, faults, only }),
        Cmd::Load {
            nodes,
            sessions,
            streams_per_conn,
            rate,
            faults,
            seconds,
            tls,
            metrics_off,
        } => {
            let mut p = load::Plan::defaults(scale)[0];
            p.nodes = nodes.unwrap_or(p.nodes);
            p.sessions = sessions.unwrap_or(p.sessions);
            p.streams_per_conn = streams_per_conn.unwrap_or(p.streams_per_conn);
            p.rate = rate.unwrap_or(p.rate);
            p.faults = faults.unwrap_or(p.faults);
            p.load = seconds.map_or(p.load, Duration::from_secs);
            p.tls = tls;
            p.metrics = !metrics_off;
            Which::Load(Some(p))
        }
    };
    let out = args.out.or_else(|| {
        (scale == Scale::Full).then(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../docs/performance.md"
            ))
        })
    });
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench::run(which, scale, out.as_deref()))
}
