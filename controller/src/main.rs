//! `argus-controller`: parses flags, sets up logging, runs the controller until Ctrl-C/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// The Argus controller: supervises fleets of AI coding agents in tmux.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// gRPC listen address (node agents and admin API).
    #[arg(long, env = "ARGUS_LISTEN", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// HTTP side port (/healthz, /readyz).
    #[arg(long, env = "ARGUS_HTTP", default_value = "127.0.0.1:7071")]
    http: Option<SocketAddr>,
    /// Store URL.
    #[arg(long, env = "ARGUS_DB", default_value = "sqlite://argus.db")]
    db: String,
    /// Serve plaintext (loopback only unless --allow-remote-plaintext).
    #[arg(long)]
    insecure: bool,
    /// Allow plaintext on a non-loopback address.
    #[arg(long)]
    allow_remote_plaintext: bool,
    /// Policy file (TOML).
    #[arg(long, env = "ARGUS_POLICY")]
    policy: Option<PathBuf>,
    /// Also run a node agent in-process supervising this machine's tmux sessions.
    #[arg(long)]
    local: bool,
    /// With --local: tmux server sockets to watch (default: the user's default server).
    #[arg(long = "tmux-socket")]
    tmux_sockets: Vec<PathBuf>,
    /// With --local: the node id (default: the host name).
    #[arg(long)]
    node_id: Option<String>,
    /// With --local: the node agent's state directory.
    #[arg(long, default_value = ".argus-node")]
    state_dir: PathBuf,
    /// With --local: agent profiles (TOML) layered over the built-in ones.
    #[arg(long, env = "ARGUS_PROFILES")]
    profiles: Option<PathBuf>,
    /// With --local: probe interval.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    probe_interval: Duration,
    /// Webhook URL for incident notifications (repeatable; http:// only).
    #[arg(long = "webhook", env = "ARGUS_WEBHOOK")]
    webhooks: Vec<String>,
    /// With --local: also start a private tmux server with simulated misbehaving agents and
    /// supervise it (instead of this machine's tmux sessions).
    #[arg(long, requires = "local")]
    demo: bool,
    /// Controller tick (time-driven decisions).
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    tick: Duration,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// A simulated agent for the demo (see `argus_controller::demo::agent`).
    #[command(hide = true)]
    DemoAgent { mode: String, arg: Option<String> },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    if let Some(Cmd::DemoAgent { mode, arg }) = &args.cmd {
        argus_controller::demo::agent(mode, arg.as_deref());
    }
    let demo_socket = if args.demo {
        let socket = argus_controller::demo::start(&args.state_dir)?;
        println!(
            "Demo: simulated agents run on a private tmux server.\n  watch what Argus does:  argusctl watch\n  the fleet:              argusctl sessions\n  look at an agent:       tmux -S {} attach -t idle   (detach with C-b d)\n",
            socket.display()
        );
        Some(socket)
    } else {
        None
    };
    let local = args.local.then(|| {
        let mut c = argus_node_agent::Config::new(
            String::new(),
            args.node_id
                .clone()
                .unwrap_or_else(argus_node_agent::hostname),
        );
        c.tmux_sockets = match &demo_socket {
            Some(s) => vec![s.clone()],
            None => args.tmux_sockets.clone(),
        };
        c.state_dir = args.state_dir.clone();
        c.probe_interval = args.probe_interval;
        c.profiles_file = args.profiles.clone();
        c
    });
    let config = argus_controller::Config {
        listen: args.listen,
        http: args.http,
        db: args.db,
        insecure: args.insecure,
        allow_remote_plaintext: args.allow_remote_plaintext,
        policy_file: args.policy,
        local,
        tick: args.tick,
        webhooks: args.webhooks,
        policy: None,
    };
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal as unix_signal};
        if let Ok(mut term) = unix_signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            signal.cancel();
        }
    });
    let mut config = config;
    if args.demo && config.policy_file.is_none() {
        config.policy = Some(argus_controller::demo::policy());
    }
    let result = argus_controller::run(config, shutdown, None).await;
    if let Some(s) = demo_socket {
        argus_controller::demo::stop(&s);
    }
    result
}
