//! The session lifecycle and detection, as a pure function: `step(track, input, now, policy)`
//! updates one session's [`Track`] and returns the [`Effect`]s to carry out. No I/O, no clock:
//! tests drive it with a simulated one.
//!
//! Observable state wins over recorded state: a dead pane is dead whatever was recorded, an agent
//! seen running is working again. Idleness needs several signals agreeing (screen unchanged, no
//! agent CPU, not thinking, not waiting for a person) for `idle_checks` probe intervals; any
//! activity returns a stalled session to working and resets its escalation ladder.

use std::collections::BTreeMap;

use argus_shared::command::{Action, shell_command_from_tmux};
use argus_shared::profile::Condition;
use argus_shared::state::SessionState;
use argus_shared::time::UnixMs;

use crate::escalate::{Ladder, Rung};
use crate::policy::{Policy, RestartOnDeath};

/// An agent process's identity: pid and start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Incarnation {
    pub pid: u32,
    pub start_time: u64,
}

/// One validated observation of a session (from the wire's `SessionObservation`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Observation {
    pub pane_id: String,
    pub pane_dead: bool,
    pub exit_status: i32,
    pub agent: Option<Incarnation>,
    pub agent_name: String,
    pub agent_cpu_ms: u64,
    pub screen_hash: String,
    pub condition: Condition,
    pub rate_limit_reset_at: i64,
    pub attached_clients: u32,
    pub start_command: String,
    pub cwd: String,
    pub labels: BTreeMap<String, String>,
    pub profile: String,
}

/// What happened to a session.
#[derive(Debug, Clone)]
pub enum Input {
    /// A fresh observation from its node agent.
    Observed(Box<Observation>),
    /// The agent process exited (pidfd), the pane may live on.
    AgentExited(Incarnation),
    /// The pane's process exited.
    PaneDied,
    /// The tmux session is gone.
    Gone,
    /// An operator killed it: it must not come back by itself.
    KilledByOperator,
    /// Time passed (the controller ticks every session periodically).
    Tick,
}

/// Something to do because of a step.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// The state changed: record and announce it.
    Transition {
        from: SessionState,
        to: SessionState,
        reason: String,
    },
    /// Tell people (event stream, logs, later webhooks).
    Notify { kind: &'static str, message: String },
    /// Send a command to the node agent.
    Command {
        action: Action,
        reason: String,
        incarnation: Option<Incarnation>,
    },
}

/// Everything the controller remembers about one session between steps.
#[derive(Debug, Clone)]
pub struct Track {
    pub state: SessionState,
    pub reason: String,
    pub last_change_ms: UnixMs,
    pub last_activity_ms: UnixMs,
    /// The latest observation, and when it arrived.
    pub obs: Observation,
    pub obs_at_ms: Option<UnixMs>,
    /// An agent process was seen in this session at some point.
    pub had_agent: bool,
    /// The idle ladder.
    pub ladder: Ladder,
    /// "Needs a human" was announced for the current permission prompt.
    pub human_notified: bool,
    /// "Rate limited" was announced for the current episode.
    pub rate_notified: bool,
    /// Times of recent policy restarts (for the backoff).
    pub restarts: Vec<UnixMs>,
    /// A restart is wanted once the backoff allows it.
    pub restart_wanted: bool,
    /// No restart before this time.
    pub restart_not_before: UnixMs,
    /// An operator killed it: no automatic restart.
    pub operator_killed: bool,
    /// The node agent's probe interval (idleness is counted in probe intervals).
    pub probe_ms: i64,
}

impl Track {
    /// A session seen for the first time; `recorded` is the state the store last recorded for
    /// it (after a controller restart), which the first observation will confirm or overrule.
    pub fn new(now: UnixMs, recorded: Option<SessionState>) -> Self {
        Self {
            state: recorded.unwrap_or(SessionState::Booting),
            reason: if recorded.is_some() {
                "recorded before the controller restarted".to_owned()
            } else {
                "first seen".to_owned()
            },
            last_change_ms: now,
            last_activity_ms: now,
            obs: Observation::default(),
            obs_at_ms: None,
            had_agent: false,
            ladder: Ladder::default(),
            human_notified: false,
            rate_notified: false,
            restarts: Vec::new(),
            restart_wanted: false,
            restart_not_before: 0,
            operator_killed: false,
            probe_ms: 1000,
        }
    }

    fn go(&mut self, to: SessionState, reason: String, now: UnixMs, fx: &mut Vec<Effect>) {
        if self.state == to {
            return;
        }
        fx.push(Effect::Transition {
            from: self.state,
            to,
            reason: reason.clone(),
        });
        self.state = to;
        self.reason = reason;
        self.last_change_ms = now;
    }

    /// The command that restarts this session's agent, when one is known.
    pub fn restart_command(&self) -> Option<String> {
        if let Some(l) = self.obs.labels.get("restart").filter(|l| !l.is_empty()) {
            return Some(l.clone());
        }
        let cmd = shell_command_from_tmux(&self.obs.start_command);
        (!cmd.is_empty()).then_some(cmd)
    }
}

/// Advances one session.
pub fn step(t: &mut Track, input: Input, now: UnixMs, policy: &Policy) -> Vec<Effect> {
    let mut fx = Vec::new();
    match input {
        Input::Observed(o) => observe(t, *o, now, policy, &mut fx),
        Input::AgentExited(inc) => {
            if t.obs.agent == Some(inc) && t.state.is_alive() {
                t.go(
                    SessionState::Zombie,
                    format!("agent process {} exited", inc.pid),
                    now,
                    &mut fx,
                );
                death(t, "agent exited", now, policy, &mut fx);
            }
        }
        Input::PaneDied => {
            if t.state != SessionState::Dead && t.state != SessionState::Completed {
                t.go(
                    SessionState::Dead,
                    "pane process exited".into(),
                    now,
                    &mut fx,
                );
                death(t, "pane died", now, policy, &mut fx);
            }
        }
        Input::Gone => {
            if t.state != SessionState::Dead {
                t.go(
                    SessionState::Dead,
                    "tmux session closed".into(),
                    now,
                    &mut fx,
                );
                death(t, "session closed", now, policy, &mut fx);
            }
        }
        Input::KilledByOperator => {
            t.operator_killed = true;
            t.restart_wanted = false;
        }
        Input::Tick => tick(t, now, policy, &mut fx),
    }
    fx
}

fn observe(t: &mut Track, o: Observation, now: UnixMs, policy: &Policy, fx: &mut Vec<Effect>) {
    let first = t.obs_at_ms.is_none();
    let elapsed_ms = t.obs_at_ms.map_or(1, |at| (now - at).max(1) as u64);
    let cpu_delta = o.agent_cpu_ms.saturating_sub(t.obs.agent_cpu_ms);
    let new_agent = o.agent.is_some() && o.agent != t.obs.agent;
    let busy_cpu =
        !first && !new_agent && cpu_delta * 1000 >= policy.cpu_active_ms_per_s * elapsed_ms;
    let screen_moved = !first && o.screen_hash != t.obs.screen_hash;
    let active =
        first || new_agent || screen_moved || busy_cpu || o.condition == Condition::Thinking;
    let prev_condition = t.obs.condition;
    t.obs = o;
    t.obs_at_ms = Some(now);

    if t.obs.pane_dead {
        let status = t.obs.exit_status;
        let (to, reason) = if status == 0 {
            (
                SessionState::Completed,
                "agent exited with status 0".to_owned(),
            )
        } else {
            (
                SessionState::Dead,
                format!("pane process exited with status {status}"),
            )
        };
        if t.state != to {
            let was_alive = t.state.is_alive() || t.state == SessionState::Zombie;
            t.go(to, reason, now, fx);
            if was_alive && to == SessionState::Dead {
                death(t, "pane died", now, policy, fx);
            }
        }
        return;
    }
    let Some(agent) = t.obs.agent else {
        if t.had_agent {
            if t.state.is_alive() {
                t.go(
                    SessionState::Zombie,
                    "agent process gone, pane alive".into(),
                    now,
                    fx,
                );
                death(t, "agent gone", now, policy, fx);
            } else if t.state == SessionState::Dead {
                t.go(
                    SessionState::Zombie,
                    "pane alive again, no agent process".into(),
                    now,
                    fx,
                );
            }
        } else if t.state != SessionState::Booting {
            t.go(
                SessionState::Booting,
                "no agent process in the pane yet".into(),
                now,
                fx,
            );
        }
        return;
    };

    t.had_agent = true;
    if new_agent {
        t.ladder.reset();
        t.restart_wanted = false;
        t.operator_killed = false;
    }
    if active {
        t.last_activity_ms = now;
    }
    match t.state {
        SessionState::Working => {}
        SessionState::Stalled if active => {
            t.ladder.reset();
            t.go(SessionState::Working, "activity resumed".into(), now, fx);
        }
        SessionState::Stalled => {}
        SessionState::Booting => t.go(
            SessionState::Working,
            format!("agent {} running (pid {})", t.obs.agent_name, agent.pid),
            now,
            fx,
        ),
        SessionState::Zombie | SessionState::Dead | SessionState::Completed => t.go(
            SessionState::Working,
            format!(
                "agent {} running again (pid {})",
                t.obs.agent_name, agent.pid
            ),
            now,
            fx,
        ),
    }

    // Conditions that belong to people or providers, not to the idle ladder.
    let cond = t.obs.condition;
    if cond == Condition::WaitingPermission && !t.human_notified {
        t.human_notified = true;
        fx.push(Effect::Notify {
            kind: "needs_human",
            message: "waiting for a permission or confirmation: a person must answer".into(),
        });
    } else if cond != Condition::WaitingPermission {
        t.human_notified = false;
    }
    if cond == Condition::RateLimited && (!t.rate_notified || prev_condition != cond) {
        t.rate_notified = true;
        let when = if t.obs.rate_limit_reset_at > 0 {
            format!("; resets at Unix time {}", t.obs.rate_limit_reset_at)
        } else {
            String::new()
        };
        fx.push(Effect::Notify {
            kind: "rate_limited",
            message: format!("agent reports a rate or usage limit{when}"),
        });
    } else if cond != Condition::RateLimited {
        t.rate_notified = false;
    }
}

/// Time-driven decisions: idleness, the idle ladder, the hard limit, delayed restarts.
fn tick(t: &mut Track, now: UnixMs, policy: &Policy, fx: &mut Vec<Effect>) {
    if t.restart_wanted && !t.state.is_alive() && now >= t.restart_not_before {
        issue_restart(t, "agent died", now, policy, fx);
        return;
    }
    if !t.state.is_alive() || t.obs_at_ms.is_none() || t.obs.agent.is_none() {
        return;
    }
    let cond = t.obs.condition;
    let exempt = matches!(
        cond,
        Condition::Thinking | Condition::WaitingPermission | Condition::RateLimited
    );
    let idle_for = now - t.last_activity_ms;
    let idle_after = policy.idle_checks as i64 * t.probe_ms;
    if t.state == SessionState::Working && !exempt && idle_for >= idle_after {
        t.go(
            SessionState::Stalled,
            format!(
                "idle for {} s: screen unchanged, no agent CPU, not thinking",
                idle_for / 1000
            ),
            now,
            fx,
        );
    }
    if t.state != SessionState::Stalled || exempt {
        return;
    }
    let hard = policy.hard_stall.as_millis() as i64;
    if idle_for >= hard && t.ladder.rung != Rung::Restarted {
        t.ladder.enter(Rung::Restarted, now);
        if t.restart_command().is_some() {
            issue_restart(
                t,
                &format!("unchanged for {} s (hard limit)", idle_for / 1000),
                now,
                policy,
                fx,
            );
        } else {
            fx.push(Effect::Notify {
                kind: "needs_human",
                message: format!(
                    "unchanged for {} s and no restart command known",
                    idle_for / 1000
                ),
            });
        }
        return;
    }
    let dwell = policy.nudge_dwell.as_millis() as i64;
    match t.ladder.rung {
        Rung::Clear => {
            t.ladder.enter(Rung::Warned, now);
            fx.push(Effect::Notify {
                kind: "idle_warning",
                message: format!("idle for {} s", idle_for / 1000),
            });
        }
        Rung::Warned | Rung::Nudged if now - t.ladder.entered_ms >= dwell => {
            if cond != Condition::AtPrompt {
                return;
            }
            if t.obs.attached_clients > 0 {
                if !t.ladder.held_for_human {
                    t.ladder.held_for_human = true;
                    fx.push(Effect::Notify {
                        kind: "nudge_held",
                        message: "idle at its prompt, but a person is attached: no nudge".into(),
                    });
                }
                return;
            }
            let window = policy.nudge_window.as_millis() as i64;
            if t.ladder.nudges_within(now, window) >= policy.nudge_budget as usize {
                return;
            }
            t.ladder.nudged(now);
            fx.push(Effect::Command {
                action: Action::Nudge {
                    text: policy.nudge_text.clone(),
                },
                reason: format!("idle at its prompt for {} s", idle_for / 1000),
                incarnation: t.obs.agent,
            });
        }
        _ => {}
    }
}

/// A death: announce it and, when the policy allows, schedule a restart with backoff.
fn death(t: &mut Track, what: &str, now: UnixMs, policy: &Policy, fx: &mut Vec<Effect>) {
    fx.push(Effect::Notify {
        kind: "agent_died",
        message: format!("{what}: {}", t.reason),
    });
    let allowed = match policy.restart_on_death {
        RestartOnDeath::Never => false,
        RestartOnDeath::Labelled => t.obs.labels.get("restart").is_some_and(|l| !l.is_empty()),
        RestartOnDeath::Always => true,
    };
    if !allowed || t.operator_killed || t.restart_command().is_none() || t.restart_wanted {
        return;
    }
    let window = policy.restart_window.as_millis() as i64;
    t.restarts.retain(|at| now - at < window);
    let min = policy.restart_backoff_min.as_millis() as i64;
    let max = policy.restart_backoff_max.as_millis() as i64;
    let backoff = if t.restarts.is_empty() {
        0
    } else {
        (min << (t.restarts.len() - 1).min(20)).min(max)
    };
    t.restart_wanted = true;
    t.restart_not_before = t
        .restarts
        .last()
        .map_or(now, |last| (last + backoff).max(now));
    if now >= t.restart_not_before {
        issue_restart(t, what, now, policy, fx);
    }
}

fn issue_restart(t: &mut Track, why: &str, now: UnixMs, _policy: &Policy, fx: &mut Vec<Effect>) {
    let Some(command) = t.restart_command() else {
        return;
    };
    t.restart_wanted = false;
    t.restarts.push(now);
    fx.push(Effect::Command {
        action: Action::Restart {
            command,
            cwd: t.obs.cwd.clone(),
        },
        reason: format!("restart: {why}"),
        incarnation: None,
    });
}

#[cfg(test)]
mod tests;
