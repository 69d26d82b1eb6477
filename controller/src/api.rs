//! `argus.v1.AdminService`: what people and orchestrators call. Input is validated here, once;
//! every refusal is a specific gRPC status.

use std::sync::Arc;

use argus_proto::v1 as pb;
use argus_proto::v1::admin_service_server::AdminService;
use argus_shared::command::{Action, CommandError};
use argus_shared::ids::{NodeId, SessionName};
use argus_shared::state::SessionState;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;
use tonic::{Request, Response, Status};

use crate::dispatch::{DispatchError, Origin};
use crate::store::{CommandRow, SessionRef, StoreError};
use crate::supervisor::Supervisor;
use argus_decide::detect::{Input, Track};

/// The AdminService implementation.
pub struct AdminApi {
    sup: Arc<Supervisor>,
}

impl AdminApi {
    /// A service over `sup`.
    pub fn new(sup: Arc<Supervisor>) -> Self {
        Self { sup }
    }

    /// Validates a session reference and finds the session.
    fn resolve(&self, r: Option<&pb::SessionRef>) -> Result<SessionRef, Status> {
        let r = r.ok_or_else(|| Status::invalid_argument("session is required"))?;
        NodeId::new(&r.node_id)
            .map_err(|e| Status::invalid_argument(format!("session.node_id: {e}")))?;
        SessionName::new(&r.session_name)
            .map_err(|e| Status::invalid_argument(format!("session.session_name: {e}")))?;
        if !self.sup.fleet.knows_node(&r.node_id) {
            return Err(Status::not_found(format!(
                "node {:?} is not known",
                r.node_id
            )));
        }
        match self
            .sup
            .fleet
            .find(&r.node_id, &r.session_name, &r.tmux_socket)
        {
            Ok(Some(k)) => Ok(k),
            Ok(None) => Err(Status::not_found(format!(
                "no session {:?} on node {:?}",
                r.session_name, r.node_id
            ))),
            Err(sockets) => Err(Status::invalid_argument(format!(
                "session {:?} exists on several tmux servers of node {:?} ({}); set tmux_socket",
                r.session_name,
                r.node_id,
                sockets.join(", ")
            ))),
        }
    }

    async fn command(
        &self,
        r: Option<&pb::SessionRef>,
        action: Result<Action, CommandError>,
    ) -> Result<Response<pb::CommandResponse>, Status> {
        let key = self.resolve(r)?;
        let action = action.map_err(|e| Status::invalid_argument(e.to_string()))?;
        let incarnation = if matches!(action, Action::Capture { .. } | Action::Restart { .. }) {
            None
        } else {
            self.sup.fleet.session(&key, |t| t.obs.agent).flatten()
        };
        if matches!(action, Action::Kill { .. }) {
            self.sup
                .apply(&key, Input::KilledByOperator, argus_shared::time::now_ms())
                .await;
        }
        let name = action.name();
        let result = self
            .sup
            .dispatch
            .call(
                &key,
                action,
                incarnation,
                Origin::Admin,
                &format!("{name} requested through the admin API"),
            )
            .await
            .map_err(dispatch_status)?;
        Ok(Response::new(pb::CommandResponse {
            command_id: result.command_id,
            status: result.status,
            message: result.message,
            output: result.output,
        }))
    }
}

fn dispatch_status(e: DispatchError) -> Status {
    match e {
        DispatchError::UnknownNode(_) => Status::not_found(e.to_string()),
        DispatchError::Disconnected(_) => Status::unavailable(e.to_string()),
        DispatchError::Busy(_) => Status::resource_exhausted(e.to_string()),
        DispatchError::Timeout { .. } => Status::deadline_exceeded(e.to_string()),
    }
}

fn store_status(e: StoreError) -> Status {
    Status::unavailable(format!("store unavailable: {e}"))
}

fn session_pb(key: &SessionRef, t: &Track) -> pb::Session {
    pb::Session {
        node_id: key.node_id.clone(),
        session_name: key.session_name.clone(),
        tmux_socket: key.tmux_socket.clone(),
        state: pb::SessionState::from(t.state) as i32,
        condition: pb::Condition::from(t.obs.condition) as i32,
        agent_pid: t.obs.agent.map_or(0, |a| a.pid),
        agent_name: t.obs.agent_name.clone(),
        last_change_ms: t.last_change_ms,
        last_activity_ms: t.last_activity_ms,
        pane_id: t.obs.pane_id.clone(),
        attached_clients: t.obs.attached_clients,
        labels: t.obs.labels.clone().into_iter().collect(),
        rate_limit_reset_at: t.obs.rate_limit_reset_at,
        reason: t.reason.clone(),
        profile: t.obs.profile.clone(),
    }
}

fn command_pb(c: CommandRow) -> pb::CommandRecord {
    pb::CommandRecord {
        command_id: c.command_id,
        action: c.action,
        origin: c.origin,
        reason: c.reason,
        issued_at_ms: c.issued_at_ms,
        status: pb::CommandStatus::from_str_name(&c.status).unwrap_or_default() as i32,
        result_message: c.result_message,
        finished_at_ms: c.finished_at_ms,
        epoch: c.epoch,
    }
}

fn incident_pb(r: crate::store::IncidentRow) -> pb::Incident {
    pb::Incident {
        id: r.id,
        kind: r.kind,
        scope: r.scope,
        opened_ms: r.opened_ms,
        closed_ms: r.closed_ms,
        acked_ms: r.acked_ms,
        acked_by: r.acked_by,
        summary: r.summary,
        sessions: r.sessions,
        until_ms: r.until_ms,
    }
}

fn state_pb(s: &str) -> i32 {
    SessionState::parse(s).map_or(pb::SessionState::Unspecified, Into::into) as i32
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn list_nodes(
        &self,
        _request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let stored = self.sup.store.nodes().await.map_err(store_status)?;
        let mut nodes: Vec<pb::Node> = stored
            .into_iter()
            .map(|n| {
                let live = self.sup.fleet.node(&n.node_id);
                let count = self.sup.fleet.node_session_count(&n.node_id) as u32;
                pb::Node {
                    connected: live.as_ref().is_some_and(|l| l.link.is_some()),
                    epoch: live.as_ref().map_or(n.epoch, |l| l.epoch),
                    last_seen_ms: live.as_ref().map_or(n.last_attach_ms, |l| l.last_seen_ms),
                    health: live
                        .as_ref()
                        .map_or("down", |l| {
                            if l.link.is_some() {
                                l.health.as_str()
                            } else {
                                "down"
                            }
                        })
                        .to_owned(),
                    node_id: n.node_id,
                    hostname: n.hostname,
                    agent_version: n.agent_version,
                    session_count: count,
                }
            })
            .collect();
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(Response::new(pb::ListNodesResponse { nodes }))
    }

    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let node = request.into_inner().node_id;
        if !node.is_empty() && !self.sup.fleet.knows_node(&node) {
            return Err(Status::not_found(format!("node {node:?} is not known")));
        }
        let mut sessions: Vec<pb::Session> = self
            .sup
            .fleet
            .map_sessions((!node.is_empty()).then_some(node.as_str()), session_pb);
        sessions.sort_by(|a, b| {
            (&a.node_id, &a.session_name, &a.tmux_socket).cmp(&(
                &b.node_id,
                &b.session_name,
                &b.tmux_socket,
            ))
        });
        Ok(Response::new(pb::ListSessionsResponse { sessions }))
    }

    async fn get_session(
        &self,
        request: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::GetSessionResponse>, Status> {
        let req = request.into_inner();
        let key = self.resolve(req.session.as_ref())?;
        let session = self
            .sup
            .fleet
            .session(&key, |t| session_pb(&key, t))
            .ok_or_else(|| Status::not_found("session vanished"))?;
        let limit = match req.history_limit {
            0 => 50,
            n => n.min(1000),
        };
        let h = self
            .sup
            .store
            .history(&key, limit)
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::GetSessionResponse {
            session: Some(session),
            transitions: h
                .transitions
                .into_iter()
                .map(|t| pb::Transition {
                    at_ms: t.at_ms,
                    from: state_pb(&t.from),
                    to: state_pb(&t.to),
                    reason: t.reason,
                })
                .collect(),
            commands: h.commands.into_iter().map(command_pb).collect(),
        }))
    }

    type WatchEventsStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::FleetEvent, Status>> + Send>>;

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let node = request.into_inner().node_id;
        let stream =
            BroadcastStream::new(self.sup.events.subscribe()).filter_map(move |item| match item {
                Ok(e) if node.is_empty() || e.node_id == node => Some(Ok(e)),
                Ok(_) => None,
                Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                    Some(Ok(pb::FleetEvent {
                        at_ms: argus_shared::time::now_ms(),
                        kind: "lagged".into(),
                        message: format!("{n} events skipped: this watcher was too slow"),
                        ..Default::default()
                    }))
                }
            });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn nudge(
        &self,
        request: Request<pb::NudgeRequest>,
    ) -> Result<Response<pb::CommandResponse>, Status> {
        let r = request.into_inner();
        self.command(r.session.as_ref(), Action::nudge(&r.text))
            .await
    }

    async fn interrupt(
        &self,
        request: Request<pb::SessionRef>,
    ) -> Result<Response<pb::CommandResponse>, Status> {
        let r = request.into_inner();
        self.command(Some(&r), Ok(Action::Interrupt)).await
    }

    async fn kill(
        &self,
        request: Request<pb::KillRequest>,
    ) -> Result<Response<pb::CommandResponse>, Status> {
        let r = request.into_inner();
        self.command(r.session.as_ref(), Action::kill(r.grace_ms))
            .await
    }

    async fn restart(
        &self,
        request: Request<pb::RestartRequest>,
    ) -> Result<Response<pb::CommandResponse>, Status> {
        let r = request.into_inner();
        let cwd = match &r.session {
            Some(s) => self
                .resolve(Some(s))
                .ok()
                .and_then(|k| self.sup.fleet.session(&k, |t| t.obs.cwd.clone()))
                .unwrap_or_default(),
            None => String::new(),
        };
        let command = if r.command.is_empty() {
            r.session
                .as_ref()
                .and_then(|s| self.resolve(Some(s)).ok())
                .and_then(|k| {
                    self.sup
                        .fleet
                        .session(&k, |t| t.restart_command())
                        .flatten()
                })
                .unwrap_or_default()
        } else {
            r.command
        };
        let labels = r
            .session
            .as_ref()
            .and_then(|s| self.resolve(Some(s)).ok())
            .and_then(|k| self.sup.fleet.session(&k, |t| t.obs.labels.clone()))
            .unwrap_or_default();
        let action = Action::restart(&command, &cwd).map(|a| match a {
            Action::Restart { command, cwd, .. } => Action::Restart {
                command,
                cwd,
                labels,
            },
            other => other,
        });
        self.command(r.session.as_ref(), action).await
    }

    async fn capture(
        &self,
        request: Request<pb::CaptureRequest>,
    ) -> Result<Response<pb::CommandResponse>, Status> {
        let r = request.into_inner();
        self.command(r.session.as_ref(), Action::capture(r.lines))
            .await
    }

    async fn list_incidents(
        &self,
        request: Request<pb::ListIncidentsRequest>,
    ) -> Result<Response<pb::ListIncidentsResponse>, Status> {
        let r = request.into_inner();
        let limit = match r.limit {
            0 => 100,
            n => n.min(1000),
        };
        let rows = self
            .sup
            .store
            .incidents(r.include_closed, limit)
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::ListIncidentsResponse {
            incidents: rows.into_iter().map(incident_pb).collect(),
        }))
    }

    async fn ack_incident(
        &self,
        request: Request<pb::AckIncidentRequest>,
    ) -> Result<Response<pb::Incident>, Status> {
        let r = request.into_inner();
        if r.id.is_empty() {
            return Err(Status::invalid_argument("id is required"));
        }
        let by = if r.by.is_empty() {
            "anonymous".to_owned()
        } else {
            r.by.chars().take(128).collect()
        };
        let i = self
            .sup
            .ack_incident(&r.id, &by, argus_shared::time::now_ms())
            .await
            .ok_or_else(|| Status::not_found(format!("no open incident {:?}", r.id)))?;
        Ok(Response::new(incident_pb(i)))
    }
}
