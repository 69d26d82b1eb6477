//! Commands out to node agents: each gets an id, the node's current epoch, the target's
//! incarnation and a deadline; it is written to the audit log, sent on the stream that owns the
//! node, and its result is matched back to whoever waits for it.
//!
//! Every command is closed: a command with no answer by its deadline (plus a second of slack) is
//! closed in the audit as `unknown` (the node agent may have run it) or, for a capture, which
//! changes nothing, `expired`. Commands a previous controller process left pending are adopted
//! at start-up and closed the same way. A result that arrives after its command was closed is
//! still recorded, over the closing outcome, with a message saying it came late.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use argus_proto::v1 as pb;
use argus_shared::command::Action;
use argus_shared::time::now_ms;
use dashmap::DashMap;
use tokio::sync::oneshot;

use crate::events::Events;
use crate::fleet::Fleet;
use crate::store::{CommandRow, Recorder, SessionRef, Write};
use argus_decide::detect::Incarnation;

/// Why a command could not be sent or answered.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// The node is not known.
    #[error("node {0:?} is not known")]
    UnknownNode(String),
    /// The node's stream is not open.
    #[error("node {0:?} is not connected")]
    Disconnected(String),
    /// The node's stream is congested.
    #[error("node {0:?} has too many commands in flight")]
    Busy(String),
    /// No answer before the deadline.
    #[error("node {node:?} did not answer command {command_id} within {secs} s")]
    Timeout {
        node: String,
        command_id: String,
        secs: u64,
    },
}

impl DispatchError {
    /// The gRPC code a caller waiting for the command gets.
    pub fn code(&self) -> tonic::Code {
        match self {
            Self::UnknownNode(_) => tonic::Code::NotFound,
            Self::Disconnected(_) => tonic::Code::Unavailable,
            Self::Busy(_) => tonic::Code::ResourceExhausted,
            Self::Timeout { .. } => tonic::Code::DeadlineExceeded,
        }
    }
}

impl From<DispatchError> for tonic::Status {
    fn from(e: DispatchError) -> Self {
        crate::server::status(e.code(), e)
    }
}

/// Who decided a command.
#[derive(Debug, Clone, Copy)]
pub enum Origin {
    /// A person or orchestrator through the admin API.
    Admin,
    /// The controller's policy.
    Policy,
    /// A durable alarm that came due (`crate::alarms`).
    Alarm,
}

/// A command whose answer arrived, as it was sent.
#[derive(Debug, Clone)]
pub struct Finished {
    pub command_id: String,
    pub session: SessionRef,
    /// `nudge`, `kill`, `restart`, ...
    pub action: String,
    /// `admin` or `policy`.
    pub origin: String,
    pub reason: String,
    /// When it was sent (Unix ms).
    pub issued_ms: i64,
}

impl Origin {
    /// `admin` or `policy`, as the audit log writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Policy => "policy",
            Self::Alarm => "alarm",
        }
    }
}

/// Sends commands and matches their results.
pub struct Dispatcher {
    fleet: Arc<Fleet>,
    recorder: Recorder,
    events: Events,
    waiting: DashMap<String, Waiting>,
    next_id: AtomicU64,
    prefix: String,
    /// Held from sending a command until its audit row is queued, and while a result is queued:
    /// a result never reaches the recorder before its command (no `.await` while held).
    issuing: Mutex<()>,
    /// How long a command may wait for its node agent (the policy's `command_timeout`, in ms;
    /// a policy reload changes it).
    timeout_ms: AtomicU64,
}

struct Waiting {
    reply: Option<oneshot::Sender<pb::CommandResult>>,
    session: SessionRef,
    action: String,
    /// Who decided it and why (the audit row's `origin` and `reason`).
    origin: String,
    reason: String,
    issued_ms: i64,
    /// The node agent refuses the command after this (Unix ms).
    deadline_ms: i64,
}

/// Slack after a command's deadline for its answer to arrive.
const SLACK_MS: i64 = 1_000;

/// The outcome a command is closed with when no answer came: running a capture changes nothing
/// (`expired`); anything else may have happened (`unknown`).
fn closing_status(action: &str) -> pb::CommandStatus {
    if action == "capture" {
        pb::CommandStatus::Expired
    } else {
        pb::CommandStatus::Unknown
    }
}

impl Dispatcher {
    /// A dispatcher whose command ids start with `prefix` (the controller's id).
    pub fn new(
        fleet: Arc<Fleet>,
        recorder: Recorder,
        events: Events,
        prefix: String,
        timeout: Duration,
    ) -> Self {
        Self {
            fleet,
            recorder,
            events,
            waiting: DashMap::new(),
            next_id: AtomicU64::new(1),
            issuing: Mutex::new(()),
            prefix,
            timeout_ms: AtomicU64::new(timeout.as_millis() as u64),
        }
    }

    /// The reloaded policy's `command_timeout`, for the commands sent from now on.
    pub fn set_timeout(&self, timeout: Duration) {
        self.timeout_ms
            .store(timeout.as_millis() as u64, Ordering::Relaxed);
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.load(Ordering::Relaxed))
    }

    /// Sends `action` to a session's node; returns the command id and a receiver for the result.
    pub async fn send(
        &self,
        session: &SessionRef,
        action: Action,
        incarnation: Option<Incarnation>,
        origin: Origin,
        reason: &str,
    ) -> Result<(String, oneshot::Receiver<pb::CommandResult>), DispatchError> {
        self.send_running(session, action, incarnation, origin, reason, Duration::ZERO)
            .await
    }

    /// Sends a command that runs for up to `runs` once started (a quality gate): the node must
    /// start it by the usual deadline, and its answer is awaited `runs` longer before the
    /// command is closed as unknown.
    pub async fn call_running(
        &self,
        session: &SessionRef,
        action: Action,
        origin: Origin,
        reason: &str,
        runs: Duration,
    ) -> Result<pb::CommandResult, DispatchError> {
        let (id, rx) = self
            .send_running(session, action, None, origin, reason, runs)
            .await?;
        let wait = self.timeout() + runs + Duration::from_secs(1);
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(result)) => Ok(result),
            _ => {
                self.close(&id, now_ms()).await;
                Err(DispatchError::Timeout {
                    node: session.node_id.clone(),
                    command_id: id,
                    secs: wait.as_secs(),
                })
            }
        }
    }

    async fn send_running(
        &self,
        session: &SessionRef,
        action: Action,
        incarnation: Option<Incarnation>,
        origin: Origin,
        reason: &str,
        runs: Duration,
    ) -> Result<(String, oneshot::Receiver<pb::CommandResult>), DispatchError> {
        let (link, epoch) = {
            let node = self.fleet.node(&session.node_id).ok_or_else(|| {
                // Known from the store but not attached since this controller started.
                if self.fleet.knows_node(&session.node_id) {
                    DispatchError::Disconnected(session.node_id.clone())
                } else {
                    DispatchError::UnknownNode(session.node_id.clone())
                }
            })?;
            let link = node
                .link
                .clone()
                .ok_or_else(|| DispatchError::Disconnected(session.node_id.clone()))?;
            (link, node.epoch)
        };
        let seq = self.next_id.fetch_add(1, Ordering::Relaxed);
        let command_id = format!("{}-{seq}", self.prefix);
        let now = now_ms();
        let name = action.name();
        let deadline_ms = now + self.timeout().as_millis() as i64;
        let cmd = pb::Command {
            command_id: command_id.clone(),
            epoch,
            tmux_socket: session.tmux_socket.clone(),
            session_name: session.session_name.clone(),
            incarnation: incarnation.map(|i| pb::Incarnation {
                pid: i.pid,
                start_time: i.start_time,
            }),
            not_after_ms: deadline_ms,
            at_rest: !matches!(origin, Origin::Admin) && matches!(action, Action::Nudge { .. }),
            action: Some(action.into()),
        };
        let (tx, rx) = oneshot::channel();
        self.waiting.insert(
            command_id.clone(),
            Waiting {
                reply: Some(tx),
                session: session.clone(),
                action: name.to_owned(),
                origin: origin.as_str().to_owned(),
                reason: reason.to_owned(),
                issued_ms: now,
                deadline_ms: deadline_ms + runs.as_millis() as i64,
            },
        );
        let msg = pb::ControllerMessage {
            msg: Some(pb::controller_message::Msg::Command(cmd)),
        };
        // The command's audit row is queued before its result can be: the node may answer
        // before this function returns, and a result recorded first would find no row.
        let issuing = self.issuing.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = link.try_send(Ok(msg)) {
            self.waiting.remove(&command_id);
            return Err(match e {
                tokio::sync::mpsc::error::TrySendError::Full(_) => {
                    DispatchError::Busy(session.node_id.clone())
                }
                tokio::sync::mpsc::error::TrySendError::Closed(_) => {
                    DispatchError::Disconnected(session.node_id.clone())
                }
            });
        }
        self.recorder.record(Write::CommandIssued(CommandRow {
            command_id: command_id.clone(),
            session: session.clone(),
            epoch,
            action: name.to_owned(),
            origin: origin.as_str().to_owned(),
            reason: reason.to_owned(),
            issued_at_ms: now,
            status: pb::CommandStatus::Unspecified.as_str_name().to_owned(),
            result_message: String::new(),
            finished_at_ms: 0,
        }));
        drop(issuing);
        crate::metrics::command_sent(name, origin.as_str());
        tracing::info!(node = %session.node_id, session = %session.session_name, command = %command_id, action = name, origin = origin.as_str(), reason, "command sent");
        self.events.publish(
            &session.node_id,
            &session.session_name,
            "command",
            format!("{name} ({}): {reason}", origin.as_str()),
            None,
        );
        Ok((command_id, rx))
    }

    /// Sends and waits for the node's answer (until the deadline plus a little slack).
    pub async fn call(
        &self,
        session: &SessionRef,
        action: Action,
        incarnation: Option<Incarnation>,
        origin: Origin,
        reason: &str,
    ) -> Result<pb::CommandResult, DispatchError> {
        let (id, rx) = self
            .send(session, action, incarnation, origin, reason)
            .await?;
        let wait = self.timeout() + Duration::from_secs(1);
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(result)) => Ok(result),
            _ => {
                // Past its deadline: closed now, so that the audit says what the caller saw.
                self.close(&id, now_ms()).await;
                Err(DispatchError::Timeout {
                    node: session.node_id.clone(),
                    command_id: id,
                    secs: wait.as_secs(),
                })
            }
        }
    }

    /// A result arrived from `node_id`: record it and wake whoever waits. Returns the command
    /// as it was sent, when it was waiting for this answer.
    pub async fn complete(&self, node_id: &str, result: pb::CommandResult) -> Option<Finished> {
        let Some((_, mut w)) = self.waiting.remove(&result.command_id) else {
            self.late(node_id, result).await;
            return None;
        };
        if w.session.node_id != node_id {
            tracing::warn!(node = %node_id, command = %result.command_id, "result from a node the command was not sent to; ignored");
            self.waiting.insert(result.command_id.clone(), w);
            return None;
        }
        let status =
            pb::CommandStatus::try_from(result.status).unwrap_or(pb::CommandStatus::Unspecified);
        let now = now_ms();
        tracing::info!(node = %node_id, command = %result.command_id, status = status.as_str_name(), took_ms = now - w.issued_ms, "command result");
        crate::metrics::command_closed(
            &w.action,
            status.as_str_name(),
            Some(Duration::from_millis((now - w.issued_ms).max(0) as u64)),
        );
        self.events.publish(
            node_id,
            &w.session.session_name,
            "command_result",
            format!("{} {}: {}", w.action, status.as_str_name(), result.message),
            None,
        );
        let issued = self.issuing.lock().unwrap_or_else(PoisonError::into_inner);
        self.recorder.record(Write::CommandFinished {
            command_id: result.command_id.clone(),
            status: status.as_str_name().to_owned(),
            message: result.message.clone(),
            at_ms: now,
        });
        drop(issued);
        let finished = Finished {
            command_id: result.command_id.clone(),
            session: w.session.clone(),
            action: std::mem::take(&mut w.action),
            origin: std::mem::take(&mut w.origin),
            reason: std::mem::take(&mut w.reason),
            issued_ms: w.issued_ms,
        };
        if let Some(reply) = w.reply.take() {
            let _ = reply.send(result);
        }
        Some(finished)
    }
}

impl Dispatcher {
    /// Commands waiting for their answer.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// True while command `id` waits for its answer.
    pub fn waiting_for(&self, id: &str) -> bool {
        self.waiting.contains_key(id)
    }

    /// Takes over the commands a previous controller process left pending: each is closed
    /// when its deadline (by the current `command_timeout`) has passed, at the next
    /// [`Self::expire`], and an answer that still comes is matched as usual.
    pub fn adopt(&self, pending: Vec<CommandRow>) {
        let timeout = self.timeout().as_millis() as i64;
        if !pending.is_empty() {
            tracing::info!(
                commands = pending.len(),
                "pending commands of a previous controller process adopted; closed at their deadline"
            );
        }
        for c in pending {
            self.waiting.insert(
                c.command_id,
                Waiting {
                    reply: None,
                    session: c.session,
                    action: c.action,
                    origin: c.origin,
                    reason: c.reason,
                    issued_ms: c.issued_at_ms,
                    deadline_ms: c.issued_at_ms + timeout,
                },
            );
        }
    }

    /// Closes every command still unanswered a second after its deadline (called from the
    /// controller's tick).
    pub async fn expire(&self, now: i64) {
        let stale: Vec<String> = self
            .waiting
            .iter()
            .filter(|w| now > w.deadline_ms + SLACK_MS)
            .map(|w| w.key().clone())
            .collect();
        for id in stale {
            self.close(&id, now).await;
        }
    }

    /// Closes one unanswered command in the audit with its closing outcome.
    async fn close(&self, id: &str, now: i64) {
        let Some((_, w)) = self.waiting.remove(id) else {
            return;
        };
        let status = closing_status(&w.action);
        let message = if status == pb::CommandStatus::Unknown {
            "no answer from the node agent by the deadline; it may have run the command"
        } else {
            "no answer from the node agent by the deadline"
        };
        tracing::warn!(node = %w.session.node_id, session = %w.session.session_name, command = %id, action = %w.action, status = status.as_str_name(), "command closed without an answer");
        crate::metrics::command_closed(&w.action, status.as_str_name(), None);
        self.events.publish(
            &w.session.node_id,
            &w.session.session_name,
            "command_closed",
            format!("{} {}: {message}", w.action, status.as_str_name()),
            None,
        );
        self.recorder.record(Write::CommandFinished {
            command_id: id.to_owned(),
            status: status.as_str_name().to_owned(),
            message: message.to_owned(),
            at_ms: now,
        });
    }

    /// A result for a command that is not waiting: closed already, or sent by a previous
    /// controller process. Recorded over the closing outcome when the audit has the command for
    /// this node (the store checks), never dropped silently.
    async fn late(&self, node_id: &str, result: pb::CommandResult) {
        let status =
            pb::CommandStatus::try_from(result.status).unwrap_or(pb::CommandStatus::Unspecified);
        tracing::warn!(node = %node_id, command = %result.command_id, status = status.as_str_name(), "late result recorded");
        self.events.publish(
            node_id,
            "",
            "command_result_late",
            format!(
                "{} {} (late): {}",
                result.command_id,
                status.as_str_name(),
                result.message
            ),
            None,
        );
        self.recorder.record(Write::CommandLate {
            command_id: result.command_id,
            node_id: node_id.to_owned(),
            status: status.as_str_name().to_owned(),
            message: result.message,
            at_ms: now_ms(),
        });
    }
}
