//! Handoffs: every restart done is a handoff from the old agent incarnation to the new one, with
//! its reason (crash, stall, rate limit, operator, quality gate) and the checkpoint taken before
//! it. Once the new agent shows its prompt, it gets one resume message built from the checkpoint
//! (the policy's `[handoff]` template, per profile and group); the handoff completes when the new
//! agent then shows activity.
//!
//! A new agent that dies or stalls before that is restarted by the decision core under its usual
//! rules (backoff, crash loops, the restart budget): the restart continues the same handoff (one
//! more `restarts`, the original checkpoint), so the work is handed over once, whatever it takes.
//! A resume message that is not delivered is sent again, up to `resume_attempts`; then the
//! handoff fails. A handoff not ready or not active within the policy's timeouts is announced
//! (`handoff_stuck`) and stays listed (`argusctl handoffs`) until it completes or fails.
//!
//! Handoffs are stored on every change: after a controller restart, the incomplete ones are read
//! back ([`restore`]) and finished by the controller's tick. A resume message that may have been
//! sent just before the restart is not sent again: the handoff waits for activity instead.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use argus_decide::handoff::{HandoffReason, ResumeFacts};
use argus_proto::v1 as pb;
use argus_shared::command::Action;
use argus_shared::ids::Incarnation;
use argus_shared::profile::Condition;
use argus_shared::time::UnixMs;
use tokio::sync::oneshot;

use crate::dispatch::{Finished, Origin};
use crate::store::{HandoffQuery, HandoffRow, SessionRef, Store, StoreError, Write};
use crate::supervisor::Supervisor;

/// Time between two resume messages to one agent (the first was not delivered, or not sent).
const RESUME_RETRY_MS: i64 = 3_000;
/// How long the new agent must have shown nothing new at its prompt before the resume message
/// is typed: a prompt seen a moment ago may already be a busy agent (the probe lags behind).
const RESUME_QUIET_MS: i64 = 2_000;

/// Handoff states.
pub const WAITING: &str = "waiting";
pub const RESUMED: &str = "resumed";
pub const COMPLETED: &str = "completed";
pub const FAILED: &str = "failed";

/// The open handoffs, one per session at most.
pub struct Handoffs {
    open: Mutex<HashMap<SessionRef, Open>>,
    next: AtomicU64,
    prefix: String,
}

/// One open handoff as the controller follows it.
struct Open {
    row: HandoffRow,
    /// The checkpoint taken before the restart (the first one of the handoff).
    checkpoint: Option<pb::Checkpoint>,
    /// The resume message in flight: its answer.
    pending: Option<oneshot::Receiver<pb::CommandResult>>,
    /// `handoff_stuck` was announced for the current state.
    stuck_told: bool,
    /// When the session was last seen missing from the live view.
    missing_since: Option<UnixMs>,
    /// No resume message before this (after one that was not delivered).
    retry_at: UnixMs,
}

/// An open handoff read back from the store, with its checkpoint.
pub struct Restored {
    pub row: HandoffRow,
    pub checkpoint: Option<pb::Checkpoint>,
}

/// Reads the open handoffs back from the store, with their checkpoints: the controller's tick
/// then finishes them.
pub async fn restore(store: &dyn Store) -> Result<Vec<Restored>, StoreError> {
    restore_node(store, "").await
}

/// The open handoffs of `node_id` (every node's when empty), with their checkpoints.
pub async fn restore_node(store: &dyn Store, node_id: &str) -> Result<Vec<Restored>, StoreError> {
    let q = HandoffQuery {
        node_id: node_id.to_owned(),
        ..HandoffQuery::default()
    };
    let rows = store.handoffs(&q, 10_000).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let checkpoint = if row.checkpoint_id.is_empty() {
            None
        } else {
            store
                .checkpoint(&row.checkpoint_id)
                .await?
                .and_then(|c| crate::checkpoints::decode(&c))
        };
        out.push(Restored { row, checkpoint });
    }
    if !out.is_empty() {
        tracing::info!(
            handoffs = out.len(),
            "incomplete handoffs restored from the store; the tick finishes them"
        );
    }
    Ok(out)
}

/// A restored handoff, open again.
fn reopen(r: Restored) -> (SessionRef, Open) {
    let mut row = r.row;
    // A resume message sent just before the controller stopped may have arrived: do not send a
    // second one, wait for activity.
    if row.state == WAITING && !row.resume_command_id.is_empty() {
        row.state = RESUMED.to_owned();
        row.resumed_ms = argus_shared::time::now_ms();
        row.message =
            "resume message sent before the controller restarted; waiting for activity".into();
    }
    (
        row.session.clone(),
        Open {
            row,
            checkpoint: r.checkpoint,
            pending: None,
            stuck_told: false,
            missing_since: None,
            retry_at: 0,
        },
    )
}

impl Handoffs {
    /// The open handoffs of `restored`; new ids start with `prefix` (the controller's id).
    pub fn new(prefix: &str, restored: Vec<Restored>) -> Self {
        Self {
            open: Mutex::new(restored.into_iter().map(reopen).collect()),
            next: AtomicU64::new(1),
            prefix: prefix.to_owned(),
        }
    }

    /// Replicas: `node_id` was taken over; its open handoffs are the store's (`restored`), not
    /// what this replica held before another one owned the node.
    pub fn take_over(&self, node_id: &str, restored: Vec<Restored>) {
        let mut open = self.lock();
        open.retain(|k, _| k.node_id != node_id);
        open.extend(restored.into_iter().map(reopen));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionRef, Open>> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The sessions with an open handoff.
    fn sessions(&self) -> Vec<SessionRef> {
        self.lock().keys().cloned().collect()
    }

    /// How many handoffs are open.
    pub fn open_count(&self) -> usize {
        self.lock().len()
    }
}

/// What the tick reads of a session.
struct View {
    agent: Option<Incarnation>,
    alive: bool,
    condition: Condition,
    last_activity_ms: UnixMs,
    attached: u32,
    profile: String,
    agent_name: String,
    cwd: String,
    group: Option<String>,
    task: Option<String>,
    /// The policy may type into it (an agent; see `Track::agent_evidence`).
    acts: bool,
}

/// What one step of a handoff leaves to do outside the lock.
enum Todo {
    Record(HandoffRow, Option<(&'static str, String)>),
    Resume {
        row: HandoffRow,
        text: String,
        agent: Incarnation,
    },
}

fn is(row_pid: u32, row_start: u64, a: &Incarnation) -> bool {
    row_pid == a.pid && row_start == a.start_time
}

impl Supervisor {
    /// A restart was done: a new handoff, or one more restart of the session's open one.
    pub(crate) fn handoff_restarted(
        &self,
        done: &Finished,
        checkpoint: Option<pb::Checkpoint>,
        now: UnixMs,
    ) {
        let reason = HandoffReason::classify(&done.origin, &done.reason);
        let from = checkpoint
            .as_ref()
            .and_then(|c| c.agent)
            .map(|a| Incarnation {
                pid: a.pid,
                start_time: a.start_time,
            })
            .or_else(|| self.fleet.session(&done.session, |t| t.obs.agent).flatten());
        let (row, event) = {
            let mut open = self.handoffs.lock();
            match open.get_mut(&done.session) {
                Some(h) => {
                    // The new agent died or stalled before the handoff completed: the same work
                    // is handed over again, from the original checkpoint.
                    h.row.restarts += 1;
                    h.row.state = WAITING.to_owned();
                    if let Some(a) = from {
                        (h.row.from_pid, h.row.from_start) = (a.pid, a.start_time);
                    }
                    (h.row.to_pid, h.row.to_start) = (0, 0);
                    h.row.resume_attempts = 0;
                    h.row.resume_command_id.clear();
                    h.row.restart_command_id.clone_from(&done.command_id);
                    h.row.message = format!(
                        "restarted again ({}) before the handoff completed: {}",
                        reason.as_str(),
                        done.reason
                    );
                    h.pending = None;
                    h.stuck_told = false;
                    if h.checkpoint.is_none() {
                        h.checkpoint = checkpoint;
                        if let Some(c) = &h.checkpoint {
                            h.row.checkpoint_id.clone_from(&c.id);
                        }
                    }
                    let row = h.row.clone();
                    let msg = format!(
                        "{} restart {} of handoff {}",
                        reason.as_str(),
                        row.restarts,
                        row.id
                    );
                    (row, ("handoff_retried", msg))
                }
                None => {
                    let seq = self.handoffs.next.fetch_add(1, Ordering::Relaxed);
                    let row = HandoffRow {
                        id: format!("ho-{}-{seq}", self.handoffs.prefix),
                        session: done.session.clone(),
                        reason: reason.as_str().to_owned(),
                        detail: done.reason.clone(),
                        checkpoint_id: checkpoint
                            .as_ref()
                            .map(|c| c.id.clone())
                            .unwrap_or_default(),
                        restart_command_id: done.command_id.clone(),
                        from_pid: from.map_or(0, |a| a.pid),
                        from_start: from.map_or(0, |a| a.start_time),
                        to_pid: 0,
                        to_start: 0,
                        state: WAITING.to_owned(),
                        started_ms: now,
                        resumed_ms: 0,
                        ended_ms: 0,
                        restarts: 1,
                        resume_attempts: 0,
                        resume_command_id: String::new(),
                        message: "waiting for the new agent's prompt".to_owned(),
                    };
                    open.insert(
                        done.session.clone(),
                        Open {
                            row: row.clone(),
                            checkpoint,
                            pending: None,
                            stuck_told: false,
                            missing_since: None,
                            retry_at: 0,
                        },
                    );
                    let msg = format!(
                        "{} ({}), checkpoint {}",
                        row.id,
                        row.reason,
                        if row.checkpoint_id.is_empty() {
                            "none"
                        } else {
                            &row.checkpoint_id
                        }
                    );
                    (row, ("handoff_started", msg))
                }
            }
        };
        self.handoff_record(row, Some((event.0, event.1)));
    }

    /// A kill was done: the session's open handoff ends (failed: nothing will take the work).
    pub(crate) fn handoff_ended_by_kill(&self, session: &SessionRef, now: UnixMs) {
        let row = self.handoffs.lock().remove(session).map(|mut h| {
            h.row.state = FAILED.to_owned();
            h.row.ended_ms = now;
            h.row.message = "the session was killed".to_owned();
            h.row
        });
        if let Some(row) = row {
            let msg = format!("{}: the session was killed", row.id);
            self.handoff_record(row, Some(("handoff_failed", msg)));
        }
    }

    /// Stores a handoff and announces the change.
    fn handoff_record(&self, row: HandoffRow, event: Option<(&'static str, String)>) {
        if let Some((kind, message)) = event {
            self.events.publish(
                &row.session.node_id,
                &row.session.session_name,
                kind,
                message,
                None,
            );
        }
        self.recorder.record(Write::Handoff(row));
    }

    /// Advances every open handoff (called from the controller's tick).
    pub async fn handoff_tick(self: &Arc<Self>, now: UnixMs) {
        for key in self.handoffs.sessions() {
            let todo = self.handoff_step(&key, now);
            match todo {
                None => {}
                Some(Todo::Record(row, event)) => self.handoff_record(row, event),
                Some(Todo::Resume { row, text, agent }) => {
                    self.send_resume(&key, row, text, agent).await;
                }
            }
        }
    }

    /// One step of the open handoff of `key`, under its lock: no I/O.
    fn handoff_step(&self, key: &SessionRef, now: UnixMs) -> Option<Todo> {
        let policy = self.policy();
        let view = self.fleet.session(key, |t| View {
            acts: t
                .agent_evidence(
                    &key.session_name,
                    policy.for_group(t.obs.label(argus_shared::labels::GROUP)),
                )
                .is_some(),
            agent: t.obs.agent,
            alive: t.state.is_alive(),
            condition: t.obs.condition,
            last_activity_ms: t.last_activity_ms,
            attached: t.obs.attached_clients,
            profile: t.obs.profile.clone(),
            agent_name: t.obs.agent_name.clone(),
            cwd: t.obs.cwd.clone(),
            group: t.obs.label(argus_shared::labels::GROUP).map(str::to_owned),
            task: t
                .obs
                .label(argus_node_agent::checkpoint::TASK)
                .map(str::to_owned),
        });
        let probe_ms = self.fleet.probe_ms(&key.node_id).unwrap_or(1000);
        let mut open = self.handoffs.lock();
        let h = open.get_mut(key)?;
        let Some(view) = view else {
            // Not in the live view: its node is gone for good, or it ended long ago.
            let since = *h.missing_since.get_or_insert(now);
            if now - since < policy.forget_dead_after.as_millis() as i64 {
                return None;
            }
            let mut row = open.remove(key)?.row;
            row.state = FAILED.to_owned();
            row.ended_ms = now;
            row.message = "the session left the live view".to_owned();
            let msg = format!("{}: the session left the live view", row.id);
            return Some(Todo::Record(row, Some(("handoff_failed", msg))));
        };
        h.missing_since = None;
        let hp = &policy.for_group(view.group.as_deref()).handoff;

        // The answer to a resume message in flight.
        if let Some(rx) = &mut h.pending {
            let answer = match rx.try_recv() {
                Ok(r) => Some(r),
                Err(oneshot::error::TryRecvError::Empty) => return None,
                Err(oneshot::error::TryRecvError::Closed) => None,
            };
            h.pending = None;
            let delivered = answer.as_ref().is_some_and(|r| {
                r.status == pb::CommandStatus::Ok as i32
                    && r.delivery != pb::Delivery::NotDelivered as i32
            });
            if delivered {
                h.row.state = RESUMED.to_owned();
                h.row.resumed_ms = now;
                h.row.message = "resume message delivered; waiting for activity".to_owned();
                h.stuck_told = false;
                let msg = format!("{}: resume message delivered", h.row.id);
                return Some(Todo::Record(h.row.clone(), Some(("handoff_resumed", msg))));
            }
            let why = answer.map_or_else(
                || "no answer".to_owned(),
                |r| {
                    format!(
                        "{}: {}",
                        pb::CommandStatus::try_from(r.status).map_or("?", |s| s.as_str_name()),
                        r.message
                    )
                },
            );
            if h.row.resume_attempts >= hp.resume_attempts {
                let mut row = open.remove(key)?.row;
                row.state = FAILED.to_owned();
                row.ended_ms = now;
                row.message = format!(
                    "the resume message was not delivered in {} attempts (last: {why})",
                    row.resume_attempts
                );
                let msg = format!("{}: {}", row.id, row.message);
                return Some(Todo::Record(row, Some(("handoff_failed", msg))));
            }
            h.row.message =
                format!("resume message not delivered ({why}); sent again at the next prompt");
            h.retry_at = now + RESUME_RETRY_MS;
            return Some(Todo::Record(h.row.clone(), None));
        }

        let new_agent = view
            .agent
            .filter(|a| view.alive && !is(h.row.from_pid, h.row.from_start, a));
        let mut changed = false;
        if let Some(a) = new_agent
            && !is(h.row.to_pid, h.row.to_start, &a)
        {
            (h.row.to_pid, h.row.to_start) = (a.pid, a.start_time);
            changed = true;
        }
        let stuck_after = |ms: std::time::Duration| ms.as_millis() as i64;
        match h.row.state.as_str() {
            WAITING => {
                if let Some(a) = new_agent {
                    if !hp.resume || !view.acts {
                        h.row.state = RESUMED.to_owned();
                        h.row.resumed_ms = now;
                        h.row.message = if view.acts {
                            "new agent running (no resume message: handoff.resume is off)"
                        } else {
                            "new process running (not known to be an agent: no resume message)"
                        }
                        .to_owned();
                        return Some(Todo::Record(h.row.clone(), None));
                    }
                    if h.row.resume_attempts >= hp.resume_attempts {
                        let mut row = open.remove(key)?.row;
                        row.state = FAILED.to_owned();
                        row.ended_ms = now;
                        row.message = format!(
                            "the resume message could not be sent in {} attempts",
                            row.resume_attempts
                        );
                        let msg = format!("{}: {}", row.id, row.message);
                        return Some(Todo::Record(row, Some(("handoff_failed", msg))));
                    }
                    if view.condition == Condition::AtPrompt
                        && view.attached == 0
                        && now - view.last_activity_ms >= RESUME_QUIET_MS
                        && now >= h.retry_at
                    {
                        h.row.resume_attempts += 1;
                        h.retry_at = now + RESUME_RETRY_MS;
                        let text =
                            hp.render(&view.profile, &facts(&h.row, h.checkpoint.as_ref(), &view));
                        return Some(Todo::Resume {
                            row: h.row.clone(),
                            text,
                            agent: a,
                        });
                    }
                }
                if !h.stuck_told && now - h.row.started_ms >= stuck_after(hp.ready_timeout) {
                    h.stuck_told = true;
                    let msg = format!(
                        "{}: the new agent did not show its prompt within {} s",
                        h.row.id,
                        hp.ready_timeout.as_secs()
                    );
                    return Some(Todo::Record(h.row.clone(), Some(("handoff_stuck", msg))));
                }
            }
            RESUMED => {
                // Activity after the resume message settled (its own echo is not activity).
                let settle = (2 * probe_ms).max(1000);
                let active = new_agent.is_some()
                    && (view.condition == Condition::Thinking
                        || view.last_activity_ms >= h.row.resumed_ms + settle);
                if active {
                    let mut row = open.remove(key)?.row;
                    row.state = COMPLETED.to_owned();
                    row.ended_ms = now;
                    row.message = "the new agent is working".to_owned();
                    let msg = format!(
                        "{} completed in {} s",
                        row.id,
                        (now - row.started_ms) / 1000
                    );
                    return Some(Todo::Record(row, Some(("handoff_completed", msg))));
                }
                if !h.stuck_told && now - h.row.resumed_ms >= stuck_after(hp.activity_timeout) {
                    h.stuck_told = true;
                    let msg = format!(
                        "{}: no activity within {} s of the resume message",
                        h.row.id,
                        hp.activity_timeout.as_secs()
                    );
                    return Some(Todo::Record(h.row.clone(), Some(("handoff_stuck", msg))));
                }
            }
            _ => {}
        }
        changed.then(|| Todo::Record(h.row.clone(), None))
    }

    /// Sends the resume message; its answer is read by a later tick.
    async fn send_resume(
        &self,
        key: &SessionRef,
        mut row: HandoffRow,
        text: String,
        agent: Incarnation,
    ) {
        let reason = format!(
            "handoff {}: resume message from checkpoint {}",
            row.id,
            if row.checkpoint_id.is_empty() {
                "(none)"
            } else {
                &row.checkpoint_id
            }
        );
        let sent = self
            .dispatch
            .send(
                key,
                Action::Nudge { text },
                Some(agent),
                Origin::Policy,
                &reason,
            )
            .await;
        let mut open = self.handoffs.lock();
        let Some(h) = open.get_mut(key) else {
            return;
        };
        match sent {
            Ok((id, rx)) => {
                h.pending = Some(rx);
                h.row.resume_command_id = id;
                h.row.resume_attempts = row.resume_attempts;
                h.row.message = "resume message sent".to_owned();
                row = h.row.clone();
            }
            Err(e) => {
                // Not sent (the node dropped): another try at the next prompt, within the limit.
                h.row.message = format!("resume message not sent: {e}");
                row = h.row.clone();
            }
        }
        drop(open);
        self.handoff_record(row, None);
    }
}

/// What the resume message is made of: the checkpoint, else what the controller knows.
fn facts(row: &HandoffRow, c: Option<&pb::Checkpoint>, view: &View) -> ResumeFacts {
    let git = c.and_then(|c| c.git.as_ref());
    ResumeFacts {
        reason: row.reason.replace('_', " "),
        session: row.session.session_name.clone(),
        agent: c
            .map(|c| c.agent_name.clone())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| view.agent_name.clone()),
        cwd: c
            .map(|c| c.cwd.clone())
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| view.cwd.clone()),
        task: c
            .and_then(|c| c.labels.get(argus_node_agent::checkpoint::TASK).cloned())
            .or_else(|| view.task.clone()),
        git: git.is_some(),
        branch: git.map(|g| g.branch.clone()).unwrap_or_default(),
        head: git.map(|g| g.head.clone()).unwrap_or_default(),
        subject: git.map(|g| g.head_subject.clone()).unwrap_or_default(),
        files: git
            .map(|g| {
                g.files
                    .iter()
                    .map(|f| (f.path.clone(), f.status.clone()))
                    .collect()
            })
            .unwrap_or_default(),
        files_total: git.map_or(0, |g| g.files_total as usize),
        saved_ref: git.map(|g| g.saved_ref.clone()).unwrap_or_default(),
        checkpoint: row.checkpoint_id.clone(),
        screen: c.map(|c| c.screen.clone()).unwrap_or_default(),
    }
}

/// The stored form as the API's message.
pub fn handoff_pb(r: HandoffRow) -> pb::Handoff {
    let inc = |pid: u32, start: u64| {
        (pid != 0).then_some(pb::Incarnation {
            pid,
            start_time: start,
        })
    };
    pb::Handoff {
        id: r.id,
        node_id: r.session.node_id,
        session_name: r.session.session_name,
        tmux_socket: r.session.tmux_socket,
        reason: r.reason,
        detail: r.detail,
        checkpoint_id: r.checkpoint_id,
        restart_command_id: r.restart_command_id,
        from: inc(r.from_pid, r.from_start),
        to: inc(r.to_pid, r.to_start),
        state: r.state,
        started_ms: r.started_ms,
        resumed_ms: r.resumed_ms,
        ended_ms: r.ended_ms,
        restarts: r.restarts,
        resume_attempts: r.resume_attempts,
        resume_command_id: r.resume_command_id,
        message: r.message,
    }
}
