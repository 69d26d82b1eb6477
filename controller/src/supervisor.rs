//! The supervisor ties the pure decision core to the world: it feeds inputs to each session's
//! [`Track`] through [`detect::step`], then carries out the effects (record, announce, command).
//! It also owns the periodic tick: node health from heartbeats, time-driven session decisions,
//! expiry of unanswered commands.

use std::sync::{Arc, RwLock};

use argus_shared::state::SessionState;
use argus_shared::time::UnixMs;
use dashmap::DashMap;

use crate::detect::{self, Effect, Input, Track};
use crate::dispatch::{Dispatcher, Origin};
use crate::events::Events;
use crate::fleet::{Fleet, Health};
use crate::policy::Policy;
use crate::store::{Recorder, SessionRef, Store, TransitionRow, Write};

/// Everything the controller's services share.
pub struct Supervisor {
    pub controller_id: String,
    pub fleet: Arc<Fleet>,
    pub dispatch: Dispatcher,
    pub recorder: Recorder,
    pub events: Events,
    pub store: Arc<dyn Store>,
    policy: RwLock<Arc<Policy>>,
    /// Last states recorded before this controller started, consumed as sessions reappear.
    recorded: DashMap<SessionRef, SessionState>,
}

impl Supervisor {
    /// A supervisor over an empty live fleet; `recorded` are the states the store remembers.
    pub fn new(
        controller_id: String,
        store: Arc<dyn Store>,
        recorder: Recorder,
        policy: Policy,
        recorded: Vec<(SessionRef, SessionState)>,
    ) -> Self {
        let fleet = Arc::new(Fleet::default());
        let events = Events::default();
        let dispatch = Dispatcher::new(
            fleet.clone(),
            recorder.clone(),
            events.clone(),
            controller_id.clone(),
            policy.command_timeout,
        );
        Self {
            controller_id,
            fleet,
            dispatch,
            recorder,
            events,
            store,
            policy: RwLock::new(Arc::new(policy)),
            recorded: recorded.into_iter().collect(),
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .map(|p| p.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// Feeds one input to a session and carries out what follows. Inputs other than observations
    /// for sessions the controller does not track are ignored.
    pub async fn apply(&self, key: &SessionRef, input: Input, now: UnixMs) {
        let policy = self.policy();
        let effects = {
            let creates = matches!(input, Input::Observed(_));
            let mut track = match self.fleet.sessions.get_mut(key) {
                Some(t) => t,
                None if creates => {
                    let recorded = self.recorded.remove(key).map(|(_, s)| s);
                    let mut t = Track::new(now, recorded);
                    if let Some(n) = self.fleet.nodes.get(&key.node_id) {
                        t.probe_ms = n.probe_ms;
                    }
                    self.fleet.sessions.entry(key.clone()).or_insert(t)
                }
                None => return,
            };
            detect::step(&mut track, input, now, &policy)
        };
        self.carry_out(key, effects, now).await;
    }

    async fn carry_out(&self, key: &SessionRef, effects: Vec<Effect>, now: UnixMs) {
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
                    self.events
                        .publish(&key.node_id, &key.session_name, kind, message, None);
                }
                Effect::Command {
                    action,
                    reason,
                    incarnation,
                } => {
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
                        continue;
                    }
                    if let Err(e) = self
                        .dispatch
                        .send(key, action, incarnation, Origin::Policy, &reason)
                        .await
                    {
                        tracing::warn!(node = %key.node_id, session = %key.session_name, error = %e, "policy command not sent");
                    }
                }
            }
        }
    }

    /// One controller tick: node health, then time-driven decisions for the sessions of nodes
    /// that are up (a silent node's sessions get no per-session action).
    pub async fn tick(&self, now: UnixMs) {
        let policy = self.policy();
        let suspect = policy.node_suspect_after.as_millis() as i64;
        let down = policy.node_down_after.as_millis() as i64;
        let mut changes = Vec::new();
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
                changes.push((node.node_id.clone(), health, silent));
            }
        }
        for (node, health, silent) in changes {
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
        }

        let keys: Vec<SessionRef> = self
            .fleet
            .sessions
            .iter()
            .map(|e| e.key().clone())
            .collect();
        let forget = policy.forget_dead_after.as_millis() as i64;
        for key in keys {
            let node_up = self
                .fleet
                .nodes
                .get(&key.node_id)
                .is_some_and(|n| n.health == Health::Up);
            if !node_up {
                continue;
            }
            let forgettable = self.fleet.sessions.get(&key).is_some_and(|t| {
                t.state == SessionState::Dead
                    && !t.restart_wanted
                    && now - t.last_change_ms > forget
            });
            if forgettable {
                self.fleet.sessions.remove(&key);
                continue;
            }
            self.apply(&key, Input::Tick, now).await;
        }
        self.dispatch.expire(now).await;
    }
}
