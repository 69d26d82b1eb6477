//! `argus.v1.AdminService`: what people and orchestrators call. Input is validated here, once;
//! every refusal is a specific gRPC status.

use std::sync::Arc;

use argus_proto::v1 as pb;
use argus_proto::v1::admin_service_server::AdminService;
use argus_shared::command::{Action, CommandError};
use argus_shared::ids::{IdError, NodeId, SessionName};
use argus_shared::state::SessionState;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;
use tonic::{Code, Request, Response, Status};

use crate::dispatch::{DispatchError, Origin};
use crate::server;
use crate::store::{CommandRow, SessionRef, StoreError};
use crate::supervisor::Supervisor;
use argus_decide::detect::{Input, Track};
use argus_decide::policy::Policy;

/// Why an admin call was refused. Each variant maps to one gRPC code (see the `From` impl
/// below); the message names the offending field or id, and sources stay attached.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A required field is missing.
    #[error("{field} is required")]
    Missing { field: &'static str },
    /// A field holds an invalid identifier.
    #[error("invalid {field}")]
    BadId {
        field: &'static str,
        #[source]
        source: IdError,
    },
    /// A command's arguments are invalid.
    #[error("invalid {field}")]
    BadCommand {
        field: &'static str,
        #[source]
        source: CommandError,
    },
    /// No node with this id has ever attached.
    #[error("node {node:?} is not known")]
    UnknownNode { node: String },
    /// The node has no such session (on that tmux server, when one was named).
    #[error("no session {name:?} on node {node:?}{}", on_socket(.tmux_socket))]
    UnknownSession {
        node: String,
        name: String,
        tmux_socket: String,
    },
    /// The name exists on several tmux servers of the node and no socket was named.
    #[error(
        "session {name:?} exists on several tmux servers of node {node:?} ({}); set session.tmux_socket",
        .sockets.join(", ")
    )]
    AmbiguousSession {
        node: String,
        name: String,
        sockets: Vec<String>,
    },
    /// No open incident has this id.
    #[error("no open incident {id:?}")]
    UnknownIncident { id: String },
    /// No stored checkpoint has this id.
    #[error("no checkpoint {id:?}")]
    UnknownCheckpoint { id: String },
    /// The command could not be sent or was not answered.
    #[error(transparent)]
    Dispatch(#[from] DispatchError),
    /// The store failed while serving the call.
    #[error("reading the {what} failed")]
    Store {
        what: &'static str,
        #[source]
        source: StoreError,
    },
}

fn on_socket(socket: &str) -> String {
    if socket.is_empty() {
        String::new()
    } else {
        format!(" (tmux socket {socket:?})")
    }
}

impl ApiError {
    fn store(what: &'static str) -> impl FnOnce(StoreError) -> Self {
        move |source| Self::Store { what, source }
    }

    /// The gRPC code this refusal is answered with.
    pub fn code(&self) -> Code {
        match self {
            Self::Missing { .. }
            | Self::BadId { .. }
            | Self::BadCommand { .. }
            | Self::AmbiguousSession { .. } => Code::InvalidArgument,
            Self::UnknownNode { .. }
            | Self::UnknownSession { .. }
            | Self::UnknownIncident { .. }
            | Self::UnknownCheckpoint { .. } => Code::NotFound,
            Self::Dispatch(d) => d.code(),
            Self::Store { source, .. } => source.code(),
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::Dispatch(d) => d.into(),
            e => server::status(e.code(), e),
        }
    }
}

/// The field a refused command argument came from.
fn command_field(e: &CommandError) -> &'static str {
    match e {
        CommandError::EmptyNudge
        | CommandError::NudgeTooLong { .. }
        | CommandError::ControlChar { .. } => "text",
        CommandError::TooManyLines { .. } => "lines",
        CommandError::GraceTooLong { .. } => "grace_ms",
        CommandError::BadRestartCommand { .. } | CommandError::BadGate => "command",
        CommandError::NoAction => "action",
    }
}

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
    fn resolve(&self, r: Option<&pb::SessionRef>) -> Result<SessionRef, ApiError> {
        let r = r.ok_or(ApiError::Missing { field: "session" })?;
        NodeId::new(&r.node_id).map_err(|source| ApiError::BadId {
            field: "session.node_id",
            source,
        })?;
        SessionName::new(&r.session_name).map_err(|source| ApiError::BadId {
            field: "session.session_name",
            source,
        })?;
        if !self.sup.fleet.knows_node(&r.node_id) {
            return Err(ApiError::UnknownNode {
                node: r.node_id.clone(),
            });
        }
        match self
            .sup
            .fleet
            .find(&r.node_id, &r.session_name, &r.tmux_socket)
        {
            Ok(Some(k)) => Ok(k),
            Ok(None) => Err(ApiError::UnknownSession {
                node: r.node_id.clone(),
                name: r.session_name.clone(),
                tmux_socket: r.tmux_socket.clone(),
            }),
            Err(sockets) => Err(ApiError::AmbiguousSession {
                node: r.node_id.clone(),
                name: r.session_name.clone(),
                sockets,
            }),
        }
    }

    /// A session that left the live view (ended longer ago than the retention, or its node is
    /// gone), as the store last recorded it: its history stays readable.
    async fn recorded(
        &self,
        node: &str,
        name: &str,
        socket: &str,
    ) -> Result<(SessionRef, pb::Session), ApiError> {
        let mut rows = self
            .sup
            .store
            .sessions_named(node, name)
            .await
            .map_err(ApiError::store("recorded sessions"))?;
        rows.retain(|t| socket.is_empty() || t.session.tmux_socket == socket);
        if rows.len() > 1 {
            let mut sockets: Vec<String> =
                rows.into_iter().map(|t| t.session.tmux_socket).collect();
            sockets.sort();
            return Err(ApiError::AmbiguousSession {
                node: node.to_owned(),
                name: name.to_owned(),
                sockets,
            });
        }
        let Some(last) = rows.pop() else {
            return Err(if self.sup.fleet.knows_node(node) {
                ApiError::UnknownSession {
                    node: node.to_owned(),
                    name: name.to_owned(),
                    tmux_socket: socket.to_owned(),
                }
            } else {
                ApiError::UnknownNode {
                    node: node.to_owned(),
                }
            });
        };
        let session = pb::Session {
            node_id: last.session.node_id.clone(),
            session_name: last.session.session_name.clone(),
            tmux_socket: last.session.tmux_socket.clone(),
            state: state_pb(&last.to),
            last_change_ms: last.at_ms,
            reason: format!("{} (as last recorded; not in the live view)", last.reason),
            ..Default::default()
        };
        Ok((last.session, session))
    }

    async fn command(
        &self,
        r: Option<&pb::SessionRef>,
        action: Result<Action, CommandError>,
    ) -> Result<Response<pb::CommandResponse>, ApiError> {
        let key = self.resolve(r)?;
        let action = action.map_err(|source| ApiError::BadCommand {
            field: command_field(&source),
            source,
        })?;
        let incarnation = if matches!(
            action,
            Action::Capture { .. } | Action::Restart { .. } | Action::Checkpoint
        ) {
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
                &format!(
                    "{name} requested through the admin API{}",
                    crate::auth::audit_by()
                ),
            )
            .await?;
        Ok(Response::new(pb::CommandResponse {
            command_id: result.command_id,
            status: result.status,
            message: result.message,
            output: result.output,
            checkpoint: result.checkpoint,
        }))
    }
}

fn session_pb(key: &SessionRef, t: &Track, policy: &Arc<Policy>) -> pb::Session {
    let group = t.obs.label(argus_shared::labels::GROUP);
    pb::Session {
        decided_by: t.obs.decided_by.clone(),
        agent_session_id: t.obs.agent_session_id.clone(),
        acted_on_because: t
            .agent_evidence(&key.session_name, policy.for_group(group))
            .unwrap_or_default()
            .to_owned(),
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
        let stored = self
            .sup
            .store
            .nodes()
            .await
            .map_err(ApiError::store("nodes"))?;
        // Replicas: who owns each node, and whether that replica is alive.
        let owners = match self.sup.replica.get() {
            Some(r) => r
                .owners()
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?,
            None => Default::default(),
        };
        let mut nodes: Vec<pb::Node> = stored
            .into_iter()
            .map(|n| {
                if let Some((owner, alive)) = owners.get(&n.node_id)
                    && !self.sup.fleet.knows_node(&n.node_id)
                {
                    return pb::Node {
                        connected: *alive,
                        epoch: owner.epoch,
                        last_seen_ms: n.last_attach_ms,
                        health: if *alive { "up" } else { "down" }.to_owned(),
                        replica: owner.replica.clone(),
                        node_id: n.node_id,
                        hostname: n.hostname,
                        agent_version: n.agent_version,
                        ..Default::default()
                    };
                }
                let replica = owners
                    .get(&n.node_id)
                    .map(|(o, _)| o.replica.clone())
                    .unwrap_or_default();
                let live = self.sup.fleet.node(&n.node_id);
                let count = self.sup.fleet.node_session_count(&n.node_id) as u32;
                let cert_not_after_ms = crate::auth::cert_not_after_ms(&n.node_id).unwrap_or(0);
                pb::Node {
                    cert_not_after_ms,
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
                    replica,
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
        let replica = self.sup.replica.get();
        if !node.is_empty() && !self.sup.fleet.knows_node(&node) && replica.is_none() {
            return Err(ApiError::UnknownNode { node }.into());
        }
        let policy = self.sup.policy();
        let mut sessions: Vec<pb::Session> = self
            .sup
            .fleet
            .map_sessions((!node.is_empty()).then_some(node.as_str()), |k, t| {
                session_pb(k, t, &policy)
            });
        // Replicas: the nodes this one does not hold, as the store last recorded them.
        if replica.is_some() {
            let recorded = self.elsewhere(&node).await?;
            if !node.is_empty() && sessions.is_empty() && recorded.is_empty() {
                let nodes = self
                    .sup
                    .store
                    .nodes()
                    .await
                    .map_err(ApiError::store("nodes"))?;
                if !nodes.iter().any(|n| n.node_id == node) {
                    return Err(ApiError::UnknownNode { node }.into());
                }
            }
            sessions.extend(recorded);
        }
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
        let (key, session) = match self.resolve(req.session.as_ref()) {
            Ok(key) => {
                let live = self
                    .sup
                    .fleet
                    .session(&key, |t| session_pb(&key, t, &self.sup.policy()));
                match live {
                    Some(s) => (key, s),
                    None => {
                        self.recorded(&key.node_id, &key.session_name, &key.tmux_socket)
                            .await?
                    }
                }
            }
            Err(ApiError::UnknownNode { .. } | ApiError::UnknownSession { .. }) => {
                let r = req
                    .session
                    .as_ref()
                    .ok_or(ApiError::Missing { field: "session" })?;
                self.recorded(&r.node_id, &r.session_name, &r.tmux_socket)
                    .await?
            }
            Err(e) => return Err(e.into()),
        };
        let limit = page(req.history_limit, 50);
        let h = self
            .sup
            .store
            .history(&key, limit)
            .await
            .map_err(ApiError::store("session history"))?;
        let (checkpoints, handoffs) = self.session_recovery(&key, limit.min(50)).await?;
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
            checkpoints,
            handoffs,
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
        let (meta, _, r) = request.into_parts();
        let node = crate::replica::node_of(r.session.as_ref());
        if let Some(forwarded) = self
            .forward(node, &meta, &r, |mut c, r| async move { c.nudge(r).await })
            .await
        {
            return forwarded;
        }
        Ok(self
            .command(r.session.as_ref(), Action::nudge(&r.text))
            .await?)
    }

    async fn interrupt(
        &self,
        request: Request<pb::SessionRef>,
    ) -> Result<Response<pb::CommandResponse>, Status> {
        let (meta, _, r) = request.into_parts();
        let node = crate::replica::node_of(Some(&r));
        if let Some(forwarded) = self
            .forward(
                node,
                &meta,
                &r,
                |mut c, r| async move { c.interrupt(r).await },
            )
            .await
        {
            return forwarded;
        }
        Ok(self.command(Some(&r), Ok(Action::Interrupt)).await?)
    }

    async fn kill(
        &self,
        request: Request<pb::KillRequest>,
    ) -> Result<Response<pb::CommandResponse>, Status> {
        let (meta, _, r) = request.into_parts();
        let node = crate::replica::node_of(r.session.as_ref());
        if let Some(forwarded) = self
            .forward(node, &meta, &r, |mut c, r| async move { c.kill(r).await })
            .await
        {
            return forwarded;
        }
        Ok(self
            .command(r.session.as_ref(), Action::kill(r.grace_ms))
            .await?)
    }

    async fn restart(
        &self,
        request: Request<pb::RestartRequest>,
    ) -> Result<Response<pb::CommandResponse>, Status> {
        let (meta, _, r) = request.into_parts();
        let node = crate::replica::node_of(r.session.as_ref());
        if let Some(forwarded) = self
            .forward(
                node,
                &meta,
                &r,
                |mut c, r| async move { c.restart(r).await },
            )
            .await
        {
            return forwarded;
        }
        if !r.command.is_empty() {
            crate::auth::require(crate::auth::Role::Admin, "Restart with a command")?;
        }
        // What the live view knows of the session: where it runs, its own restart command,
        // its labels (a session created anew gets them back).
        let (cwd, own_command, labels) = self
            .resolve(r.session.as_ref())
            .ok()
            .and_then(|k| {
                self.sup.fleet.session(&k, |t| {
                    (t.obs.cwd.clone(), t.restart_command(), t.obs.labels.clone())
                })
            })
            .unwrap_or_default();
        let command = if r.command.is_empty() {
            own_command.unwrap_or_default()
        } else {
            r.command
        };
        let action = Action::restart(&command, &cwd).map(|a| match a {
            Action::Restart { command, cwd, .. } => Action::Restart {
                command,
                cwd,
                labels,
                replaces_pane_pid: 0,
            },
            other => other,
        });
        Ok(self.command(r.session.as_ref(), action).await?)
    }

    async fn capture(
        &self,
        request: Request<pb::CaptureRequest>,
    ) -> Result<Response<pb::CommandResponse>, Status> {
        let (meta, _, r) = request.into_parts();
        let node = crate::replica::node_of(r.session.as_ref());
        if let Some(forwarded) = self
            .forward(
                node,
                &meta,
                &r,
                |mut c, r| async move { c.capture(r).await },
            )
            .await
        {
            return forwarded;
        }
        Ok(self
            .command(r.session.as_ref(), Action::capture(r.lines))
            .await?)
    }

    async fn list_incidents(
        &self,
        request: Request<pb::ListIncidentsRequest>,
    ) -> Result<Response<pb::ListIncidentsResponse>, Status> {
        let r = request.into_inner();
        let limit = page(r.limit, 100);
        let rows = self
            .sup
            .store
            .incidents(r.include_closed, limit)
            .await
            .map_err(ApiError::store("incidents"))?;
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
            return Err(ApiError::Missing { field: "id" }.into());
        }
        // An authenticated caller acks as themselves; on plaintext the request says who.
        let by = if let Some(c) = crate::auth::caller().filter(|c| c.via != "insecure") {
            c.name
        } else if r.by.is_empty() {
            "anonymous".to_owned()
        } else {
            r.by.chars().take(128).collect()
        };
        let i = self
            .sup
            .ack_incident(&r.id, &by, argus_shared::time::now_ms())
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?
            .ok_or(ApiError::UnknownIncident { id: r.id })?;
        Ok(Response::new(incident_pb(i)))
    }

    async fn schedule_nudge(
        &self,
        request: Request<pb::ScheduleNudgeRequest>,
    ) -> Result<Response<pb::Alarm>, Status> {
        let (meta, _, r) = request.into_parts();
        let node = crate::replica::node_of(r.session.as_ref());
        if let Some(forwarded) = self
            .forward(node, &meta, &r, |mut c, r| async move {
                c.schedule_nudge(r).await
            })
            .await
        {
            return forwarded;
        }
        let key = self.resolve(r.session.as_ref())?;
        let row = self
            .sup
            .schedule_alarm(
                &key,
                r.in_ms,
                r.at_ms,
                &r.note,
                "admin",
                argus_shared::time::now_ms(),
            )
            .await?;
        Ok(Response::new(crate::alarms::alarm_pb(row)))
    }

    async fn list_alarms(
        &self,
        request: Request<pb::ListAlarmsRequest>,
    ) -> Result<Response<pb::ListAlarmsResponse>, Status> {
        let r = request.into_inner();
        let limit = page(r.limit, 100);
        let rows = self
            .sup
            .list_alarms(&r.node_id, r.include_closed, limit)
            .await?;
        Ok(Response::new(pb::ListAlarmsResponse {
            alarms: rows.into_iter().map(crate::alarms::alarm_pb).collect(),
        }))
    }

    async fn cancel_alarm(
        &self,
        request: Request<pb::CancelAlarmRequest>,
    ) -> Result<Response<pb::Alarm>, Status> {
        let (meta, _, r) = request.into_parts();
        if r.id.is_empty() {
            return Err(ApiError::Missing { field: "id" }.into());
        }
        // Replicas: the replica that owns the alarm's node holds it.
        if self.sup.replica.get().is_some() {
            let stored = self
                .sup
                .store
                .alarm(&r.id)
                .await
                .map_err(ApiError::store("read alarm"))?;
            if let Some(a) = stored
                && let Some(forwarded) = self
                    .forward(&a.session.node_id, &meta, &r, |mut c, r| async move {
                        c.cancel_alarm(r).await
                    })
                    .await
            {
                return forwarded;
            }
        }
        let row = self
            .sup
            .cancel_alarm(&r.id, argus_shared::time::now_ms())
            .await?;
        Ok(Response::new(crate::alarms::alarm_pb(row)))
    }

    async fn take_checkpoint(
        &self,
        request: Request<pb::SessionRef>,
    ) -> Result<Response<pb::CommandResponse>, Status> {
        let (meta, _, r) = request.into_parts();
        let node = crate::replica::node_of(Some(&r));
        if let Some(forwarded) = self
            .forward(node, &meta, &r, |mut c, r| async move {
                c.take_checkpoint(r).await
            })
            .await
        {
            return forwarded;
        }
        Ok(self.command(Some(&r), Ok(Action::Checkpoint)).await?)
    }

    async fn list_checkpoints(
        &self,
        request: Request<pb::ListCheckpointsRequest>,
    ) -> Result<Response<pb::ListCheckpointsResponse>, Status> {
        let r = request.into_inner();
        let limit = page(r.limit, 50);
        let q = crate::store::CheckpointQuery {
            node_id: r.node_id,
            session_name: r.session_name,
            tmux_socket: r.tmux_socket,
        };
        let rows = self
            .sup
            .store
            .checkpoints(&q, limit)
            .await
            .map_err(ApiError::store("checkpoints"))?;
        Ok(Response::new(pb::ListCheckpointsResponse {
            checkpoints: rows
                .into_iter()
                .map(|c| crate::checkpoints::record_pb(c, false))
                .collect(),
        }))
    }

    async fn get_checkpoint(
        &self,
        request: Request<pb::GetCheckpointRequest>,
    ) -> Result<Response<pb::CheckpointRecord>, Status> {
        let r = request.into_inner();
        if r.id.is_empty() {
            return Err(ApiError::Missing { field: "id" }.into());
        }
        let row = self
            .sup
            .store
            .checkpoint(&r.id)
            .await
            .map_err(ApiError::store("checkpoint"))?
            .ok_or(ApiError::UnknownCheckpoint { id: r.id })?;
        Ok(Response::new(crate::checkpoints::record_pb(row, true)))
    }

    async fn list_handoffs(
        &self,
        request: Request<pb::ListHandoffsRequest>,
    ) -> Result<Response<pb::ListHandoffsResponse>, Status> {
        let r = request.into_inner();
        let limit = page(r.limit, 100);
        let q = crate::store::HandoffQuery {
            include_ended: r.include_ended,
            node_id: r.node_id,
            session: None,
        };
        let rows = self
            .sup
            .store
            .handoffs(&q, limit)
            .await
            .map_err(ApiError::store("handoffs"))?;
        Ok(Response::new(pb::ListHandoffsResponse {
            handoffs: rows.into_iter().map(crate::handoff::handoff_pb).collect(),
        }))
    }
}

// === impl AdminApi: replicas ===

impl AdminApi {
    /// Replicas: the sessions of the nodes (`node`, or all when empty) that this replica does not
    /// hold, as the store last recorded them (their owner writes them behind, within a second).
    async fn elsewhere(&self, node: &str) -> Result<Vec<pb::Session>, ApiError> {
        let rows = self
            .sup
            .store
            .last_transitions()
            .await
            .map_err(ApiError::store("recorded sessions"))?;
        Ok(rows
            .into_iter()
            .filter(|t| node.is_empty() || t.session.node_id == node)
            .filter(|t| !self.sup.fleet.knows_node(&t.session.node_id))
            .map(|t| pb::Session {
                node_id: t.session.node_id,
                session_name: t.session.session_name,
                tmux_socket: t.session.tmux_socket,
                state: state_pb(&t.to),
                last_change_ms: t.at_ms,
                reason: format!(
                    "{} (as last recorded by the replica that owns the node)",
                    t.reason
                ),
                ..Default::default()
            })
            .collect())
    }

    /// Replicas: a command (or an alarm) for a node this replica does not link goes to the
    /// replica that owns it, and its answer comes back as the caller's. `None`: run it here.
    async fn forward<M, R, F, Fut>(
        &self,
        node: &str,
        meta: &tonic::metadata::MetadataMap,
        msg: &M,
        call: F,
    ) -> Option<Result<Response<R>, Status>>
    where
        M: Clone,
        F: FnOnce(
            argus_proto::v1::admin_service_client::AdminServiceClient<tonic::transport::Channel>,
            Request<M>,
        ) -> Fut,
        Fut: std::future::Future<Output = Result<Response<R>, Status>>,
    {
        let replica = self.sup.replica.get()?;
        let linked = self.sup.fleet.reachable(node);
        match replica.route(node, linked, meta).await? {
            Ok(client) => Some(call(client, replica.forwarded(msg.clone())).await),
            Err(status) => Some(Err(status)),
        }
    }
}

impl AdminApi {
    /// A session's recent checkpoints (listed form) and handoffs, for its history.
    async fn session_recovery(
        &self,
        key: &SessionRef,
        limit: u32,
    ) -> Result<(Vec<pb::CheckpointRecord>, Vec<pb::Handoff>), ApiError> {
        let q = crate::store::CheckpointQuery {
            node_id: key.node_id.clone(),
            session_name: key.session_name.clone(),
            tmux_socket: key.tmux_socket.clone(),
        };
        let checkpoints = self
            .sup
            .store
            .checkpoints(&q, limit)
            .await
            .map_err(ApiError::store("checkpoints"))?;
        let q = crate::store::HandoffQuery {
            include_ended: true,
            node_id: String::new(),
            session: Some(key.clone()),
        };
        let handoffs = self
            .sup
            .store
            .handoffs(&q, limit)
            .await
            .map_err(ApiError::store("handoffs"))?;
        Ok((
            checkpoints
                .into_iter()
                .map(|c| crate::checkpoints::record_pb(c, false))
                .collect(),
            handoffs
                .into_iter()
                .map(crate::handoff::handoff_pb)
                .collect(),
        ))
    }
}

/// A listing's size: `asked`, or `default` when 0, never over 1000.
fn page(asked: u32, default: u32) -> u32 {
    match asked {
        0 => default,
        n => n.min(1000),
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    fn store_failure(source: sqlx::Error) -> ApiError {
        ApiError::Store {
            what: "incidents",
            source: StoreError::Db {
                op: "read incidents",
                source,
            },
        }
    }

    #[test]
    fn store_failures_are_internal_unless_the_pool_may_recover() {
        let s = Status::from(store_failure(sqlx::Error::RowNotFound));
        assert_eq!(s.code(), Code::Internal);
        // The whole chain is in the message, each cause once.
        assert_eq!(
            s.message(),
            format!(
                "reading the incidents failed: database read incidents failed: {}",
                sqlx::Error::RowNotFound
            )
        );
        // And the error itself travels as the status' source.
        let source = s.source().expect("source kept");
        assert!(source.downcast_ref::<ApiError>().is_some(), "{source:?}");
        let s = Status::from(store_failure(sqlx::Error::PoolTimedOut));
        assert_eq!(s.code(), Code::Unavailable);
    }

    #[test]
    fn dispatch_failures_keep_their_codes() {
        let cases = [
            (DispatchError::UnknownNode("n".into()), Code::NotFound),
            (DispatchError::Disconnected("n".into()), Code::Unavailable),
            (DispatchError::Busy("n".into()), Code::ResourceExhausted),
            (
                DispatchError::Timeout {
                    node: "n".into(),
                    command_id: "c".into(),
                    secs: 1,
                },
                Code::DeadlineExceeded,
            ),
        ];
        for (e, code) in cases {
            let text = e.to_string();
            let s = Status::from(ApiError::from(e));
            assert_eq!(s.code(), code, "{s:?}");
            assert_eq!(s.message(), text);
        }
    }

    #[test]
    fn bad_input_names_the_field_and_keeps_the_cause() {
        let e = ApiError::BadCommand {
            field: command_field(&CommandError::GraceTooLong { grace_ms: 1 }),
            source: CommandError::GraceTooLong { grace_ms: 1 },
        };
        assert!(e.source().is_some());
        let s = Status::from(e);
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(
            s.message().starts_with("invalid grace_ms: kill grace"),
            "{s:?}"
        );
        let s = Status::from(ApiError::AmbiguousSession {
            node: "n1".into(),
            name: "w".into(),
            sockets: vec!["/a".into(), "/b".into()],
        });
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("(/a, /b)"), "{s:?}");
    }
}
