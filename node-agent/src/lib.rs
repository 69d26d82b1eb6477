//! The Argus node agent: watches the tmux servers and process trees of one host, streams what it
//! sees to the controller and executes the controller's commands, safely. It never kills on its
//! own.

pub mod agentfiles;
pub mod checkpoint;
pub mod config;
pub mod daemon;
pub mod events;
pub mod exec;
pub mod fence;
pub mod gate;
pub mod guard;
pub mod hooks;
pub mod link;
pub mod local;
pub mod metrics;
pub mod probe;
pub mod procs;
pub mod seen;
pub mod tmux;
pub mod watchdog;
pub mod worktree;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use argus_shared::profile::Profiles;
use tokio::sync::{Mutex, Notify, watch};
use tokio_util::sync::CancellationToken;

pub use crate::config::Config;
use crate::events::EventBuffer;
use crate::exec::Executor;
use crate::fence::Fence;
use crate::link::{Link, LinkConfig};
use crate::probe::{ProbeConfig, Prober, Snapshot};
use crate::tmux::Tmux;

/// This host's name.
pub fn hostname() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Loads the built-in profiles and the operator's file on top.
pub fn load_profiles(file: Option<&std::path::Path>) -> anyhow::Result<Profiles> {
    let builtin = Profiles::builtin();
    let Some(path) = file else {
        return Ok(builtin);
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading agent profiles {}", path.display()))?;
    let extra = Profiles::from_toml(&text)
        .with_context(|| format!("parsing agent profiles {}", path.display()))?;
    Ok(builtin.with_overrides(extra))
}

/// Runs the node agent until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let node_id = config.node_id();
    argus_shared::ids::NodeId::new(&node_id).context("invalid node_id")?;
    let profiles = Arc::new(load_profiles(config.profiles.as_deref())?);
    let fence = Fence::load(&config.state_dir)
        .with_context(|| format!("loading state dir {}", config.state_dir.display()))?;
    let fence = Arc::new(Mutex::new(fence));
    let sockets = if config.tmux_sockets.is_empty() {
        vec![tmux::default_socket()]
    } else {
        config.tmux_sockets.clone()
    };
    let wake = Arc::new(Notify::new());
    let servers: Vec<Arc<Tmux>> = sockets
        .into_iter()
        .map(|s| Arc::new(Tmux::new(s, wake.clone())))
        .collect();
    let events = Arc::new(EventBuffer::new(config.event_buffer));
    let (snap_tx, snap_rx) = watch::channel(Arc::new(Snapshot::default()));
    let hook_board = hooks::Board::new(config.hook_fresh);
    let (selectors_tx, selectors_rx) = watch::channel(Arc::default());
    let mut prober = Prober::new(
        servers.clone(),
        profiles.clone(),
        ProbeConfig {
            lines: config.screen_lines,
            recapture_every: 10,
            selectors: Arc::new(
                argus_shared::selector::Selectors::compile(&config.selectors)
                    .context("invalid selectors")?,
            ),
            policy_selectors: selectors_rx,
        },
        events.clone(),
        wake.clone(),
    )
    .with_hooks(hook_board.clone())
    .with_seen(config.state_dir.join(seen::SEEN_FILE));
    // The first snapshot is taken before the link dials, so the controller's first view is full.
    snap_tx.send_replace(Arc::new(prober.round().await));

    let snap_rx_guard = snap_rx.clone();
    let events_guard = events.clone();
    let executor = Arc::new(
        Executor::new(&servers, fence.clone(), snap_rx.clone(), profiles)
            .allowing_any_restart_command(config.allow_any_restart_command, Some(&config.state_dir))
            .with_checkpoints(config.checkpoint.clone()),
    );
    let (forward, inbox) = local::channel();
    let local_snap = snap_rx.clone();
    let (guards_tx, guards_rx) = watch::channel(Arc::new(Vec::new()));
    let link = Link {
        local: inbox,
        guards: guards_tx,
        selectors: selectors_tx,
        config: LinkConfig {
            controller: config.controller.clone(),
            node_id: node_id.clone(),
            heartbeat: config.heartbeat,
            probe_interval: config.probe_interval,
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(10),
            tls: link_tls(&config),
        },
        fence,
        snapshot: snap_rx,
        events,
        executor,
        hostname: hostname(),
        commands: Default::default(),
        boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
    };
    tracing::info!(node = %node_id, controller = %config.controller, "node agent starting");

    let tasks = tokio_util::task::TaskTracker::new();
    metrics::describe();
    metrics::keep_up(&tasks, shutdown.clone());
    if let Some(addr) = config.http_listen {
        let listener = metrics::bind(addr).await?;
        let stop = shutdown.clone();
        tasks.spawn(async move {
            if let Err(e) = metrics::serve(listener, stop).await {
                tracing::error!(error = format!("{e:#}"), "node agent http port failed");
            }
        });
    }
    // The local socket for agents inside the sessions; the node agent works without it.
    match local::bind(&config.state_dir) {
        Ok((listener, path)) => {
            tasks.spawn(local::advertise(
                path.clone(),
                local_snap.clone(),
                shutdown.clone(),
            ));
            let server = local::Server {
                path,
                snapshot: local_snap,
                forward,
                hooks: hook_board,
                wake: wake.clone(),
            };
            tasks.spawn(server.serve(listener, shutdown.clone()));
        }
        Err(e) => {
            tracing::warn!(error = %e, state_dir = %config.state_dir.display(), "local socket not available: agents cannot set their own alarms");
        }
    }
    tasks.spawn(link.run(shutdown.clone()));
    tasks.spawn(worktree::run(
        snap_rx_guard.clone(),
        events_guard.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(guard::run(
        guards_rx,
        snap_rx_guard,
        events_guard,
        config.state_dir.clone(),
        shutdown.clone(),
    ));
    let probe_shutdown = shutdown.clone();
    let interval = config.probe_interval;
    let heartbeat = watchdog::Heartbeat::default();
    let beat = heartbeat.clone();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = probe_shutdown.cancelled() => break,
                _ = tick.tick() => {}
                () = wake.notified() => {}
            }
            let snapshot = prober.round().await;
            snap_tx.send_replace(Arc::new(snapshot));
            beat.beat();
        }
    });
    // Under systemd (Type=notify, WatchdogSec=): ready now; the watchdog is pinged while the
    // probe loop goes round, so a hung probe loop gets the agent restarted. Outside systemd
    // these are no-ops.
    if !watchdog::embedded() {
        watchdog::watch(&tasks, heartbeat, interval, shutdown.clone());
        watchdog::ready();
    }
    tasks.close();
    tasks.wait().await;
    Ok(())
}

/// The link's TLS files, unless the node talks plaintext.
fn link_tls(config: &Config) -> Option<link::ClientTls> {
    if config.insecure {
        return None;
    }
    Some(link::ClientTls {
        ca: config.ca.clone()?,
        cert: config.cert.clone()?,
        key: config.key.clone()?,
    })
}
