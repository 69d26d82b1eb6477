//! `argus-node-agent`: parses flags, sets up logging, runs the node agent until Ctrl-C/SIGTERM.

use std::path::PathBuf;

use clap::Parser;
use tokio_util::sync::CancellationToken;

/// Watches this host's tmux sessions and streams them to an Argus controller.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The controller's URL.
    #[arg(
        long,
        env = "ARGUS_CONTROLLER",
        default_value = "http://127.0.0.1:7070"
    )]
    controller: String,
    /// This node's id (default: the host name).
    #[arg(long, env = "ARGUS_NODE_ID")]
    node_id: Option<String>,
    /// A tmux server socket to watch (repeatable; default: the user's default server).
    #[arg(long = "tmux-socket", env = "ARGUS_TMUX_SOCKET")]
    tmux_sockets: Vec<PathBuf>,
    /// Directory for persisted state (the highest accepted epoch).
    #[arg(long, env = "ARGUS_STATE_DIR", default_value = ".argus-node")]
    state_dir: PathBuf,
    /// Probe interval, e.g. "1s" or "500ms".
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    probe_interval: std::time::Duration,
    /// Heartbeat interval.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    heartbeat: std::time::Duration,
    /// Agent profiles (TOML) layered over the built-in ones.
    #[arg(long, env = "ARGUS_PROFILES")]
    profiles: Option<PathBuf>,
    /// Talk plaintext to the controller (required until TLS is configured).
    #[arg(long)]
    insecure: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    if !args.insecure {
        anyhow::bail!(
            "TLS is not implemented yet: pass --insecure to talk plaintext to a controller on a trusted network"
        );
    }
    let mut config = argus_node_agent::Config::new(
        args.controller,
        args.node_id.unwrap_or_else(argus_node_agent::hostname),
    );
    config.tmux_sockets = args.tmux_sockets;
    config.state_dir = args.state_dir;
    config.probe_interval = args.probe_interval;
    config.heartbeat = args.heartbeat;
    config.profiles_file = args.profiles;
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        signal.cancel();
    });
    argus_node_agent::run(config, shutdown).await
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
