//! `argus-loadgen`: a simulated fleet of node agents against a running controller (see
//! `argus_tests::bench::loadgen`). Prints observations/s accepted and fault-to-decision latency.

use std::time::Duration;

use argus_tests::bench::loadgen::{self, FleetConfig, RunConfig};
use clap::Parser;

/// Simulates N node agents x M sessions holding real Attach streams to a controller.
#[derive(Parser, Debug)]
#[command(about)]
struct Args {
    /// The controller's URL (plaintext, loopback).
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    controller: String,
    /// Simulated node agents.
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// Sessions per node.
    #[arg(long, default_value_t = 10)]
    sessions: usize,
    /// Attach streams per HTTP/2 connection (1: one connection per node, like real agents).
    #[arg(long, default_value_t = 1)]
    streams_per_conn: usize,
    /// Changed-session observations per node per second.
    #[arg(long, default_value_t = 5.0)]
    rate: f64,
    /// Scripted session deaths per second across the fleet (answered by Restart commands when
    /// the controller's policy restarts labelled sessions at once).
    #[arg(long, default_value_t = 5.0)]
    faults: f64,
    /// How long the load runs, in seconds (at most an hour).
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Node id prefix.
    #[arg(long, default_value = "sim")]
    prefix: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.seconds <= 3600, "--seconds is at most 3600");
    let mut fleet = FleetConfig::new(args.controller, args.nodes, args.sessions);
    fleet.streams_per_conn = args.streams_per_conn;
    fleet.node_prefix = args.prefix;
    let cfg = RunConfig {
        fleet,
        rate: args.rate,
        faults_per_second: args.faults,
        duration: Duration::from_secs(args.seconds),
    };
    argus_tests::bench::procs::raise_nofile()?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(loadgen::run(cfg))
}
