//! The live fleet in memory: nodes (with their link to the stream that owns them) and the
//! [`Track`] of every session, with an index of each node's sessions. The maps are private:
//! every change goes through a method here, so there is one writer's view of the rules (which
//! stream owns a node, when a session is created or forgotten). Hot maps are `DashMap`s; no
//! reference into them is ever held across an `.await` (closures, not guards, cross the API).

use std::collections::HashSet;
use std::sync::Arc;

use argus_decide::detect::Track;
use argus_proto::v1 as pb;
use argus_shared::ids::SessionRef;
use argus_shared::time::UnixMs;
use dashmap::DashMap;
use tokio::sync::mpsc;

pub use argus_shared::state::Health;

/// Commands to the stream that owns a node.
pub type Link = mpsc::Sender<Result<pb::ControllerMessage, tonic::Status>>;

/// A node agent as the controller knows it.
#[derive(Debug, Clone)]
pub struct NodeEntry {
    pub node_id: String,
    pub hostname: String,
    pub agent_version: String,
    pub epoch: u64,
    pub last_seen_ms: UnixMs,
    /// When its messages last resumed after a silence, or its stream attached: what its
    /// sessions did before is unknown (see `Ctx::node_back_ms`).
    pub back_ms: UnixMs,
    pub health: Health,
    /// Commands to the stream that owns the node; `None` while disconnected.
    pub link: Option<Link>,
    /// Identifies the stream that owns the node (a newer stream replaces an older one).
    pub stream_id: u64,
    /// The node agent's probe interval.
    pub probe_ms: i64,
    /// The stream's first full snapshot was applied: the live view of the node's sessions is
    /// reconciled with the node, and time-driven decisions may be made for them.
    pub synced: bool,
}

impl NodeEntry {
    /// Up and connected: commands can reach it.
    pub fn reachable(&self) -> bool {
        self.health == Health::Up && self.link.is_some()
    }
}

/// The whole live fleet.
#[derive(Default)]
pub struct Fleet {
    nodes: DashMap<String, NodeEntry>,
    /// Keys are shared with `by_node` (one allocation per session).
    sessions: DashMap<Arc<SessionRef>, Track>,
    /// The sessions of each node, so that a node's snapshot costs its own sessions, not the
    /// fleet's.
    by_node: DashMap<String, HashSet<Arc<SessionRef>>>,
    /// How long without a message counts as a silence a node comes back from (ms; 0: not set,
    /// only an attach counts). Set from the policy (see [`Fleet::set_silence`]).
    silence_ms: std::sync::atomic::AtomicI64,
}

// === impl Fleet: nodes ===

impl Fleet {
    /// A stream attached for `entry.node_id`: it owns the node from now on (a stream it replaces
    /// finds out at its next message).
    pub fn attach_node(&self, entry: NodeEntry) {
        self.nodes.insert(entry.node_id.clone(), entry);
    }

    /// Half the policy's `node_suspect_after`: longer than a heartbeat interval, as the node
    /// agent's defaults (2 s of 6 s) and every test setup have it.
    pub fn set_silence(&self, node_suspect_after: std::time::Duration) {
        let ms = node_suspect_after.as_millis() as i64 / 2;
        self.silence_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// A message arrived on stream `stream_id` of `node_id` at `now`; after a silence (see
    /// [`Fleet::set_silence`]) the node counts as back from it. False when that stream no longer
    /// owns the node.
    pub fn heard_from(&self, node_id: &str, stream_id: u64, now: UnixMs) -> bool {
        let silence = self.silence_ms.load(std::sync::atomic::Ordering::Relaxed);
        match self.nodes.get_mut(node_id) {
            Some(mut n) if n.stream_id == stream_id => {
                if silence > 0 && now - n.last_seen_ms >= silence {
                    n.back_ms = now;
                }
                n.last_seen_ms = now;
                true
            }
            _ => false,
        }
    }

    /// Stream `stream_id` of `node_id` ended: the node is disconnected if that stream still owned
    /// it. True when it did.
    pub fn detach_if_owner(&self, node_id: &str, stream_id: u64) -> bool {
        self.nodes
            .get_mut(node_id)
            .filter(|n| n.stream_id == stream_id)
            .map(|mut n| n.link = None)
            .is_some()
    }

    /// Drops every node's link (shutdown): their response streams end and they reconnect
    /// elsewhere.
    pub fn drop_links(&self) {
        for mut node in self.nodes.iter_mut() {
            node.link = None;
        }
    }

    /// Re-evaluates every node's health with `rule` (silence in ms -> health); returns the nodes
    /// whose health changed, with their new health and silence.
    pub fn update_health(
        &self,
        now: UnixMs,
        rule: impl Fn(i64) -> Health,
    ) -> Vec<(String, Health, i64)> {
        let mut changed = Vec::new();
        for mut node in self.nodes.iter_mut() {
            let silent = now - node.last_seen_ms;
            let health = rule(silent);
            if health != node.health {
                node.health = health;
                changed.push((node.node_id.clone(), health, silent));
            }
        }
        changed
    }

    /// Every node's health and last message time.
    pub fn node_liveness(&self) -> Vec<(Health, UnixMs)> {
        self.nodes
            .iter()
            .map(|n| (n.health, n.last_seen_ms))
            .collect()
    }

    /// Node agents' streams open now.
    pub fn streams(&self) -> usize {
        self.nodes.iter().filter(|n| n.link.is_some()).count()
    }

    /// One node, copied.
    pub fn node(&self, node_id: &str) -> Option<NodeEntry> {
        self.nodes.get(node_id).map(|n| n.clone())
    }

    /// True when the node attached at least once since the controller started, or has sessions
    /// in the live view (restored from the store).
    pub fn knows_node(&self, node_id: &str) -> bool {
        self.nodes.contains_key(node_id) || self.by_node.get(node_id).is_some_and(|k| !k.is_empty())
    }

    /// The nodes with sessions in the live view that have been gone (disconnected or down)
    /// for longer than `retention` ms at `now`. A node not seen since the controller started at
    /// `started_ms` is gone since then.
    pub fn absent_nodes(&self, now: UnixMs, started_ms: UnixMs, retention: i64) -> HashSet<String> {
        self.by_node
            .iter()
            .filter(|e| !e.value().is_empty())
            .filter(|e| {
                let since = match self.nodes.get(e.key()) {
                    None => Some(started_ms),
                    Some(n) if n.link.is_none() || n.health == Health::Down => Some(n.last_seen_ms),
                    Some(_) => None,
                };
                since.is_some_and(|at| now - at > retention)
            })
            .map(|e| e.key().clone())
            .collect()
    }

    /// Forgets a gone node's sessions; the node itself stays listed (from the store) until it
    /// attaches again.
    pub fn forget_node(&self, node_id: &str) {
        if let Some((_, keys)) = self.by_node.remove(node_id) {
            for k in keys {
                self.sessions.remove(&k);
            }
        }
    }

    /// Every node with an entry (attached since the controller started).
    pub fn node_ids(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.node_id.clone()).collect()
    }

    /// Replicas: takes a node another replica owns now out of this live view, entry and
    /// sessions, so that its silence here is never taken for a host down.
    pub fn remove_node(&self, node_id: &str) {
        self.forget_node(node_id);
        self.nodes.remove(node_id);
    }

    /// The node agent's probe interval, when the node attached since the controller started.
    pub fn probe_ms(&self, node_id: &str) -> Option<i64> {
        self.nodes.get(node_id).map(|n| n.probe_ms)
    }

    /// True when commands can reach the node now.
    pub fn reachable(&self, node_id: &str) -> bool {
        self.nodes.get(node_id).is_some_and(|n| n.reachable())
    }

    /// When `node_id` was last back from a silence or attached (0: not known here).
    pub fn back_ms(&self, node_id: &str) -> UnixMs {
        self.nodes.get(node_id).map_or(0, |n| n.back_ms)
    }

    /// Stream `stream_id` of `node_id` delivered its first full snapshot.
    pub fn mark_synced(&self, node_id: &str, stream_id: u64) {
        if let Some(mut n) = self.nodes.get_mut(node_id)
            && n.stream_id == stream_id
        {
            n.synced = true;
        }
    }

    /// The ids of the nodes that are up and whose sessions are reconciled with their first
    /// full snapshot (until then, a session restored from the store is not what the node has).
    pub fn up_nodes(&self) -> HashSet<String> {
        self.nodes
            .iter()
            .filter(|n| n.health == Health::Up && n.synced)
            .map(|n| n.node_id.clone())
            .collect()
    }
}

// === impl Fleet: sessions ===

impl Fleet {
    /// Runs `f` on a session's track, creating the track with `create` when the session is new
    /// and `create` is given. `None` when the session is unknown and nothing was created.
    pub fn with_session<R>(
        &self,
        key: &SessionRef,
        create: Option<impl FnOnce() -> Track>,
        f: impl FnOnce(&mut Track) -> R,
    ) -> Option<R> {
        if let Some(mut t) = self.sessions.get_mut(key) {
            return Some(f(&mut t));
        }
        let create = create?;
        let key = Arc::new(key.clone());
        let mut t = self.sessions.entry(key.clone()).or_insert_with(create);
        self.by_node
            .entry(key.node_id.clone())
            .or_default()
            .insert(key);
        Some(f(&mut t))
    }

    /// Reads a session's track.
    pub fn session<R>(&self, key: &SessionRef, f: impl FnOnce(&Track) -> R) -> Option<R> {
        self.sessions.get(key).map(|t| f(&t))
    }

    /// Forgets a session.
    pub fn remove_session(&self, key: &SessionRef) {
        self.sessions.remove(key);
        if let Some(mut keys) = self.by_node.get_mut(&key.node_id) {
            keys.remove(key);
        }
    }

    /// Sessions of one node.
    pub fn node_sessions(&self, node_id: &str) -> Vec<SessionRef> {
        self.by_node
            .get(node_id)
            .map(|keys| keys.iter().map(|k| SessionRef::clone(k)).collect())
            .unwrap_or_default()
    }

    /// How many sessions a node has.
    pub fn node_session_count(&self, node_id: &str) -> usize {
        self.by_node.get(node_id).map_or(0, |keys| keys.len())
    }

    /// `f` over every session of `node` (every session when `node` is `None`), collected.
    pub fn map_sessions<R>(
        &self,
        node: Option<&str>,
        mut f: impl FnMut(&SessionRef, &Track) -> R,
    ) -> Vec<R> {
        match node {
            None => self
                .sessions
                .iter()
                .map(|e| f(e.key(), e.value()))
                .collect(),
            Some(node) => self
                .node_sessions(node)
                .iter()
                .filter_map(|k| self.sessions.get(k).map(|t| f(k, &t)))
                .collect(),
        }
    }

    /// Finds a session by node and name; `socket` may be empty when the name is unique on the
    /// node. `Err` carries the candidates' sockets when the name is ambiguous.
    pub fn find(
        &self,
        node_id: &str,
        name: &str,
        socket: &str,
    ) -> Result<Option<SessionRef>, Vec<String>> {
        let hits: Vec<SessionRef> = self
            .node_sessions(node_id)
            .into_iter()
            .filter(|k| k.session_name == name && (socket.is_empty() || k.tmux_socket == socket))
            .collect();
        match hits.len() {
            0 => Ok(None),
            1 => Ok(hits.into_iter().next()),
            _ => {
                let mut sockets: Vec<String> = hits.into_iter().map(|k| k.tmux_socket).collect();
                sockets.sort();
                Err(sockets)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(node: &str, socket: &str, name: &str) -> SessionRef {
        SessionRef {
            node_id: node.into(),
            tmux_socket: socket.into(),
            session_name: name.into(),
        }
    }

    fn add(f: &Fleet, k: &SessionRef) {
        f.with_session(k, Some(|| Track::new(0, None, None)), |_| ());
    }

    #[test]
    fn sessions_are_indexed_by_node_and_forgotten() {
        let f = Fleet::default();
        add(&f, &key("n1", "/a", "x"));
        add(&f, &key("n1", "/b", "x"));
        add(&f, &key("n2", "/a", "y"));
        assert_eq!(f.node_session_count("n1"), 2);
        assert_eq!(f.find("n1", "x", ""), Err(vec!["/a".into(), "/b".into()]));
        assert_eq!(f.find("n1", "x", "/b"), Ok(Some(key("n1", "/b", "x"))));
        assert_eq!(f.find("n2", "x", ""), Ok(None));
        f.remove_session(&key("n1", "/a", "x"));
        assert_eq!(f.find("n1", "x", ""), Ok(Some(key("n1", "/b", "x"))));
        assert_eq!(f.map_sessions(None, |k, _| k.clone()).len(), 2);
        // Reading an unknown session creates nothing.
        assert_eq!(
            f.with_session(&key("n3", "", "z"), None::<fn() -> Track>, |_| ()),
            None
        );
        assert_eq!(f.node_session_count("n3"), 0);
    }

    #[test]
    fn a_node_heard_again_after_a_silence_is_back() {
        let f = Fleet::default();
        let (tx, _rx) = mpsc::channel(1);
        f.attach_node(NodeEntry {
            node_id: "n1".into(),
            hostname: String::new(),
            agent_version: String::new(),
            epoch: 1,
            last_seen_ms: 0,
            back_ms: 0,
            health: Health::Up,
            link: Some(tx),
            stream_id: 1,
            probe_ms: 1000,
            synced: true,
        });
        // Messages 1 s apart are no silence; one after 3 s (half of a 6 s suspect threshold) is.
        f.set_silence(std::time::Duration::from_secs(6));
        assert!(f.heard_from("n1", 1, 1_000));
        assert!(f.heard_from("n1", 1, 2_000));
        assert_eq!(f.back_ms("n1"), 0);
        assert!(f.heard_from("n1", 1, 5_000));
        assert_eq!(f.back_ms("n1"), 5_000);
    }

    #[test]
    fn only_the_owning_stream_touches_or_detaches_a_node() {
        let f = Fleet::default();
        let (tx, _rx) = mpsc::channel(1);
        let entry = |stream_id| NodeEntry {
            node_id: "n1".into(),
            hostname: String::new(),
            agent_version: String::new(),
            epoch: 1,
            last_seen_ms: 0,
            back_ms: 0,
            health: Health::Up,
            link: Some(tx.clone()),
            stream_id,
            probe_ms: 1000,
            synced: true,
        };
        f.attach_node(entry(1));
        f.attach_node(entry(2));
        assert!(!f.heard_from("n1", 1, 10), "replaced stream");
        assert!(!f.detach_if_owner("n1", 1));
        assert!(f.reachable("n1"));
        assert!(f.heard_from("n1", 2, 10));
        assert_eq!(
            f.update_health(7_000, |s| if s > 5_000 {
                Health::Suspect
            } else {
                Health::Up
            })
            .len(),
            1
        );
        assert!(!f.reachable("n1"));
        assert!(f.detach_if_owner("n1", 2));
        assert!(f.node("n1").is_some_and(|n| n.link.is_none()));
    }
}
