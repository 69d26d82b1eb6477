//! The HTTP side port: `/healthz` (the process answers), `/readyz` (the store answers and
//! takes writes; when it does not, the reason and the backlog), `/metrics` (Prometheus,
//! `crate::metrics`) and the dashboard (`crate::dashboard`: `/`, `/ui/...`, `/api/...`). With
//! TLS the port also speaks TLS (`listener`).

pub mod listener;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::supervisor::Supervisor;

/// How long `/readyz` waits for the store to answer a read.
const READ_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The side port's TLS when the controller serves TLS: its certificate and client CA, for
/// HTTP/1.1.
pub fn side_tls(config: &crate::Config) -> anyhow::Result<Option<Arc<crate::tls::ServerTls>>> {
    let (false, Some(cert), Some(key), Some(client_ca)) = (
        config.insecure,
        &config.tls_cert,
        &config.tls_key,
        &config.client_ca,
    ) else {
        return Ok(None);
    };
    let files = crate::tls::TlsFiles {
        cert: cert.clone(),
        key: key.clone(),
        client_ca: client_ca.clone(),
    };
    crate::tls::ServerTls::load_for(files, b"http/1.1")
        .map(Some)
        .map_err(|e| anyhow::anyhow!(crate::server::message_chain(&e)))
}

/// Serves the side port on `listener` until `shutdown`.
pub async fn serve(
    listener: listener::SideListener,
    sup: Arc<Supervisor>,
    auth: crate::auth::Auth,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(crate::metrics::scrape))
        .with_state(sup.clone())
        .merge(crate::dashboard::router(sup, auth, shutdown.clone()));
    // The dashboard checks who calls, from where and how (plaintext or TLS).
    let app = app.into_make_service_with_connect_info::<listener::PeerInfo>();
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
