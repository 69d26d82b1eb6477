//! The HTTP side port: `/healthz` (the process answers) and `/readyz` (the store answers).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::supervisor::Supervisor;

/// Serves the side port on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    sup: Arc<Supervisor>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(sup);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}

async fn ready(State(sup): State<Arc<Supervisor>>) -> (StatusCode, String) {
    match sup.store.nodes().await {
        Ok(n) => (StatusCode::OK, format!("ready: {} nodes known\n", n.len())),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store unavailable: {e}\n"),
        ),
    }
}
