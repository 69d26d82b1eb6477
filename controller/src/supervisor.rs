//! The supervisor ties the pure decision core to the world: it feeds inputs to each session's
//! [`Track`] through [`detect::step`] with the fleet-level [`Ctx`] from correlation, then carries
//! out the effects (record, announce, command, triage, persist). It also owns the periodic tick:
//! node health from heartbeats, time-driven session decisions, incident expiry, policy reload,
//! expiry of unanswered commands.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use argus_shared::command::Action;
use argus_shared::state::SessionState;
use argus_shared::time::UnixMs;
use dashmap::DashMap;
use tokio_util::task::TaskTracker;

use crate::dispatch::{Dispatcher, Origin};
use crate::events::Events;
use crate::fleet::{Fleet, Health};
use crate::notify::Notifier;
use crate::store::{IncidentRow, Recorder, SessionRef, Store, TransitionRow, Write};
use argus_decide::correlate::{Change, Correlator, Incident, provider_scope};
use argus_decide::detect::{self, Ctx, Durable, Effect, Input, Track};
use argus_decide::policy::Policy;

/// The fleet-wide budget of kills and restarts: a token bucket refilled continuously.
#[derive(Debug)]
struct Budget {
    tokens: f64,
    last_ms: UnixMs,
}

impl Budget {
    fn refill(&mut self, now: UnixMs, per_minute: u32) {
        let cap = f64::from(per_minute);
        let elapsed = (now - self.last_ms).max(0) as f64;
        self.tokens = (self.tokens + elapsed * cap / 60_000.0).min(cap);
        self.last_ms = now;
    }
}

/// What the supervisor is built from.
pub struct Parts {
    pub controller_id: String,
    pub store: Arc<dyn Store>,
    pub recorder: Recorder,
    pub policy: Policy,
    pub policy_file: Option<PathBuf>,
    pub recorded: Vec<(SessionRef, SessionState)>,
    pub durables: Vec<(SessionRef, Durable)>,
    pub incidents: Vec<Incident>,
    pub notifier: Notifier,
    pub tasks: TaskTracker,
}

/// Everything the controller's services share.
pub struct Supervisor {
    pub controller_id: String,
    pub fleet: Arc<Fleet>,
    pub dispatch: Dispatcher,
    pub recorder: Recorder,
    pub events: Events,
    pub store: Arc<dyn Store>,
    policy: RwLock<Arc<Policy>>,
    policy_file: Option<PathBuf>,
    policy_mtime: Mutex<Option<SystemTime>>,
    /// Last states recorded before this controller started, consumed as sessions reappear.
    recorded: DashMap<SessionRef, SessionState>,
    durables: DashMap<SessionRef, Durable>,
    correlator: Mutex<Correlator>,
    budget: Mutex<Budget>,
    notifier: Notifier,
    tasks: TaskTracker,
    verdicts: tokio::sync::mpsc::Sender<(SessionRef, argus_decide::escalate::Verdict)>,
    verdicts_rx: tokio::sync::Mutex<
        tokio::sync::mpsc::Receiver<(SessionRef, argus_decide::escalate::Verdict)>,
    >,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Supervisor {
    /// A supervisor over an empty live fleet.
    pub fn new(p: Parts) -> Self {
        let fleet = Arc::new(Fleet::default());
        let events = Events::default();
        let dispatch = Dispatcher::new(
            fleet.clone(),
            p.recorder.clone(),
            events.clone(),
            p.controller_id.clone(),
            p.policy.command_timeout,
        );
        let mut correlator = Correlator::new(format!("inc-{}", p.controller_id));
        correlator.restore(p.incidents);
        let per_minute = f64::from(p.policy.fleet_destructive_per_minute);
        let policy_mtime = p
            .policy_file
            .as_ref()
            .and_then(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok());
        let (verdicts, verdicts_rx) = tokio::sync::mpsc::channel(1024);
        Self {
            verdicts,
            verdicts_rx: tokio::sync::Mutex::new(verdicts_rx),
            controller_id: p.controller_id,
            fleet,
            dispatch,
            recorder: p.recorder,
            events,
            store: p.store,
            policy: RwLock::new(Arc::new(p.policy)),
            policy_file: p.policy_file,
            policy_mtime: Mutex::new(policy_mtime),
            recorded: p.recorded.into_iter().collect(),
            durables: p.durables.into_iter().collect(),
            correlator: Mutex::new(correlator),
            budget: Mutex::new(Budget {
                tokens: per_minute,
                last_ms: argus_shared::time::now_ms(),
            }),
            notifier: p.notifier,
            tasks: p.tasks,
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .map(|p| p.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// The fleet-level context for one session's step.
    fn ctx(&self, node_id: &str, scope: Option<&str>, now: UnixMs, policy: &Policy) -> Ctx {
        let node_up = self
            .fleet
            .nodes
            .get(node_id)
            .is_some_and(|n| n.health == Health::Up && n.link.is_some());
        let (frozen, held, cooldown) = {
            let c = lock(&self.correlator);
            (
                c.frozen(),
                c.host_held(node_id),
                scope.and_then(|s| c.provider_cooldown(s)),
            )
        };
        let budget_left = {
            let mut b = lock(&self.budget);
            b.refill(now, policy.fleet_destructive_per_minute);
            b.tokens >= 1.0
        };
        Ctx {
            destructive_allowed: node_up && !frozen && !held && budget_left,
            provider_cooldown_until: cooldown,
            jitter: rand::random::<f64>(),
        }
    }

    /// Feeds one input to a session and carries out what follows. Inputs other than observations
    /// for sessions the controller does not track are ignored.
    pub async fn apply(self: &Arc<Self>, key: &SessionRef, input: Input, now: UnixMs) {
        let base = self.policy();
        let (effects, scope, durable) = {
            let creates = matches!(input, Input::Observed(_));
            let mut track = match self.fleet.sessions.get_mut(key) {
                Some(t) => t,
                None if creates => {
                    let recorded = self.recorded.remove(key).map(|(_, s)| s);
                    let durable = self.durables.remove(key).map(|(_, d)| d);
                    let mut t = Track::new(now, recorded, durable);
                    if let Some(n) = self.fleet.nodes.get(&key.node_id) {
                        t.probe_ms = n.probe_ms;
                    }
                    self.fleet.sessions.entry(key.clone()).or_insert(t)
                }
                None => return,
            };
            // Labels come with the observation: use the new ones when there are.
            let labels = match &input {
                Input::Observed(o) => &o.labels,
                _ => &track.obs.labels,
            };
            let group = labels.get(argus_shared::labels::GROUP).cloned();
            let scope = provider_scope(
                labels
                    .get(argus_shared::labels::PROVIDER)
                    .map(String::as_str),
                labels
                    .get(argus_shared::labels::ACCOUNT)
                    .map(String::as_str),
            );
            let policy = base.for_group(group.as_deref()).clone();
            let ctx = self.ctx(&key.node_id, scope.as_deref(), now, &policy);
            let effects = detect::step(&mut track, input, now, &policy, &ctx);
            let durable = effects.contains(&Effect::Persist).then(|| {
                (
                    track.durable.clone(),
                    track.durable.rate.as_ref().map(|r| r.until),
                )
            });
            (effects, scope, durable)
        };
        self.carry_out(key, effects, scope, durable, now).await;
    }

    async fn carry_out(
        self: &Arc<Self>,
        key: &SessionRef,
        effects: Vec<Effect>,
        scope: Option<String>,
        durable: Option<(Durable, Option<UnixMs>)>,
        now: UnixMs,
    ) {
        let policy = self.policy();
        let mut changes = Vec::new();
        for effect in effects {
            match effect {
                Effect::Transition { from, to, reason } => {
                    self.events.publish(
                        &key.node_id,
                        &key.session_name,
                        "transition",
                        format!("{} -> {}: {reason}", from.as_str(), to.as_str()),
                        Some(to),
                    );
                    self.recorder
                        .record(Write::Transition(TransitionRow {
                            session: key.clone(),
                            at_ms: now,
                            from: from.as_str().to_owned(),
                            to: to.as_str().to_owned(),
                            reason,
                        }))
                        .await;
                }
                Effect::Notify { kind, message } => {
                    {
                        let mut c = lock(&self.correlator);
                        match (kind, &scope) {
                            ("rate_limited" | "rate_limit_renewed", Some(s)) => {
                                let until = durable.as_ref().and_then(|d| d.1).unwrap_or(now);
                                changes.extend(c.rate_limited(key, s, until, now, &policy));
                            }
                            ("rate_limit_cleared", Some(s)) => {
                                changes.extend(c.rate_cleared(key, s, now))
                            }
                            ("agent_died", _) => changes.extend(c.death(key, now, &policy)),
                            _ => {}
                        }
                    }
                    self.events
                        .publish(&key.node_id, &key.session_name, kind, message, None);
                }
                Effect::Command {
                    action,
                    reason,
                    incarnation,
                } => {
                    if action.is_destructive() {
                        let spent = {
                            let mut b = lock(&self.budget);
                            b.refill(now, policy.fleet_destructive_per_minute);
                            let spent = b.tokens < 1.0;
                            if !spent {
                                b.tokens -= 1.0;
                            }
                            spent
                        };
                        if spent {
                            self.events.publish(
                                &key.node_id,
                                &key.session_name,
                                "command_held",
                                format!("{} not sent: fleet budget of kills and restarts spent ({reason})", action.name()),
                                None,
                            );
                            continue;
                        }
                    }
                    self.send(key, action, incarnation, &reason).await;
                }
                Effect::Triage(case) => {
                    let sup = self.clone();
                    let key = key.clone();
                    let policy = policy.clone();
                    self.tasks.spawn(async move {
                        let screen = sup
                            .dispatch
                            .call(
                                &key,
                                Action::Capture { lines: 40 },
                                None,
                                Origin::Policy,
                                "triage reads the screen",
                            )
                            .await
                            .map(|r| r.output)
                            .unwrap_or_default();
                        let verdict = crate::triage::ask(
                            &policy.triage,
                            policy.triage_timeout,
                            &key.node_id,
                            &key.session_name,
                            &case,
                            &screen,
                        )
                        .await;
                        // Applied by the next tick (a direct call would make apply recursive).
                        if sup.verdicts.send((key, verdict)).await.is_err() {
                            tracing::warn!("triage verdict dropped: controller stopping");
                        }
                    });
                }
                Effect::Persist => {
                    if let Some((d, _)) = &durable
                        && let Ok(data) = serde_json::to_string(d)
                    {
                        self.recorder
                            .record(Write::Durable {
                                session: key.clone(),
                                data,
                                at_ms: now,
                            })
                            .await;
                    }
                }
            }
        }
        self.incident_changes(changes).await;
    }

    async fn send(
        &self,
        key: &SessionRef,
        action: Action,
        incarnation: Option<detect::Incarnation>,
        reason: &str,
    ) {
        let up = self
            .fleet
            .nodes
            .get(&key.node_id)
            .is_some_and(|n| n.health == Health::Up && n.link.is_some());
        if !up {
            self.events.publish(
                &key.node_id,
                &key.session_name,
                "command_held",
                format!("{} not sent: node is not up ({reason})", action.name()),
                None,
            );
            return;
        }
        if let Err(e) = self
            .dispatch
            .send(key, action, incarnation, Origin::Policy, reason)
            .await
        {
            tracing::warn!(node = %key.node_id, session = %key.session_name, error = %e, "policy command not sent");
        }
    }

    /// Records, announces and notifies incident changes.
    async fn incident_changes(&self, changes: Vec<Change>) {
        for change in changes {
            let (kind, i) = match &change {
                Change::Opened(i) => ("incident_opened", i),
                Change::Reminder(i) => ("incident_reminder", i),
                Change::Closed(i) => ("incident_closed", i),
            };
            let node = if i.kind == argus_decide::correlate::IncidentKind::HostSilent
                || i.kind == argus_decide::correlate::IncidentKind::MassDeath
            {
                i.scope.as_str()
            } else {
                ""
            };
            self.events.publish(
                node,
                "",
                kind,
                format!("{} {} [{}]: {}", i.kind.as_str(), i.scope, i.id, i.summary),
                None,
            );
            self.notifier.incident(&change);
            self.recorder.record(Write::Incident(incident_row(i))).await;
        }
    }

    /// A node attached (or came back): it is up.
    pub async fn node_up(&self, node_id: &str, now: UnixMs) {
        let changes = lock(&self.correlator).node_health(node_id, Health::Up, now);
        self.incident_changes(changes).await;
    }

    /// Acknowledges an open incident.
    pub async fn ack_incident(&self, id: &str, by: &str, now: UnixMs) -> Option<IncidentRow> {
        let i = lock(&self.correlator).ack(id, by, now)?;
        let row = incident_row(&i);
        self.recorder.record(Write::Incident(row.clone())).await;
        self.events.publish(
            "",
            "",
            "incident_acked",
            format!("{} acknowledged by {by}", i.id),
            None,
        );
        Some(row)
    }

    /// Reloads the policy file when it changed; a bad file is refused and the old policy stays.
    pub fn reload_policy(&self) {
        let Some(path) = &self.policy_file else {
            return;
        };
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        {
            let mut last = lock(&self.policy_mtime);
            if mtime == *last {
                return;
            }
            *last = mtime;
        }
        match crate::load_policy(Some(path)) {
            Ok(p) => {
                if let Ok(mut cur) = self.policy.write() {
                    *cur = Arc::new(p);
                }
                self.events.publish(
                    "",
                    "",
                    "policy_reloaded",
                    format!("policy reloaded from {}", path.display()),
                    None,
                );
            }
            Err(e) => {
                tracing::error!(
                    error = format!("{e:#}"),
                    "policy file refused; the old policy stays"
                );
                self.events.publish(
                    "",
                    "",
                    "policy_rejected",
                    format!("{e:#}; the old policy stays"),
                    None,
                );
            }
        }
    }

    /// One controller tick: node health, incidents, then time-driven decisions for the sessions
    /// of nodes that are up (a silent node's sessions get no per-session action).
    pub async fn tick(self: &Arc<Self>, now: UnixMs) {
        self.reload_policy();
        let policy = self.policy();
        let suspect = policy.node_suspect_after.as_millis() as i64;
        let down = policy.node_down_after.as_millis() as i64;
        let mut health_changes = Vec::new();
        for mut node in self.fleet.nodes.iter_mut() {
            let silent = now - node.last_seen_ms;
            let health = if silent >= down {
                Health::Down
            } else if silent >= suspect {
                Health::Suspect
            } else {
                Health::Up
            };
            if health != node.health {
                node.health = health;
                health_changes.push((node.node_id.clone(), health, silent));
            }
        }
        let mut changes = Vec::new();
        for (node, health, silent) in health_changes {
            let kind = match health {
                Health::Up => "node_up",
                Health::Suspect => "node_suspect",
                Health::Down => "node_down",
            };
            self.events.publish(
                &node,
                "",
                kind,
                format!("node {} (silent for {} ms)", health.as_str(), silent),
                None,
            );
            changes.extend(lock(&self.correlator).node_health(&node, health, now));
        }
        // Self-suspicion counts the nodes seen within the last 5 minutes: one that has been gone
        // longer is its own incident, not a sign of the controller's network.
        let recent = 300_000;
        let (mut total, mut silent) = (0, 0);
        for n in self.fleet.nodes.iter() {
            if n.health == Health::Up {
                total += 1;
            } else if now - n.last_seen_ms < recent {
                total += 1;
                silent += 1;
            }
        }
        {
            let mut c = lock(&self.correlator);
            changes.extend(c.fleet(total, silent, now, &policy));
            changes.extend(c.tick(now, &policy));
        }
        self.incident_changes(changes).await;

        let verdicts: Vec<_> = {
            let mut rx = self.verdicts_rx.lock().await;
            std::iter::from_fn(|| rx.try_recv().ok()).collect()
        };
        for (key, verdict) in verdicts {
            self.apply(&key, Input::Verdict(verdict), now).await;
        }

        // Only sessions whose time can bring a decision are stepped: dead sessions waiting for a
        // restart, rate-limit cooldowns, ladders in progress, and sessions idle long enough to
        // stall. A busy fleet costs one read per session per tick.
        let up: std::collections::HashSet<String> = self
            .fleet
            .nodes
            .iter()
            .filter(|n| n.health == Health::Up)
            .map(|n| n.node_id.clone())
            .collect();
        let idle_checks = policy
            .groups
            .values()
            .map(|g| g.idle_checks)
            .fold(policy.idle_checks, u32::min);
        let forget = policy.forget_dead_after.as_millis() as i64;
        let mut due = Vec::new();
        let mut forgotten = Vec::new();
        for e in self.fleet.sessions.iter() {
            let (key, t) = (e.key(), e.value());
            if !up.contains(&key.node_id) {
                continue;
            }
            if t.state == SessionState::Dead && !t.restart_wanted && now - t.last_change_ms > forget
            {
                forgotten.push(key.clone());
            } else if detect::needs_tick(t, now, idle_checks) {
                due.push(key.clone());
            }
        }
        for key in forgotten {
            self.fleet.sessions.remove(&key);
        }
        for key in due {
            self.apply(&key, Input::Tick, now).await;
        }
        self.dispatch.expire(now).await;
    }
}

fn incident_row(i: &Incident) -> IncidentRow {
    IncidentRow {
        id: i.id.clone(),
        kind: i.kind.as_str().to_owned(),
        scope: i.scope.clone(),
        opened_ms: i.opened_ms,
        closed_ms: i.closed_ms.unwrap_or(0),
        acked_ms: i.acked_ms.unwrap_or(0),
        acked_by: i.acked_by.clone(),
        summary: i.summary.clone(),
        sessions: i.sessions,
        until_ms: i.until_ms,
    }
}

/// The stored form back as an incident.
pub fn incident_from_row(r: IncidentRow) -> Option<Incident> {
    Some(Incident {
        kind: argus_decide::correlate::IncidentKind::parse(&r.kind)?,
        id: r.id,
        scope: r.scope,
        opened_ms: r.opened_ms,
        closed_ms: (r.closed_ms != 0).then_some(r.closed_ms),
        acked_ms: (r.acked_ms != 0).then_some(r.acked_ms),
        acked_by: r.acked_by,
        summary: r.summary,
        sessions: r.sessions,
        until_ms: r.until_ms,
        notified_ms: r.opened_ms,
    })
}
