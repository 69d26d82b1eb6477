//! Webhooks: one JSON POST per incident change (opened, reminder, closed) to every configured
//! URL, from a bounded queue so a slow receiver never slows decisions. One notification per root
//! cause: per-session symptoms go to the event stream, not here.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use argus_decide::correlate::{Change, Incident};

/// Sends incident notifications to webhooks.
#[derive(Clone)]
pub struct Notifier {
    tx: Option<mpsc::Sender<serde_json::Value>>,
}

impl Notifier {
    /// A notifier posting to `urls`; without URLs it does nothing.
    pub fn start(urls: Vec<String>, tasks: &TaskTracker, shutdown: CancellationToken) -> Self {
        if urls.is_empty() {
            return Self { tx: None };
        }
        let (tx, mut rx) = mpsc::channel::<serde_json::Value>(1024);
        tasks.spawn(async move {
            loop {
                let msg = tokio::select! {
                    m = rx.recv() => m,
                    () = shutdown.cancelled() => None,
                };
                let Some(msg) = msg else { break };
                let body = msg.to_string();
                for url in &urls {
                    if let Err(e) =
                        crate::outbound::post_json(url, &body, &[], Duration::from_secs(5)).await
                    {
                        tracing::warn!(%url, error = %e, "webhook failed");
                    }
                }
            }
        });
        Self { tx: Some(tx) }
    }

    /// Queues the notification of one incident change (dropped, with a log line, if the queue is
    /// full).
    pub fn incident(&self, change: &Change) {
        let Some(tx) = &self.tx else { return };
        let (event, i) = match change {
            Change::Opened(i) => ("incident_opened", i),
            Change::Reminder(i) => ("incident_reminder", i),
            Change::Closed(i) => ("incident_closed", i),
        };
        if tx
            .try_send(serde_json::json!({ "event": event, "incident": json(i) }))
            .is_err()
        {
            tracing::warn!(incident = %i.id, "webhook queue full; notification dropped");
        }
    }
}

fn json(i: &Incident) -> serde_json::Value {
    serde_json::json!({
        "id": i.id,
        "kind": i.kind.as_str(),
        "scope": i.scope,
        "opened_ms": i.opened_ms,
        "closed_ms": i.closed_ms,
        "summary": i.summary,
        "sessions": i.sessions,
        "until_ms": i.until_ms,
    })
}
