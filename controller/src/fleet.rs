//! The live fleet in memory: nodes (with their link to the stream that owns them) and the
//! [`Track`] of every session. Hot maps are `DashMap`s; no reference into them is ever held
//! across an `.await`.

use argus_proto::v1 as pb;
use argus_shared::time::UnixMs;
use dashmap::DashMap;
use tokio::sync::mpsc;

use crate::store::SessionRef;
use argus_decide::detect::Track;

pub use argus_shared::state::Health;

/// A node agent as the controller knows it.
#[derive(Debug, Clone)]
pub struct NodeEntry {
    pub node_id: String,
    pub hostname: String,
    pub agent_version: String,
    pub epoch: u64,
    pub last_seen_ms: UnixMs,
    pub health: Health,
    /// Commands to the stream that owns the node; `None` while disconnected.
    pub link: Option<mpsc::Sender<Result<pb::ControllerMessage, tonic::Status>>>,
    /// Identifies the stream that owns the node (a newer stream replaces an older one).
    pub stream_id: u64,
    /// The node agent's probe interval.
    pub probe_ms: i64,
}

/// The whole live fleet.
#[derive(Default)]
pub struct Fleet {
    pub nodes: DashMap<String, NodeEntry>,
    pub sessions: DashMap<SessionRef, Track>,
}

impl Fleet {
    /// Sessions of one node.
    pub fn node_sessions(&self, node_id: &str) -> Vec<SessionRef> {
        self.sessions
            .iter()
            .filter(|e| e.key().node_id == node_id)
            .map(|e| e.key().clone())
            .collect()
    }

    /// Finds a session by node and name; `socket` may be empty when the name is unique on the
    /// node. `Err` carries the candidates when the name is ambiguous.
    pub fn find(
        &self,
        node_id: &str,
        name: &str,
        socket: &str,
    ) -> Result<Option<SessionRef>, Vec<String>> {
        let hits: Vec<SessionRef> = self
            .sessions
            .iter()
            .filter(|e| {
                let k = e.key();
                k.node_id == node_id
                    && k.session_name == name
                    && (socket.is_empty() || k.tmux_socket == socket)
            })
            .map(|e| e.key().clone())
            .collect();
        match hits.len() {
            0 => Ok(None),
            1 => Ok(hits.into_iter().next()),
            _ => Err(hits.into_iter().map(|k| k.tmux_socket).collect()),
        }
    }
}
