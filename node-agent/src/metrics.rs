//! The node agent's Prometheus metrics, declared in one place (names, units, help), the
//! process's one metrics recorder (shared with a controller that embeds the node agent), and the
//! optional HTTP port (`http_listen`) that serves `/healthz` and `/metrics`.
//!
//! Names follow `argus_node_<noun>_<unit>`; no label carries a session or pane name.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Duration of one probe round over every watched tmux server (histogram).
pub const PROBE_ROUND_SECONDS: &str = "argus_node_probe_round_seconds";
/// Screens captured in one probe round (histogram; most rounds reuse cached screens).
pub const PROBE_ROUND_CAPTURES: &str = "argus_node_probe_round_captures";
/// Screens captured since start (counter).
pub const CAPTURES_TOTAL: &str = "argus_node_captures_total";
/// Sessions seen by the last probe round (gauge).
pub const SESSIONS: &str = "argus_node_sessions";
/// tmux control clients attached again after the previous one closed (counter).
pub const TMUX_CONTROL_RESTARTS_TOTAL: &str = "argus_node_tmux_control_restarts_total";
/// tmux control clients attached, the first ones included (counter).
pub const TMUX_CONTROL_ATTACHES_TOTAL: &str = "argus_node_tmux_control_attaches_total";
/// Connections to the controller that ended, by how (`closed`, `error`) (counter).
pub const LINK_DOWN_TOTAL: &str = "argus_node_link_down_total";

/// Upper bounds of the buckets of every `*_seconds` histogram of both binaries: 1 ms to 30 s.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Upper bounds of the buckets of every other histogram (counts per round, per batch).
pub const COUNT_BUCKETS: &[f64] = &[
    0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0,
];
/// How often histograms are folded (without it their samples grow until a scrape).
const UPKEEP: Duration = Duration::from_secs(5);

static RECORDER: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process's Prometheus recorder, installed on first use with the buckets above. `None`
/// when another recorder was installed first (a test process): metrics are then not exported.
/// A controller running the node agent in-process (`--local`) and the node agent share it.
pub fn recorder() -> Option<&'static PrometheusHandle> {
    RECORDER
        .get_or_init(|| {
            let built = PrometheusBuilder::new()
                .set_buckets(COUNT_BUCKETS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS))
                .and_then(PrometheusBuilder::install_recorder);
            match built {
                Ok(handle) => Some(handle),
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed; /metrics stays empty");
                    None
                }
            }
        })
        .as_ref()
}

/// Turns metrics off for the whole process, unless a recorder is installed already: every
/// metric macro is then a no-op and `/metrics` answers 503. Returns false when it was too late.
pub fn off() -> bool {
    RECORDER.set(None).is_ok()
}

/// Folds histogram samples every few seconds until `shutdown` (call once per process; a second
/// call adds a harmless second task).
pub fn keep_up(tasks: &TaskTracker, shutdown: CancellationToken) {
    let Some(handle) = recorder() else { return };
    tasks.spawn(async move {
        let mut t = tokio::time::interval(UPKEEP);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = t.tick() => handle.run_upkeep(),
            }
        }
    });
}

/// The exposition text of every metric of the process.
pub fn render() -> Option<String> {
    recorder().map(PrometheusHandle::render)
}

/// Installs the recorder ([`recorder`]) and declares the node agent's metrics (help text and
/// units) on it.
pub fn describe() {
    recorder();
    describe_histogram!(
        PROBE_ROUND_SECONDS,
        Unit::Seconds,
        "Duration of one probe round over every watched tmux server."
    );
    describe_histogram!(
        PROBE_ROUND_CAPTURES,
        Unit::Count,
        "Screens captured in one probe round (the others reuse their cached screen)."
    );
    describe_counter!(CAPTURES_TOTAL, Unit::Count, "Screens captured since start.");
    describe_gauge!(
        SESSIONS,
        Unit::Count,
        "Sessions seen by the last probe round."
    );
    describe_counter!(
        TMUX_CONTROL_RESTARTS_TOTAL,
        Unit::Count,
        "tmux control clients attached again after the previous one closed."
    );
    describe_counter!(
        TMUX_CONTROL_ATTACHES_TOTAL,
        Unit::Count,
        "tmux control clients attached, the first ones included."
    );
    describe_counter!(
        LINK_DOWN_TOTAL,
        Unit::Count,
        "Connections to the controller that ended, by how (closed, error)."
    );
}

/// Records one probe round.
pub fn probe_round(took: Duration, captures: u64, sessions: usize) {
    metrics::histogram!(PROBE_ROUND_SECONDS).record(took.as_secs_f64());
    metrics::histogram!(PROBE_ROUND_CAPTURES).record(captures as f64);
    metrics::counter!(CAPTURES_TOTAL).increment(captures);
    metrics::gauge!(SESSIONS).set(sessions as f64);
}

/// Records a control client attached; `again` when it replaces one that closed.
pub fn control_attached(again: bool) {
    metrics::counter!(TMUX_CONTROL_ATTACHES_TOTAL).increment(1);
    if again {
        metrics::counter!(TMUX_CONTROL_RESTARTS_TOTAL).increment(1);
    }
}

/// Records the end of a connection to the controller.
pub fn link_down(how: &'static str) {
    metrics::counter!(LINK_DOWN_TOTAL, "how" => how).increment(1);
}

// === HTTP port ===

/// Binds the HTTP port (`http_listen`): a port that cannot be bound stops the start.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding http_listen on {addr}"))?;
    tracing::info!(addr = %listener.local_addr()?, "node agent http port listening");
    Ok(listener)
}

/// Serves `/healthz` and `/metrics` on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(scrape));
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}

/// `/metrics` in the Prometheus text format.
async fn scrape() -> (
    axum::http::StatusCode,
    [(&'static str, &'static str); 1],
    String,
) {
    match render() {
        Some(text) => (
            axum::http::StatusCode::OK,
            [("content-type", "text/plain; version=0.0.4")],
            text,
        ),
        None => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            [("content-type", "text/plain")],
            "no metrics recorder in this process\n".to_owned(),
        ),
    }
}
