//! The Argus controller: receives node agents' streams, runs detection and the escalation
//! policy, persists what must survive a restart, sends commands back, and serves the admin API.

pub mod alarms;
pub mod alerts;
pub mod api;
pub mod auth;
pub mod checkpoints;
pub mod config;
pub mod dashboard;
pub mod demo;
pub mod dispatch;
pub mod events;
pub mod fleet;
pub mod handoff;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod notify;
pub mod outbound;
pub mod pki;
pub mod replica;
pub mod server;
pub mod store;
pub mod supervisor;
pub mod tls;
pub mod triage;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use argus_shared::time::now_ms;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::config::Config;
use crate::store::Recorder;
use crate::supervisor::Supervisor;
use argus_decide::policy::Policy;

/// How often node health is evaluated (O(nodes) each time).
const HEALTH_INTERVAL: Duration = Duration::from_millis(100);

/// Runs `round` every `period` on `tasks` until `stop`; a slow round delays the next one instead
/// of bunching them up.
fn spawn_every<F, Fut>(tasks: &TaskTracker, period: Duration, stop: CancellationToken, mut round: F)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tasks.spawn(async move {
        let mut t = tokio::time::interval(period);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = t.tick() => round().await,
            }
        }
    });
}

/// Opens the `store_failing` incident while the store's writes fail and closes it when they work
/// again (the gRPC health and `/readyz` read the same state).
fn watch_store(tasks: &TaskTracker, sup: Arc<Supervisor>, stop: CancellationToken) {
    let mut health = sup.recorder.health();
    tasks.spawn(async move {
        loop {
            let now = health.borrow_and_update().clone();
            let cause = match &now {
                store::StoreHealth::Failing { cause, .. } => Some(cause.as_str()),
                store::StoreHealth::Ok => None,
            };
            sup.store_health(cause, now_ms()).await;
            tokio::select! {
                () = stop.cancelled() => break,
                changed = health.changed() => if changed.is_err() { break },
            }
        }
    });
}

/// Loads the policy file, or the defaults.
pub fn load_policy(path: Option<&std::path::Path>) -> anyhow::Result<Policy> {
    match path {
        None => Ok(Policy::default()),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading policy {}", p.display()))?;
            Policy::from_toml(&text).with_context(|| format!("in policy file {}", p.display()))
        }
    }
}

/// Runs the controller until `shutdown`. `ready` receives the bound gRPC address.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    ready: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> anyhow::Result<()> {
    if config.insecure && !server::is_loopback(&config.listen) && !config.allow_remote_plaintext {
        anyhow::bail!(
            "refusing to serve plaintext on non-loopback address {}: use a loopback address or add --allow-remote-plaintext",
            config.listen
        );
    }
    let policy = match (&config.policy, &config.policy_file) {
        (Some(p), None) => p.clone(),
        _ => load_policy(config.policy_file.as_deref())?,
    };
    // The recorder first: the store's first writes are measured already.
    if config.metrics {
        metrics::describe();
    } else if !argus_node_agent::metrics::off() {
        tracing::warn!("metrics = false comes too late: this process records metrics already");
    }
    let store = store::open(&config.db)
        .await
        .with_context(|| format!("opening store {}", config.db))?;
    let tasks = TaskTracker::new();
    metrics::keep_up(&tasks, shutdown.clone());
    let writer_stop = CancellationToken::new();
    let writer_tasks = TaskTracker::new();
    // The journal of an earlier run is replayed before anything is read back or served.
    let journal = config
        .journal
        .clone()
        .or_else(|| store::journal::path_for(&config.db));
    let recorder = match journal {
        Some(path) => {
            Recorder::start_journaled(store.clone(), &path, writer_stop.clone(), &writer_tasks)
                .await
                .with_context(|| format!("opening the store's journal {}", path.display()))?
        }
        None => Recorder::start(store.clone(), writer_stop.clone(), &writer_tasks),
    };
    // What a restarted controller takes back from the store. Replicas of a shared database take
    // a node's share when they take the node over (`Supervisor::adopt_node`): at start-up, all
    // of it is other replicas' (in flight) or a dead replica's (taken over with its nodes).
    let shared = replica::shared(&config.db);
    let (recorded, pending, durables, incidents, handoffs) = if shared {
        Default::default()
    } else {
        (
            store.recorded_sessions().await?.reported("last states"),
            store.pending_commands().await?,
            store
                .recorded_durables::<argus_decide::detect::Durable>()
                .await?
                .reported("durable session states"),
            supervisor::restore_incidents(store.incidents(false, 10_000).await?),
            handoff::restore(store.as_ref()).await?,
        )
    };
    let controller_id = format!("ctl-{}-{}", std::process::id(), now_ms());
    if let Some(ca) = &config.outbound_ca {
        outbound::trust_extra_ca(ca)
            .map_err(|e| anyhow::anyhow!(server::message_chain(&e)))
            .context("loading outbound_ca")?;
    }
    let notifier = notify::Notifier::start_to(
        notify::Targets {
            webhooks: config.webhooks.clone(),
            slack: config.slack_webhooks.clone(),
            alertmanagers: config.alertmanagers.clone(),
        },
        &tasks,
        shutdown.clone(),
    );
    let sup = Arc::new(Supervisor::new(supervisor::Parts {
        controller_id,
        store,
        recorder,
        policy,
        policy_file: config.policy_file.clone(),
        recorded,
        durables,
        pending,
        limits: config.limits.clone(),
        incidents,
        notifier,
        tasks: tasks.clone(),
        handoffs,
    }));

    // Replicas take alarms over with their nodes (`Supervisor::adopt_node`).
    if !shared {
        sup.alarms.restore(sup.store.alarms(false, u32::MAX).await?);
    }
    watch_store(&tasks, sup.clone(), shutdown.clone());

    // Certificates are read before binding: a controller that cannot serve TLS does not start.
    let transport = server::Transport::from_config(&config)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding gRPC on {}", config.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, db = %config.db, "controller listening");
    if !config.insecure {
        // The figures describe the fleet: over TLS, scraping needs a token (docs/metrics.md).
        let tokens = match &config.tokens {
            Some(path) => {
                auth::Tokens::load(path).map_err(|e| anyhow::anyhow!(server::message_chain(&e)))?
            }
            None => {
                if config.http.is_some() && config.metrics {
                    tracing::warn!(
                        "no tokens file: /metrics refuses every scrape (it needs a bearer token of `tokens`)"
                    );
                }
                auth::Tokens::default()
            }
        };
        sup.scrape.require(Arc::new(tokens));
    }
    // === replicas: on a shared PostgreSQL database, this process is one of many ===
    if shared {
        let advertise = config.advertise.clone().unwrap_or_else(|| {
            if config.insecure {
                format!("http://{addr}")
            } else {
                format!("https://localhost:{}", addr.port())
            }
        });
        let peer_tls = match (
            config.insecure,
            &config.client_ca,
            &config.tls_cert,
            &config.tls_key,
        ) {
            (false, Some(ca), Some(cert), Some(key)) => Some(tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: ca.clone(),
            }),
            _ => None,
        };
        let r = replica::Replica::connect(&config.db, &sup.controller_id, &advertise, peer_tls)
            .await
            .context("connecting the replica to the shared database")?;
        let r = Arc::new(r);
        r.spawn(sup.clone(), &tasks, shutdown.clone());
        r.relay_events(sup.events.clone(), &tasks, shutdown.clone());
        let _ = sup.replica.set(r);
        tracing::info!(replica = %sup.controller_id, %advertise, "replica of a shared database");
    }
    if let Some(http) = config.http {
        let l = tokio::net::TcpListener::bind(http)
            .await
            .with_context(|| format!("binding HTTP on {http}"))?;
        tracing::info!(addr = %l.local_addr()?, "http side port listening");
        let l = http::listener::SideListener::start(
            l,
            http::side_tls(&config)?,
            &tasks,
            shutdown.clone(),
        )?;
        tasks.spawn(http::serve(
            l,
            sup.clone(),
            transport.auth(),
            shutdown.clone(),
        ));
    }
    let ticker = sup.clone();
    let heartbeat = argus_node_agent::watchdog::Heartbeat::default();
    let beat = heartbeat.clone();
    spawn_every(&tasks, config.tick, shutdown.clone(), move || {
        let sup = ticker.clone();
        let beat = beat.clone();
        async move {
            sup.tick(now_ms()).await;
            beat.beat();
        }
    });
    // Node health on its own short interval: a silent node turns suspect (and down) within one
    // health interval of its deadline rather than up to one controller tick later.
    let health = sup.clone();
    spawn_every(
        &tasks,
        HEALTH_INTERVAL.min(config.tick),
        shutdown.clone(),
        move || {
            let sup = health.clone();
            async move { sup.health_tick(now_ms()).await }
        },
    );
    if let Some(mut local) = config.local.clone() {
        local.controller = if config.insecure {
            format!("http://{addr}")
        } else {
            format!("https://localhost:{}", addr.port())
        };
        let stop = shutdown.clone();
        // One watchdog per process: the controller's tick, not the embedded probe loop.
        argus_node_agent::watchdog::embed();
        tasks.spawn(async move {
            if let Err(e) = argus_node_agent::run(local, stop).await {
                tracing::error!(error = %e, "local node agent failed");
            }
        });
    }
    if let Some(r) = ready {
        let _ = r.send(addr);
    }
    // Under systemd (Type=notify, WatchdogSec=): ready once bound and restored; the watchdog is
    // pinged while the supervisor's tick goes round, so a wedged controller gets restarted.
    argus_node_agent::watchdog::watch(&tasks, heartbeat, config.tick, shutdown.clone());
    argus_node_agent::watchdog::ready();
    let server = server::serve_with(
        listener,
        transport,
        sup.clone(),
        tasks.clone(),
        shutdown.clone(),
    );
    let drained = async {
        shutdown.cancelled().await;
        // Node agents' response streams end when their senders drop; they reconnect elsewhere.
        sup.fleet.drop_links();
        tokio::time::sleep(Duration::from_secs(3)).await;
    };
    let result = tokio::select! {
        r = server => r,
        () = drained => {
            tracing::warn!("open streams did not close within 3 s of shutdown; stopping anyway");
            Ok(())
        }
    };
    shutdown.cancel();
    argus_node_agent::watchdog::stopping();
    tasks.close();
    if tokio::time::timeout(Duration::from_secs(5), tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not stop within 5 s");
    }
    drop(sup);
    writer_stop.cancel();
    writer_tasks.close();
    writer_tasks.wait().await;
    result
}
