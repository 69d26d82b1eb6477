//! `argus-node-agent`: loads its configuration, sets up logging, runs the node agent until
//! Ctrl-C/SIGTERM.

use clap::Parser;
use tokio_util::sync::CancellationToken;

use argus_node_agent::config::Cli;
use argus_node_agent::daemon;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = cli.resolve()?;
    if cli.print_config {
        print!("{}", config.to_toml()?);
    }
    config.validate()?;
    if cli.print_config {
        return Ok(());
    }
    daemon::init_tracing();
    let shutdown = CancellationToken::new();
    daemon::until_signal(&shutdown, argus_node_agent::run(config, shutdown.clone())).await
}
