//! `argus.v1.NodeAgentService`: the Attach stream of every node agent. Hello is checked, the
//! node's epoch is bumped durably, Welcome goes back, and from then on reports, events, results
//! and heartbeats are applied to the live fleet. Heartbeats cost no durable write.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use argus_proto::v1 as pb;
use argus_proto::v1::node_agent_service_server::NodeAgentService;
use argus_shared::ids::{NodeId, SessionName};
use argus_shared::time::now_ms;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::fleet::{Health, NodeEntry};
use crate::store::{NodeRecord, SessionRef};
use crate::supervisor::Supervisor;
use argus_decide::detect::{Incarnation, Input, Observation};

/// How long a node agent has to send Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Commands queued to one node before `send` reports it busy.
const LINK_QUEUE: usize = 1024;

/// The NodeAgentService implementation.
pub struct AgentApi {
    sup: Arc<Supervisor>,
    tasks: TaskTracker,
    next_stream: AtomicU64,
}

impl AgentApi {
    /// A service over `sup`; stream tasks run on `tasks`.
    pub fn new(sup: Arc<Supervisor>, tasks: TaskTracker) -> Self {
        Self {
            sup,
            tasks,
            next_stream: AtomicU64::new(1),
        }
    }
}

/// Why an Attach stream was refused.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The node agent opened Attach and said nothing.
    #[error("no Hello within {} s of opening Attach", HELLO_TIMEOUT.as_secs())]
    NoHello,
    /// Something other than Hello came first.
    #[error("the first message on Attach must be Hello")]
    NotHelloFirst,
    /// The stream ended before Hello.
    #[error("Attach closed before Hello")]
    ClosedBeforeHello,
    /// A Hello field is invalid.
    #[error("{field}: invalid")]
    BadHello {
        field: &'static str,
        #[source]
        source: argus_shared::ids::IdError,
    },
    /// The epoch bump could not be stored; the node agent retries (Unavailable).
    #[error("cannot record the attach of {node}")]
    RecordAttach {
        node: String,
        #[source]
        source: crate::store::StoreError,
    },
    /// Another replica raised the node's epoch after this one did, or the ownership could not be
    /// recorded; the node agent retries (Unavailable).
    #[error("cannot take node {node} over at epoch {epoch}: {reason}")]
    Claim {
        node: String,
        epoch: u64,
        reason: String,
    },
    /// The node agent went away before the Welcome.
    #[error("stream closed before Welcome")]
    ClosedBeforeWelcome,
}

impl From<IngestError> for Status {
    fn from(e: IngestError) -> Self {
        use tonic::Code;
        let code = match &e {
            IngestError::NoHello => Code::DeadlineExceeded,
            IngestError::NotHelloFirst
            | IngestError::ClosedBeforeHello
            | IngestError::BadHello { .. } => Code::InvalidArgument,
            IngestError::RecordAttach { .. } | IngestError::Claim { .. } => Code::Unavailable,
            IngestError::ClosedBeforeWelcome => Code::Internal,
        };
        crate::server::status(code, e)
    }
}

#[tonic::async_trait]
impl NodeAgentService for AgentApi {
    type AttachStream = ReceiverStream<Result<pb::ControllerMessage, Status>>;

    async fn attach(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| IngestError::NoHello)??;
        let hello = match first {
            Some(pb::AgentMessage {
                msg: Some(pb::agent_message::Msg::Hello(h)),
            }) => h,
            Some(_) => return Err(IngestError::NotHelloFirst.into()),
            None => return Err(IngestError::ClosedBeforeHello.into()),
        };
        let node_id = NodeId::new(&hello.node_id)
            .map_err(|source| IngestError::BadHello {
                field: "Hello.node_id",
                source,
            })?
            .to_string();
        let now = now_ms();
        let expiring = crate::auth::check_node(&node_id, now)?;
        let epoch = self
            .sup
            .store
            .attach_node(
                &NodeRecord {
                    node_id: node_id.clone(),
                    epoch: 0,
                    hostname: hello.hostname.clone(),
                    agent_version: hello.agent_version.clone(),
                    boot_id: hello.boot_id.clone(),
                    last_attach_ms: now,
                },
                hello.last_epoch,
            )
            .await
            .map_err(|source| IngestError::RecordAttach {
                node: node_id.clone(),
                source,
            })?;
        // Replicas: the raised epoch makes this replica the owner only while no other raised it
        // since; the node's stored state is loaded again (another replica may have changed it).
        if let Some(replica) = self.sup.replica.get() {
            let claim = |reason: String| IngestError::Claim {
                node: node_id.clone(),
                epoch,
                reason,
            };
            // Who had it before (the claim below replaces it): this replica's own view of a node
            // it kept is newer than the store's (the recorder writes behind).
            let previous = replica
                .owner(&node_id)
                .await
                .map_err(|e| claim(e.to_string()))?;
            match replica.claim(&node_id, epoch).await {
                Ok(true) => {}
                Ok(false) => return Err(claim("another replica raised it since".into()).into()),
                Err(e) => return Err(claim(e.to_string()).into()),
            }
            if previous.is_none_or(|o| o.replica != replica.id) {
                self.sup
                    .adopt_node(&node_id, now)
                    .await
                    .map_err(|e| claim(format!("loading its stored state: {e}")))?;
            }
        }

        let (tx, rx) = mpsc::channel(LINK_QUEUE);
        tx.send(Ok(pb::ControllerMessage {
            msg: Some(pb::controller_message::Msg::Welcome(pb::Welcome {
                controller_id: self.sup.controller_id.clone(),
                epoch,
            })),
        }))
        .await
        .map_err(|_| IngestError::ClosedBeforeWelcome)?;
        // The guarded files of the policy in force (again after every reload).
        tx.send(Ok(self.sup.guards_message()))
            .await
            .map_err(|_| IngestError::ClosedBeforeWelcome)?;
        // The policy's selectors (again after every reload).
        tx.send(Ok(self.sup.selectors_message()))
            .await
            .map_err(|_| IngestError::ClosedBeforeWelcome)?;

        let stream_id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let probe_ms = if hello.probe_interval_ms == 0 {
            argus_proto::DEFAULT_PROBE_INTERVAL.as_millis() as i64
        } else {
            i64::from(hello.probe_interval_ms)
        };
        self.sup.fleet.attach_node(NodeEntry {
            node_id: node_id.clone(),
            hostname: hello.hostname,
            agent_version: hello.agent_version,
            epoch,
            last_seen_ms: now,
            back_ms: now,
            health: Health::Up,
            link: Some(tx),
            stream_id,
            probe_ms,
            synced: false,
        });
        crate::metrics::stream_opened();
        self.sup.events.publish(
            &node_id,
            "",
            "node_attached",
            format!("attached with epoch {epoch}"),
            None,
        );
        // A new stream is the node back: a silent-host incident of it (from this process or
        // restored from the store) ends here, since its health starts up and never changes to up.
        self.sup.node_up(&node_id, now).await;
        if let Some(warning) = expiring {
            tracing::warn!(node = %node_id, "{warning}");
            self.sup
                .events
                .publish(&node_id, "", "cert_expiring", warning, None);
        }

        let sup = self.sup.clone();
        let span = tracing::info_span!("node_stream", node = %node_id, stream = stream_id, epoch);
        self.tasks.spawn(
            async move {
                let reason = serve_stream(&sup, &node_id, stream_id, &mut inbound).await;
                tracing::debug!(%reason, "stream ended");
                if sup.fleet.detach_if_owner(&node_id, stream_id) {
                    sup.events
                        .publish(&node_id, "", "node_detached", reason, None);
                }
            }
            .instrument(span),
        );
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Seconds' worth of events a stream may send at once: a node agent flushes the events it kept
/// while the controller was away when it reconnects.
const EVENT_BURST_S: f64 = 5.0;

/// Events and results per second on one stream: a token bucket holding [`EVENT_BURST_S`]
/// seconds' worth.
struct EventBudget {
    per_second: f64,
    burst: f64,
    tokens: f64,
    at_ms: i64,
    /// Dropped since the last `limit_exceeded` event, and when that was.
    dropped: u64,
    told_ms: i64,
}

impl EventBudget {
    fn new(per_second: u32, now: i64) -> Self {
        let burst = f64::from(per_second) * EVENT_BURST_S;
        Self {
            per_second: f64::from(per_second),
            burst,
            tokens: burst,
            at_ms: now,
            dropped: 0,
            told_ms: 0,
        }
    }

    /// True when one more event may be applied at `now`.
    fn take(&mut self, now: i64) -> bool {
        let elapsed = (now - self.at_ms).max(0) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        self.at_ms = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.dropped += 1;
            false
        }
    }
}

/// Applies every message of one stream; returns why the stream ended.
async fn serve_stream(
    sup: &Arc<Supervisor>,
    node_id: &str,
    stream_id: u64,
    inbound: &mut Streaming<pb::AgentMessage>,
) -> String {
    let mut budget = EventBudget::new(sup.limits.events_per_second, now_ms());
    loop {
        let msg = match inbound.message().await {
            Ok(Some(m)) => m,
            Ok(None) => return "stream closed by the node agent".to_owned(),
            Err(status) => return format!("stream broke: {}", status.message()),
        };
        let now = now_ms();
        if !sup.fleet.heard_from(node_id, stream_id, now) {
            return "replaced by a newer stream of the same node".to_owned();
        }
        // Deaths and other events, and results nobody waits for (late or made up); an answer
        // to a waiting command is never dropped.
        let counted = match &msg.msg {
            Some(pb::agent_message::Msg::Event(_) | pb::agent_message::Msg::LocalRequest(_)) => {
                true
            }
            Some(pb::agent_message::Msg::Result(r)) => !sup.dispatch.waiting_for(&r.command_id),
            _ => false,
        };
        if counted && !budget.take(now) {
            if now - budget.told_ms >= 1000 {
                refused(
                    sup,
                    node_id,
                    "",
                    format!(
                        "{} events dropped: more than limits.events_per_second ({}) from this node; its next report carries the state",
                        budget.dropped, sup.limits.events_per_second
                    ),
                );
                budget.dropped = 0;
                budget.told_ms = now;
            }
            continue;
        }
        let arrived = std::time::Instant::now();
        match msg.msg {
            Some(pb::agent_message::Msg::Report(r)) => {
                crate::metrics::message("report");
                let full = r.full_snapshot;
                apply_report(sup, node_id, r, now).await;
                if full {
                    sup.fleet.mark_synced(node_id, stream_id);
                }
                crate::metrics::decided("report", arrived.elapsed());
            }
            Some(pb::agent_message::Msg::Event(e)) => {
                crate::metrics::message("event");
                apply_event(sup, node_id, e, now).await;
                crate::metrics::decided("event", arrived.elapsed());
            }
            Some(pb::agent_message::Msg::Result(r)) => {
                crate::metrics::message("result");
                sup.command_result(node_id, r, now).await;
            }
            Some(pb::agent_message::Msg::Heartbeat(_)) => crate::metrics::message("heartbeat"),
            Some(pb::agent_message::Msg::LocalRequest(r)) => {
                crate::metrics::message("local_request");
                sup.local_request(node_id, r);
            }
            Some(pb::agent_message::Msg::Hello(_)) => {
                tracing::warn!(node = %node_id, "second Hello on one stream ignored");
            }
            None => tracing::warn!(node = %node_id, "empty message ignored"),
        }
    }
}

/// Announces a refusal of something a node reported, naming the limit (a `limit_exceeded`
/// event and a warning in the log).
fn refused(sup: &Supervisor, node_id: &str, session: &str, message: String) {
    tracing::warn!(node = %node_id, session, "{message}");
    sup.events
        .publish(node_id, session, "limit_exceeded", message, None);
}

/// Why an observation's labels are refused, if they are: too many, or one too long.
fn labels_refused(o: &pb::SessionObservation, limits: &crate::config::Limits) -> Option<String> {
    if o.labels.len() > limits.labels_per_session {
        return Some(format!(
            "{} labels, more than limits.labels_per_session ({})",
            o.labels.len(),
            limits.labels_per_session
        ));
    }
    o.labels
        .iter()
        .find(|(k, v)| k.len() + v.len() > limits.label_bytes)
        .map(|(k, v)| {
            format!(
                "label {:?} has {} bytes, more than limits.label_bytes ({})",
                k.chars().take(64).collect::<String>(),
                k.len() + v.len(),
                limits.label_bytes
            )
        })
}

fn session_ref(node_id: &str, socket: &str, name: &str) -> Option<SessionRef> {
    match SessionName::new(name) {
        Ok(_) => Some(SessionRef {
            node_id: node_id.to_owned(),
            tmux_socket: socket.to_owned(),
            session_name: name.to_owned(),
        }),
        Err(e) => {
            tracing::warn!(node = %node_id, error = %e, "observation with an invalid session name ignored");
            None
        }
    }
}

async fn apply_report(sup: &Arc<Supervisor>, node_id: &str, r: pb::Report, now: i64) {
    let limits = &sup.limits;
    let mut seen = HashSet::new();
    let mut over_count = 0usize;
    for o in r.sessions {
        let Some(key) = session_ref(node_id, &o.tmux_socket, &o.session_name) else {
            continue;
        };
        // Seen, even when refused below: a refused observation is not a vanished session.
        seen.insert(key.clone());
        let known = sup.fleet.session(&key, |_| ()).is_some();
        if !known && sup.fleet.node_session_count(node_id) >= limits.sessions_per_node {
            over_count += 1;
            continue;
        }
        if let Some(why) = labels_refused(&o, limits) {
            refused(
                sup,
                node_id,
                &o.session_name,
                format!("observation refused: {why}"),
            );
            continue;
        }
        sup.apply(&key, Input::Observed(Box::new(observation(o))), now)
            .await;
    }
    if over_count > 0 {
        refused(
            sup,
            node_id,
            "",
            format!(
                "{over_count} sessions ignored: the node reports more than limits.sessions_per_node ({})",
                limits.sessions_per_node
            ),
        );
    }
    let mut gone: Vec<SessionRef> = r
        .gone
        .iter()
        .filter_map(|g| session_ref(node_id, &g.tmux_socket, &g.session_name))
        .collect();
    if r.full_snapshot {
        gone.extend(
            sup.fleet
                .node_sessions(node_id)
                .into_iter()
                .filter(|k| !seen.contains(k)),
        );
    }
    for key in gone {
        sup.apply(&key, Input::Gone, now).await;
    }
}

async fn apply_event(sup: &Arc<Supervisor>, node_id: &str, e: pb::Event, now: i64) {
    let Some(key) = session_ref(node_id, &e.tmux_socket, &e.session_name) else {
        return;
    };
    let input = match pb::EventKind::try_from(e.kind) {
        Ok(pb::EventKind::AgentExited) => match e.process {
            Some(p) => Input::AgentExited(Incarnation {
                pid: p.pid,
                start_time: p.start_time,
            }),
            None => return,
        },
        Ok(pb::EventKind::PaneDied) => Input::PaneDied(e.process.map_or(0, |p| p.pid)),
        Ok(pb::EventKind::SessionClosed) => Input::Gone,
        Ok(pb::EventKind::GuardRestored) => Input::GuardRestored {
            path: e.path,
            detail: e.detail,
        },
        Ok(pb::EventKind::WorkTree) => Input::WorkTree {
            dirty_since_ms: e.dirty_since_ms,
        },
        _ => {
            tracing::warn!(node = %node_id, kind = e.kind, "unknown event kind ignored");
            return;
        }
    };
    let death = matches!(input, Input::AgentExited(_) | Input::PaneDied(_));
    sup.apply(&key, input, now).await;
    if death {
        crate::metrics::death_decided(e.at_ms, argus_shared::time::now_ms());
    }
}

/// The wire observation as the decision core's input.
fn observation(o: pb::SessionObservation) -> Observation {
    Observation {
        condition: o.condition().into(),
        pane_id: o.pane_id,
        pane_pid: o.pane_pid,
        pane_dead: o.pane_dead,
        exit_status: o.exit_status,
        agent: o.agent.map(|a| Incarnation {
            pid: a.pid,
            start_time: a.start_time,
        }),
        agent_name: o.agent_name,
        agent_cpu_ms: o.agent_cpu_ms,
        screen_hash: o.screen_hash,
        rate_limit_reset_at: o.rate_limit_reset_at,
        last_output_ms: o.last_output_ms,
        attached_clients: o.attached_clients,
        start_command: o.start_command,
        cwd: o.cwd,
        labels: o.labels.into_iter().collect::<BTreeMap<_, _>>(),
        profile: o.profile,
        progress_hash: o.progress_hash,
        decided_by: o.decided_by,
        agent_session_id: o.agent_session_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_budget_allows_a_burst_then_its_rate() {
        let mut b = EventBudget::new(10, 0);
        let burst = (0..100).filter(|_| b.take(0)).count();
        assert_eq!(burst, 50, "five seconds' worth at once");
        assert!(!b.take(0));
        assert_eq!(b.dropped, 51);
        // A second later, ten more.
        let more = (0..100).filter(|_| b.take(1_000)).count();
        assert_eq!(more, 10);
    }
}
