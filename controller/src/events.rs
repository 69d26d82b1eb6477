//! The fleet event stream behind `WatchEvents`: a broadcast channel; a slow watcher skips what it
//! missed (and is told how much) instead of slowing the controller.

use argus_proto::v1 as pb;
use argus_shared::state::SessionState;
use argus_shared::time::now_ms;
use tokio::sync::broadcast;

/// Publishes fleet events.
#[derive(Clone)]
pub struct Events {
    tx: broadcast::Sender<pb::FleetEvent>,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(4096).0,
        }
    }
}

impl Events {
    /// Publishes one event (also to the log).
    pub fn publish(
        &self,
        node_id: &str,
        session_name: &str,
        kind: &str,
        message: String,
        state: Option<SessionState>,
    ) {
        tracing::info!(node = %node_id, session = %session_name, kind, %message, "event");
        let _ = self.tx.send(pb::FleetEvent {
            at_ms: now_ms(),
            node_id: node_id.to_owned(),
            session_name: session_name.to_owned(),
            kind: kind.to_owned(),
            message,
            state: state.map_or(pb::SessionState::Unspecified, Into::into) as i32,
            replica: String::new(),
        });
    }

    /// Replicas: an event another replica published, to this replica's watchers.
    pub fn relay(&self, event: pb::FleetEvent) {
        let _ = self.tx.send(event);
    }

    /// A new subscription.
    pub fn subscribe(&self) -> broadcast::Receiver<pb::FleetEvent> {
        self.tx.subscribe()
    }
}
