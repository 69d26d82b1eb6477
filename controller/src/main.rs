//! `argus-controller`: loads its configuration, sets up logging, runs the controller until
//! Ctrl-C/SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use argus_controller::config::{Cli, Config};
use argus_node_agent::daemon;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// The Argus controller: supervises fleets of AI coding agents in tmux.
///
/// Settings come from the defaults, then `--config FILE`, then `ARGUS_*` variables, then flags.
#[derive(Parser, Debug)]
#[command(name = "argus-controller", version, about)]
struct Args {
    #[command(flatten)]
    cli: Cli,
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
    let args = Args::parse();
    if let Some(Cmd::DemoAgent { mode, arg }) = &args.cmd {
        argus_controller::demo::agent(mode, arg.as_deref());
    }
    let mut config = args.cli.resolve()?;
    if args.cli.print_config {
        print!("{}", config.to_toml()?);
    }
    config.validate()?;
    if args.cli.print_config {
        return Ok(());
    }
    daemon::init_tracing();
    let demo_socket = if config.demo {
        Some(start_demo(&mut config)?)
    } else {
        None
    };
    let shutdown = CancellationToken::new();
    let result = daemon::until_signal(
        &shutdown,
        argus_controller::run(config, shutdown.clone(), None),
    )
    .await;
    if let Some(s) = demo_socket {
        argus_controller::demo::stop(&s);
    }
    result
}

/// Starts the demo's private tmux server and points the local node agent (and, without a policy
/// file, the policy) at it.
fn start_demo(config: &mut Config) -> anyhow::Result<PathBuf> {
    let local = config
        .local
        .as_mut()
        .context("the demo needs the local node agent")?;
    let socket = argus_controller::demo::start(&local.state_dir)?;
    println!(
        "Demo: simulated agents run on a private tmux server.\n  watch what Argus does:  argusctl watch\n  the fleet:              argusctl sessions\n  look at an agent:       tmux -S {} attach -t idle   (detach with C-b d)\n",
        socket.display()
    );
    local.tmux_sockets = vec![socket.clone()];
    if config.policy_file.is_none() {
        config.policy = Some(argus_controller::demo::policy());
    }
    Ok(socket)
}
