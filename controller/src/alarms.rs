//! Durable alarms: a note typed into a session as a nudge when due, at the agent's prompt (the
//! pure decision is `argus_decide::alarm`). Set by an operator (`ScheduleNudge`) or by the agent
//! itself through its node agent's local socket (`LocalRequest`). An alarm is stored before it
//! is acknowledged, so it survives controller and node agent restarts; pending alarms are held
//! in memory, looked at on every tick, and each delivery is an ordinary audited nudge with
//! origin `alarm`.
//!
//! Delivery is at least once: a controller that dies between the nudge and recording it
//! delivered types it again after its restart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use argus_decide::alarm::{self, AlarmError, Decision, Seen, SessionSeen, Timing};
use argus_proto::v1 as pb;
use argus_shared::command::{Action, CommandError};
use argus_shared::time::UnixMs;
use tokio_util::task::TaskTracker;
use tonic::Code;

use crate::dispatch::Origin;
use crate::store::{ALARM_PENDING, AlarmRow, SessionRef, StoreError, Write};
use crate::supervisor::Supervisor;

/// Pending alarms one session may have.
pub const PER_SESSION: usize = 100;
/// Pending alarms the whole fleet may have.
pub const TOTAL: usize = 100_000;
/// How long scheduling or cancelling waits for the store before it is refused (UNAVAILABLE).
const STORE_WAIT: Duration = Duration::from_secs(5);

/// Why an alarm request was refused. Each maps to one gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum AlarmRefused {
    /// The timing or note is invalid.
    #[error(transparent)]
    Invalid(#[from] AlarmError),
    /// The note cannot be typed (control or invisible characters).
    #[error("the note cannot be typed")]
    BadNote(#[source] CommandError),
    /// Too many pending alarms.
    #[error("too many pending alarms ({count}) {scope}; at most {max}")]
    TooMany {
        count: usize,
        max: usize,
        scope: &'static str,
    },
    /// The session is not in the live view.
    #[error("no session {name:?} on node {node:?}")]
    UnknownSession { node: String, name: String },
    /// No alarm has this id.
    #[error("no alarm {id:?}")]
    NotFound { id: String },
    /// The alarm was already delivered or cancelled, or is being delivered.
    #[error("alarm {id:?} is {state}")]
    NotPending { id: String, state: String },
    /// The store did not take or give the alarm.
    #[error("the alarm store failed")]
    Store(#[source] StoreError),
}

impl AlarmRefused {
    /// The gRPC code of this refusal.
    pub fn code(&self) -> Code {
        match self {
            Self::Invalid(_) | Self::BadNote(_) => Code::InvalidArgument,
            Self::TooMany { .. } => Code::ResourceExhausted,
            Self::UnknownSession { .. } | Self::NotFound { .. } => Code::NotFound,
            Self::NotPending { .. } => Code::FailedPrecondition,
            Self::Store(e) => e.code(),
        }
    }
}

impl From<AlarmRefused> for tonic::Status {
    fn from(e: AlarmRefused) -> Self {
        crate::server::status(e.code(), e)
    }
}

/// One pending alarm and what the controller knows of its delivery.
#[derive(Debug, Clone)]
struct Entry {
    row: AlarmRow,
    failures: u32,
    retry_at_ms: UnixMs,
    in_flight: bool,
    /// Why it is held (empty when not due or not held), shown in `ListAlarms`.
    held: String,
}

/// The pending alarms.
pub struct Alarms {
    pending: Mutex<HashMap<String, Entry>>,
    /// When each session last had an alarm delivered (kept for `alarm::SETTLE_MS`).
    delivered: Mutex<HashMap<SessionRef, UnixMs>>,
    tasks: TaskTracker,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Alarms {
    /// No alarms yet; deliveries run on `tasks`.
    pub fn new(tasks: TaskTracker) -> Self {
        Self {
            pending: Mutex::new(HashMap::new()),
            delivered: Mutex::new(HashMap::new()),
            tasks,
        }
    }

    /// Takes back the pending alarms the store holds (at start-up).
    pub fn restore(&self, rows: Vec<AlarmRow>) {
        let mut p = lock(&self.pending);
        for row in rows.into_iter().filter(|r| r.state == ALARM_PENDING) {
            p.insert(row.id.clone(), entry(row));
        }
        if !p.is_empty() {
            tracing::info!(alarms = p.len(), "pending alarms restored from the store");
        }
    }

    /// Replicas: drops the pending alarms of `node_id` held in memory, before the ones the store
    /// has are taken over with the node (another replica may have delivered some meanwhile).
    pub fn forget_node(&self, node_id: &str) {
        lock(&self.pending).retain(|_, e| e.row.session.node_id != node_id);
    }

    /// How many alarms are pending.
    pub fn len(&self) -> usize {
        lock(&self.pending).len()
    }

    /// True when no alarm is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn entry(row: AlarmRow) -> Entry {
    Entry {
        row,
        failures: 0,
        retry_at_ms: 0,
        in_flight: false,
        held: String::new(),
    }
}

/// An alarm as the admin API shows it.
pub fn alarm_pb(a: AlarmRow) -> pb::Alarm {
    let state = match a.state.as_str() {
        ALARM_PENDING => pb::AlarmState::Pending,
        "delivered" => pb::AlarmState::Delivered,
        "cancelled" => pb::AlarmState::Cancelled,
        _ => pb::AlarmState::Unspecified,
    };
    pb::Alarm {
        id: a.id,
        session: Some(pb::SessionRef {
            node_id: a.session.node_id,
            session_name: a.session.session_name,
            tmux_socket: a.session.tmux_socket,
        }),
        note: a.note,
        origin: a.origin,
        created_ms: a.created_ms,
        due_ms: a.due_ms,
        state: state as i32,
        closed_ms: a.closed_ms,
        command_id: a.command_id,
        message: a.message,
    }
}

// === impl Supervisor: alarms ===

impl Supervisor {
    /// Stores a new alarm for `key` (which the caller found in the live view) and answers with
    /// it once stored.
    pub async fn schedule_alarm(
        &self,
        key: &SessionRef,
        in_ms: u64,
        at_ms: i64,
        note: &str,
        origin: &str,
        now: UnixMs,
    ) -> Result<AlarmRow, AlarmRefused> {
        alarm::check_note(note)?;
        Action::nudge(&alarm::nudge_text(note, origin)).map_err(AlarmRefused::BadNote)?;
        let due_ms = alarm::due_time(in_ms, at_ms, now)?;
        {
            let p = lock(&self.alarms.pending);
            if p.len() >= TOTAL {
                return Err(AlarmRefused::TooMany {
                    count: p.len(),
                    max: TOTAL,
                    scope: "in the fleet",
                });
            }
            let count = p.values().filter(|e| &e.row.session == key).count();
            if count >= PER_SESSION {
                return Err(AlarmRefused::TooMany {
                    count,
                    max: PER_SESSION,
                    scope: "for this session",
                });
            }
        }
        // Ids sort in the order alarms were set (a sequence within the millisecond, then a
        // random tail against another controller process in the same millisecond): two alarms
        // due at once are delivered in that order.
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed) & 0xffff;
        let row = AlarmRow {
            id: format!("al-{now:011x}-{seq:04x}{:04x}", rand::random::<u16>()),
            session: key.clone(),
            note: note.to_owned(),
            origin: origin.to_owned(),
            created_ms: now,
            due_ms,
            state: ALARM_PENDING.to_owned(),
            closed_ms: 0,
            command_id: String::new(),
            message: String::new(),
        };
        // Stored before it is acknowledged: an acknowledged alarm is never lost.
        self.write_now(Write::AlarmScheduled(row.clone())).await?;
        lock(&self.alarms.pending).insert(row.id.clone(), entry(row.clone()));
        self.events.publish(
            &key.node_id,
            &key.session_name,
            "alarm_scheduled",
            format!(
                "alarm {} set by {origin}, due in {} s: {note}",
                row.id,
                (due_ms - now).max(0) / 1000
            ),
            None,
        );
        Ok(row)
    }

    /// Cancels a pending alarm.
    pub async fn cancel_alarm(&self, id: &str, now: UnixMs) -> Result<AlarmRow, AlarmRefused> {
        let found = {
            let p = lock(&self.alarms.pending);
            p.get(id).map(|e| (e.in_flight, e.row.clone()))
        };
        let mut row = match found {
            Some((true, _)) => {
                return Err(AlarmRefused::NotPending {
                    id: id.to_owned(),
                    state: "being delivered".into(),
                });
            }
            Some((false, row)) => row,
            None => {
                return Err(match self.store.alarm(id).await {
                    Ok(Some(r)) => AlarmRefused::NotPending {
                        id: id.to_owned(),
                        state: r.state,
                    },
                    Ok(None) => AlarmRefused::NotFound { id: id.to_owned() },
                    Err(e) => AlarmRefused::Store(e),
                });
            }
        };
        let message = "cancelled through the admin API".to_owned();
        self.write_now(Write::AlarmClosed {
            id: id.to_owned(),
            state: "cancelled".into(),
            at_ms: now,
            command_id: String::new(),
            message: message.clone(),
        })
        .await?;
        lock(&self.alarms.pending).remove(id);
        self.events.publish(
            &row.session.node_id,
            &row.session.session_name,
            "alarm_cancelled",
            format!("alarm {id} cancelled"),
            None,
        );
        "cancelled".clone_into(&mut row.state);
        row.closed_ms = now;
        row.message = message;
        Ok(row)
    }

    /// Alarms of `node` (all when empty): pending ones with why each is held, then closed ones
    /// from the store with `include_closed`.
    pub async fn list_alarms(
        &self,
        node: &str,
        include_closed: bool,
        limit: u32,
    ) -> Result<Vec<AlarmRow>, AlarmRefused> {
        let mut rows: Vec<AlarmRow> = lock(&self.alarms.pending)
            .values()
            .filter(|e| node.is_empty() || e.row.session.node_id == node)
            .map(|e| {
                let mut r = e.row.clone();
                if r.message.is_empty() {
                    r.message.clone_from(&e.held);
                }
                r
            })
            .collect();
        if include_closed {
            let stored = self
                .store
                .alarms(true, 10_000)
                .await
                .map_err(AlarmRefused::Store)?;
            rows.extend(stored.into_iter().filter(|r| {
                r.state != ALARM_PENDING && (node.is_empty() || r.session.node_id == node)
            }));
        }
        rows.sort_by(crate::store::alarm_order);
        rows.truncate(limit as usize);
        Ok(rows)
    }

    /// Writes at once, not through the write-behind recorder: the caller answers only once the
    /// write is stored.
    async fn write_now(&self, w: Write) -> Result<(), AlarmRefused> {
        match tokio::time::timeout(STORE_WAIT, self.store.write(&[w])).await {
            Ok(r) => r.map_err(AlarmRefused::Store),
            Err(_) => Err(AlarmRefused::Store(StoreError::Timeout {
                op: "write alarm",
                after: STORE_WAIT,
            })),
        }
    }

    /// What the controller sees of an alarm's node and session.
    fn alarm_seen(&self, key: &SessionRef, sibling_first: bool) -> Seen {
        let node_ready = self
            .fleet
            .node(&key.node_id)
            .is_some_and(|n| n.reachable() && n.synced);
        let session = self.fleet.session(key, |t| SessionSeen {
            state: t.state,
            condition: t.obs.condition,
            attached: t.obs.attached_clients,
            has_agent: t.obs.agent.is_some(),
            observed_ms: t.obs_at_ms.unwrap_or(0),
        });
        Seen {
            node_ready,
            session,
            sibling_first,
            last_delivery_ms: lock(&self.alarms.delivered).get(key).copied(),
        }
    }

    /// Looks at every pending alarm: delivers those due at a prompt, one per session at a time
    /// (the earliest due first), and notes why the others wait.
    pub async fn due_alarms(self: &Arc<Self>, now: UnixMs) {
        lock(&self.alarms.delivered).retain(|_, at| now - *at < alarm::SETTLE_MS);
        let mut due: Vec<(String, SessionRef, Timing)> = lock(&self.alarms.pending)
            .values()
            .filter(|e| e.row.due_ms <= now)
            .map(|e| {
                (
                    e.row.id.clone(),
                    e.row.session.clone(),
                    Timing {
                        due_ms: e.row.due_ms,
                        retry_at_ms: e.retry_at_ms,
                        in_flight: e.in_flight,
                    },
                )
            })
            .collect();
        due.sort_by(|a, b| (a.2.due_ms, &a.0).cmp(&(b.2.due_ms, &b.0)));
        // Sessions with an alarm in flight, then each session's earliest: the others queue.
        let mut first: std::collections::HashSet<SessionRef> = due
            .iter()
            .filter(|(_, _, t)| t.in_flight)
            .map(|(_, k, _)| k.clone())
            .collect();
        for (id, key, timing) in due {
            let sibling_first = !timing.in_flight && !first.insert(key.clone());
            let decision = alarm::decide(&timing, &self.alarm_seen(&key, sibling_first), now);
            let deliver = {
                let mut p = lock(&self.alarms.pending);
                let Some(e) = p.get_mut(&id) else { continue };
                match &decision {
                    Decision::Deliver => {
                        e.in_flight = true;
                        e.held.clear();
                        Some(e.row.clone())
                    }
                    Decision::Held(h) => {
                        let text = h.to_string();
                        if e.held != text && !matches!(h, alarm::Hold::InFlight) {
                            self.events.publish(
                                &key.node_id,
                                &key.session_name,
                                "alarm_held",
                                format!("alarm {id} due, {text}"),
                                None,
                            );
                        }
                        e.held = text;
                        None
                    }
                    Decision::Wait => None,
                }
            };
            if let Some(row) = deliver {
                let sup = self.clone();
                self.alarms
                    .tasks
                    .spawn(async move { sup.deliver(row).await });
            }
        }
    }

    /// Types one alarm into its session as an audited nudge (origin `alarm`) and records the
    /// outcome: delivered, or retried with backoff.
    async fn deliver(self: Arc<Self>, row: AlarmRow) {
        let key = row.session.clone();
        let text = alarm::nudge_text(&row.note, &row.origin);
        let incarnation = self.fleet.session(&key, |t| t.obs.agent).flatten();
        let outcome = match Action::nudge(&text) {
            Ok(action) => self
                .dispatch
                .call(
                    &key,
                    action,
                    incarnation,
                    Origin::Alarm,
                    &format!("alarm {} set by {}", row.id, row.origin),
                )
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let now = argus_shared::time::now_ms();
        match outcome {
            Ok(r) if r.status == pb::CommandStatus::Ok as i32 => {
                self.recorder.record(Write::AlarmClosed {
                    id: row.id.clone(),
                    state: "delivered".into(),
                    at_ms: now,
                    command_id: r.command_id.clone(),
                    message: r.message.clone(),
                });
                lock(&self.alarms.pending).remove(&row.id);
                lock(&self.alarms.delivered).insert(key.clone(), now);
                self.events.publish(
                    &key.node_id,
                    &key.session_name,
                    "alarm_delivered",
                    format!("alarm {} delivered (command {})", row.id, r.command_id),
                    None,
                );
            }
            other => {
                let why = match other {
                    Ok(r) => format!(
                        "{}: {}",
                        pb::CommandStatus::try_from(r.status)
                            .unwrap_or_default()
                            .as_str_name(),
                        r.message
                    ),
                    Err(e) => e,
                };
                let mut p = lock(&self.alarms.pending);
                if let Some(e) = p.get_mut(&row.id) {
                    e.in_flight = false;
                    e.failures += 1;
                    let delay = alarm::retry_delay_ms(e.failures);
                    e.retry_at_ms = now + delay;
                    e.held = format!(
                        "held: delivery failed ({why}); retrying in {} s",
                        delay / 1000
                    );
                }
                drop(p);
                tracing::warn!(alarm = %row.id, node = %key.node_id, session = %key.session_name, error = %why, "alarm not delivered; retrying");
                self.events.publish(
                    &key.node_id,
                    &key.session_name,
                    "alarm_not_delivered",
                    format!("alarm {} not delivered: {why}", row.id),
                    None,
                );
            }
        }
    }

    /// A request an agent made on its node agent's local socket: carried out in the background,
    /// answered on the node's stream.
    pub fn local_request(self: &Arc<Self>, node_id: &str, r: pb::LocalRequest) {
        let sup = self.clone();
        let node_id = node_id.to_owned();
        self.alarms.tasks.spawn(async move {
            let answer = sup.local_answer(&node_id, r).await;
            let link = sup.fleet.node(&node_id).and_then(|n| n.link);
            if let Some(link) = link {
                let msg = pb::ControllerMessage {
                    msg: Some(pb::controller_message::Msg::LocalAnswer(answer)),
                };
                if link.send(Ok(msg)).await.is_err() {
                    tracing::warn!(node = %node_id, "local answer not sent: the stream closed");
                }
            }
        });
    }

    async fn local_answer(&self, node_id: &str, r: pb::LocalRequest) -> pb::LocalAnswer {
        let refuse = |code: Code, message: String| pb::LocalAnswer {
            request_id: r.request_id.clone(),
            code: code as i32,
            message,
            ..Default::default()
        };
        let key = SessionRef {
            node_id: node_id.to_owned(),
            tmux_socket: r.tmux_socket.clone(),
            session_name: r.session_name.clone(),
        };
        let Some(pb::local_request::Action::Schedule(s)) = &r.action else {
            return refuse(Code::Unimplemented, "unknown local request".into());
        };
        if self.fleet.session(&key, |_| ()).is_none() {
            let e = AlarmRefused::UnknownSession {
                node: key.node_id.clone(),
                name: key.session_name.clone(),
            };
            return refuse(e.code(), e.to_string());
        }
        let now = argus_shared::time::now_ms();
        match self
            .schedule_alarm(&key, s.in_ms, s.at_ms, &s.note, "self", now)
            .await
        {
            Ok(row) => {
                tracing::info!(alarm = %row.id, node = %node_id, session = %key.session_name, pid = r.caller_pid, "alarm set from inside its session");
                pb::LocalAnswer {
                    request_id: r.request_id.clone(),
                    code: 0,
                    message: String::new(),
                    alarm_id: row.id,
                    due_ms: row.due_ms,
                }
            }
            Err(e) => {
                let message = match std::error::Error::source(&e) {
                    Some(cause) => format!("{e}: {cause}"),
                    None => e.to_string(),
                };
                refuse(e.code(), message)
            }
        }
    }
}
