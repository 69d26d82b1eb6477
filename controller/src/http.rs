//! The HTTP side port: `/healthz` (the process answers) and `/readyz` (the store answers and
//! takes writes; when it does not, the reason and the backlog).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::supervisor::Supervisor;

/// How long `/readyz` waits for the store to answer a read.
const READ_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

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
    // Replicas: the last probe of the shared database failed.
    if sup.replica.get().is_some_and(|r| !*r.db_ok().borrow()) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: this replica cannot reach the shared database\n".to_owned(),
        );
    }
    if sup.recorder.health().borrow().is_failing() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", sup.recorder.describe()),
        );
    }
    match tokio::time::timeout(READ_WAIT, sup.store.nodes()).await {
        Ok(Ok(n)) => (
            StatusCode::OK,
            format!(
                "ready: {} nodes known; {}\n",
                n.len(),
                sup.recorder.describe()
            ),
        ),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: store unavailable: {e}\n"),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: the store did not answer within {READ_WAIT:?}\n"),
        ),
    }
}
