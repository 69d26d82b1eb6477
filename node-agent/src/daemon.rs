//! What both Argus binaries do as processes, written once: logging set-up (`RUST_LOG`, default
//! `info`) and shutdown on Ctrl-C or SIGTERM through the root cancellation token.

use std::future::Future;
use std::pin::pin;

use tokio_util::sync::CancellationToken;

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
}

/// Drives `run` to its end; a Ctrl-C or SIGTERM on the way cancels `shutdown`, and `run` then
/// drains and returns.
pub async fn until_signal<T>(shutdown: &CancellationToken, run: impl Future<Output = T>) -> T {
    let mut run = pin!(run);
    tokio::select! {
        out = &mut run => return out,
        () = signal() => {
            tracing::info!("signal received: shutting down");
            shutdown.cancel();
        }
    }
    run.await
}

/// Resolves on Ctrl-C or SIGTERM (on Ctrl-C only when SIGTERM cannot be watched).
async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops this process");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
