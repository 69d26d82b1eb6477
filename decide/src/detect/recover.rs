//! Reconciliation after a controller restart. A session is rebuilt from what the store kept:
//! its last recorded state and when it was entered, and its [`Durable`] state, which includes
//! what the controller last knew of it ([`Remembered`]: had an agent, labels, start command,
//! agent incarnation, a restart still wanted, an operator's kill). The node agent's first
//! snapshot after attach is then an ordinary input to [`super::step`]:
//!
//! - recorded alive (an agent was running) and now a dead pane, a pane without its agent, or no
//!   session at all: a death, restarted under the usual backoff and crash-loop rules when the
//!   policy restarts it (a `@argus-restart` label, or agent evidence under `always`);
//! - a restart that was due when the controller stopped is carried out at the first tick the
//!   node is up;
//! - an operator's kill is never undone, whatever happened in between;
//! - a session recorded as ended stays ended (listed as dead, with its history) until it is
//!   forgotten by the retention rule.
//!
//! Nothing here acts on doubt: without remembered evidence (a store written by an older
//! controller), a session that vanished is recorded dead and announced, never restarted.

use std::collections::BTreeMap;

use argus_shared::state::SessionState;
use argus_shared::time::UnixMs;
use serde::{Deserialize, Serialize};

use super::{Durable, Incarnation, Track};

/// What the controller last knew of a session, kept in its [`Durable`] state so that a death
/// during a controller outage can be judged (and restarted) from the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Remembered {
    /// An agent process was seen in the session.
    pub had_agent: bool,
    /// The agent process last seen (pid, start time), if any.
    pub agent: Option<(u32, u64)>,
    /// The agent profile the node agent read the screen with.
    pub profile: String,
    /// The session's `@argus-*` labels.
    pub labels: BTreeMap<String, String>,
    /// The pane's start command (as tmux reports it).
    pub start_command: String,
    /// The pane's working directory.
    pub cwd: String,
    /// A restart was wanted (waiting for its backoff or the gate) when this was written.
    pub restart_wanted: bool,
    /// An operator killed it: it must not come back by itself.
    pub operator_killed: bool,
    /// A restart was sent (Unix ms) and no agent has been seen since: if the session is still
    /// without one after a controller restart, that restart brought none back.
    pub restart_sent: Option<UnixMs>,
}

impl Remembered {
    /// What `t` shows now.
    fn of(t: &Track) -> Self {
        Self {
            had_agent: t.had_agent,
            agent: t.obs.agent.map(|a| (a.pid, a.start_time)),
            profile: t.obs.profile.clone(),
            labels: t.obs.labels.clone(),
            start_command: t.obs.start_command.clone(),
            cwd: t.obs.cwd.clone(),
            restart_wanted: t.restart_wanted,
            operator_killed: t.operator_killed,
            restart_sent: t.restart_sent_ms,
        }
    }

    /// True when `self` is what `t` shows (compared in place: this runs after every step).
    fn is_of(&self, t: &Track) -> bool {
        self.had_agent == t.had_agent
            && self.agent == t.obs.agent.map(|a| (a.pid, a.start_time))
            && self.restart_wanted == t.restart_wanted
            && self.operator_killed == t.operator_killed
            && self.restart_sent == t.restart_sent_ms
            && self.profile == t.obs.profile
            && self.start_command == t.obs.start_command
            && self.cwd == t.obs.cwd
            && self.labels == t.obs.labels
    }
}

/// Keeps `t.durable.remembered` up to date after a step (a change is persisted with the rest of
/// the durable state).
pub(super) fn remember(t: &mut Track) {
    if !t.durable.remembered.is_of(t) {
        t.durable.remembered = Remembered::of(t);
    }
}

impl Track {
    /// A session as the store left it: `state` recorded at `changed_ms`, with its durable state.
    /// The node agent's next observation (or its absence from the first full snapshot) decides
    /// what happened while the controller was away.
    pub fn recovered(
        now: UnixMs,
        state: SessionState,
        changed_ms: UnixMs,
        durable: Option<Durable>,
    ) -> Self {
        let mut t = Self::new(now, Some(state), durable);
        let r = t.durable.remembered.clone();
        // Working or stalled (or a zombie) is only ever entered with an agent seen.
        t.had_agent = r.had_agent
            || matches!(
                state,
                SessionState::Working | SessionState::Stalled | SessionState::Zombie
            );
        t.obs.agent = r
            .agent
            .map(|(pid, start_time)| Incarnation { pid, start_time });
        t.obs.profile = r.profile;
        t.obs.labels = r.labels;
        t.obs.start_command = r.start_command;
        t.obs.cwd = r.cwd;
        t.operator_killed = r.operator_killed;
        t.restart_wanted = r.restart_wanted && !state.is_alive() && !r.operator_killed;
        // A restart the previous controller sent, with no agent seen since: its agent may have
        // died before anyone looked (the node's first snapshot then shows nothing new). It gets
        // the full time to show its agent from now, then counts as lost and is sent again.
        if r.restart_sent.is_some() && !state.is_alive() && !t.restart_wanted && !r.operator_killed
        {
            t.restart_sent_ms = Some(now);
        }
        t.last_change_ms = changed_ms.min(now);
        t.resumed = true;
        t
    }

    /// True when this session ended (dead or completed) and nothing will bring it back by
    /// itself: it may be forgotten from the live view after the retention time.
    pub fn ended(&self) -> bool {
        matches!(self.state, SessionState::Dead | SessionState::Completed) && !self.restart_wanted
    }
}

#[cfg(test)]
mod tests {
    use argus_shared::command::Action;
    use argus_shared::labels;
    use argus_shared::profile::Condition;

    use super::*;
    use crate::detect::{Ctx, Effect, Input, Observation, step};
    use crate::policy::Policy;

    const INC: Incarnation = Incarnation {
        pid: 100,
        start_time: 7,
    };

    fn obs(restart_label: bool) -> Observation {
        let mut o = Observation {
            pane_id: "%1".into(),
            agent: Some(INC),
            agent_name: "claude".into(),
            profile: "claude".into(),
            screen_hash: "a".into(),
            start_command: "claude".into(),
            cwd: "/work".into(),
            exit_status: -1,
            ..Default::default()
        };
        if restart_label {
            o.labels
                .insert(labels::RESTART.to_owned(), "claude --continue".into());
        }
        o
    }

    fn seen(o: Observation) -> Input {
        Input::Observed(Box::new(o))
    }

    fn restarts(fx: &[Effect]) -> Vec<String> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Command {
                    action: Action::Restart { command, .. },
                    ..
                } => Some(command.clone()),
                _ => None,
            })
            .collect()
    }

    /// A session stepped by the previous controller, then its durable state through JSON, as the
    /// store keeps it, and a new controller's track from it.
    fn restarted(before: &[Input], now: UnixMs) -> Track {
        let p = Policy::default();
        let mut t = Track::new(0, None, None);
        let mut at = 0;
        for i in before {
            step(&mut t, i.clone(), at, &p, &Ctx::default());
            at += 1000;
        }
        let json = serde_json::to_string(&t.durable).expect("json");
        let durable: Durable = serde_json::from_str(&json).expect("parse");
        Track::recovered(now, t.state, t.last_change_ms, Some(durable))
    }

    /// Runs ticks every 500 ms for 15 s, collecting effects: shorter than a restart's time to
    /// show its agent (2 x command_timeout), after which a restart that brought none back is
    /// sent again.
    fn ticks(t: &mut Track, from: UnixMs) -> Vec<Effect> {
        let p = Policy::default();
        (0..30)
            .flat_map(|i| step(t, Input::Tick, from + i * 500, &p, &Ctx::default()).effects)
            .collect()
    }

    /// An idle agent the previous controller had judged stalled: the new one's first sight of
    /// it is a baseline, not activity (no false `activity resumed`, then a stall again within
    /// a second).
    #[test]
    fn a_restored_stalled_session_stays_stalled_at_its_first_snapshot() {
        let p = Policy::default();
        let o = obs(false);
        let mut t = restarted(
            &[
                seen(o.clone()),
                seen(o.clone()),
                seen(o.clone()),
                seen(o.clone()),
                Input::Tick,
            ],
            100_000,
        );
        assert_eq!(t.state, SessionState::Stalled);
        let fx = step(&mut t, seen(o.clone()), 100_500, &p, &Ctx::default()).effects;
        assert_eq!(t.state, SessionState::Stalled, "{fx:?}");
        assert!(
            !fx.iter().any(|e| matches!(e, Effect::Transition { .. })),
            "{fx:?}"
        );
        // A real change of the screen afterwards is activity.
        let mut moved = o;
        moved.screen_hash = "b".into();
        step(&mut t, seen(moved), 101_500, &p, &Ctx::default());
        assert_eq!(t.state, SessionState::Working);
    }

    /// An idle agent restored as `working` (its last recorded state long ago): idle counts from
    /// its first sight after the takeover, and it is not judged stalled before the usual number
    /// of quiet probes from then.
    #[test]
    fn a_restored_working_session_counts_idle_from_the_takeover() {
        let p = Policy::default();
        let o = obs(false);
        // Recorded working at 1 s; the new controller takes it over at 100 s and its node's
        // first snapshot comes at 102 s.
        let mut t = restarted(&[seen(o.clone())], 100_000);
        assert_eq!(t.state, SessionState::Working);
        let idle_after = i64::from(p.idle_checks) * t.probe_ms;
        let mut at = 102_000;
        let mut stalled = None;
        while at <= 102_000 + 2 * idle_after {
            let fx = step(&mut t, seen(o.clone()), at, &p, &Ctx::default()).effects;
            let fx2 = step(&mut t, Input::Tick, at, &p, &Ctx::default()).effects;
            if stalled.is_none() && t.state == SessionState::Stalled {
                stalled = Some((at, t.reason.clone(), fx, fx2));
            }
            at += t.probe_ms;
        }
        let (when, reason, ..) = stalled.expect("stalled in the end");
        assert!(when >= 102_000 + idle_after, "stalled at {when}: {reason}");
        assert!(
            reason.contains(&format!("idle for {} s", idle_after / 1000)),
            "{reason}"
        );
    }

    #[test]
    fn agent_gone_during_the_outage_is_a_death_and_restarted() {
        let p = Policy::default();
        let mut t = restarted(&[seen(obs(true))], 60_000);
        assert_eq!(t.state, SessionState::Working);
        // The first snapshot: the pane lives on with a shell, no agent.
        let mut o = obs(true);
        o.agent = None;
        let mut fx = step(&mut t, seen(o), 60_000, &p, &Ctx::default()).effects;
        assert_eq!(t.state, SessionState::Zombie, "not booting: {fx:?}");
        fx.extend(ticks(&mut t, 60_500));
        assert_eq!(restarts(&fx), ["claude --continue"], "{fx:?}");
    }

    #[test]
    fn session_vanished_during_the_outage_is_restarted_from_what_was_remembered() {
        let p = Policy::default();
        let mut t = restarted(&[seen(obs(true))], 60_000);
        let mut fx = step(&mut t, Input::Gone, 60_000, &p, &Ctx::default()).effects;
        assert_eq!(t.state, SessionState::Dead);
        fx.extend(ticks(&mut t, 60_500));
        let restart = fx.iter().find_map(|e| match e {
            Effect::Command {
                action: Action::Restart { cwd, labels, .. },
                ..
            } => Some((cwd.clone(), labels.clone())),
            _ => None,
        });
        let (cwd, labels) = restart.expect("a restart");
        assert_eq!(cwd, "/work");
        assert!(labels.contains_key(labels::RESTART), "{labels:?}");
    }

    #[test]
    fn a_restart_whose_agent_died_unseen_during_the_outage_is_sent_again() {
        let p = Policy::default();
        // The previous controller saw the death and sent the restart; its agent started and
        // died again while the controller was down, so it was never seen.
        let mut t = Track::new(0, None, None);
        step(&mut t, seen(obs(true)), 0, &p, &Ctx::default());
        let mut sent = step(&mut t, Input::Gone, 1_000, &p, &Ctx::default()).effects;
        for i in 0..4 {
            sent.extend(step(&mut t, Input::Tick, 1_500 + i * 500, &p, &Ctx::default()).effects);
        }
        assert_eq!(restarts(&sent).len(), 1, "{sent:?}");
        let json = serde_json::to_string(&t.durable).expect("json");
        let durable: Durable = serde_json::from_str(&json).expect("parse");
        let mut t = Track::recovered(120_000, t.state, t.last_change_ms, Some(durable));
        assert_eq!(t.state, SessionState::Dead);
        // The node's first snapshot: the session is not there.
        let mut fx = step(&mut t, Input::Gone, 120_000, &p, &Ctx::default()).effects;
        fx.extend(ticks(&mut t, 120_500));
        assert!(
            restarts(&fx).is_empty(),
            "sent again before its time: {fx:?}"
        );
        let confirm = 2 * p.command_timeout.as_millis() as i64;
        fx.extend(step(&mut t, Input::Tick, 120_000 + confirm, &p, &Ctx::default()).effects);
        fx.extend(ticks(&mut t, 120_500 + confirm));
        assert_eq!(restarts(&fx), ["claude --continue"], "{fx:?}");
    }

    #[test]
    fn dead_pane_found_after_the_outage_is_restarted_once() {
        let p = Policy::default();
        let mut t = restarted(&[seen(obs(true))], 60_000);
        let mut o = obs(true);
        o.pane_dead = true;
        o.exit_status = 1;
        let mut fx = step(&mut t, seen(o.clone()), 60_000, &p, &Ctx::default()).effects;
        fx.extend(step(&mut t, seen(o), 60_100, &p, &Ctx::default()).effects);
        fx.extend(ticks(&mut t, 60_500));
        assert_eq!(restarts(&fx).len(), 1, "{fx:?}");
    }

    #[test]
    fn without_a_restart_label_or_evidence_nothing_is_restarted() {
        let p = Policy::default();
        // Labelled policy, no label: announced dead, never restarted.
        let mut t = restarted(&[seen(obs(false))], 60_000);
        let mut fx = step(&mut t, Input::Gone, 60_000, &p, &Ctx::default()).effects;
        fx.extend(ticks(&mut t, 60_500));
        assert!(restarts(&fx).is_empty(), "{fx:?}");
        assert_eq!(t.state, SessionState::Dead);
        // A store from an older controller: a working session with nothing remembered.
        let mut t = Track::recovered(60_000, SessionState::Working, 1_000, None);
        let mut fx = step(&mut t, Input::Gone, 60_000, &p, &Ctx::default()).effects;
        fx.extend(ticks(&mut t, 60_500));
        assert!(restarts(&fx).is_empty(), "{fx:?}");
    }

    #[test]
    fn an_operators_kill_is_not_undone_across_a_restart() {
        let p = Policy::default();
        let mut t = restarted(&[seen(obs(true)), Input::KilledByOperator], 60_000);
        // The kill was under way: the same agent is still there, then the session goes.
        step(&mut t, seen(obs(true)), 60_000, &p, &Ctx::default());
        let mut fx = step(&mut t, Input::Gone, 60_100, &p, &Ctx::default()).effects;
        fx.extend(ticks(&mut t, 60_500));
        assert!(restarts(&fx).is_empty(), "{fx:?}");
    }

    #[test]
    fn a_restart_that_was_due_is_carried_out() {
        let p = Policy {
            restart_backoff_min: std::time::Duration::from_secs(30),
            ..Policy::default()
        };
        // The previous controller saw the death and waited for the backoff when it stopped.
        let mut t = Track::new(0, None, None);
        step(&mut t, seen(obs(true)), 0, &p, &Ctx::default());
        let fx = step(&mut t, Input::Gone, 1_000, &p, &Ctx::default()).effects;
        assert!(restarts(&fx).is_empty());
        assert!(t.restart_wanted);
        let durable: Durable =
            serde_json::from_str(&serde_json::to_string(&t.durable).expect("json")).expect("parse");
        let mut t = Track::recovered(90_000, t.state, t.last_change_ms, Some(durable));
        assert!(!t.ended(), "a wanted restart keeps it in view");
        let fx = ticks(&mut t, 90_000);
        assert_eq!(restarts(&fx).len(), 1, "{fx:?}");
    }

    #[test]
    fn an_agent_that_came_back_during_the_outage_is_working() {
        let p = Policy::default();
        let mut t = restarted(&[seen(obs(true)), Input::Gone], 60_000);
        assert_eq!(t.state, SessionState::Dead);
        let mut o = obs(true);
        o.agent = Some(Incarnation {
            pid: 200,
            start_time: 9,
        });
        o.condition = Condition::None;
        let mut fx = step(&mut t, seen(o), 60_000, &p, &Ctx::default()).effects;
        assert_eq!(t.state, SessionState::Working);
        fx.extend(ticks(&mut t, 60_500));
        assert!(restarts(&fx).is_empty(), "{fx:?}");
    }

    #[test]
    fn a_booting_session_never_seen_with_an_agent_is_not_a_death() {
        let p = Policy::default();
        let mut o = obs(true);
        o.agent = None;
        let mut t = restarted(&[seen(o.clone())], 60_000);
        assert_eq!(t.state, SessionState::Booting);
        let fx = step(&mut t, seen(o), 60_000, &p, &Ctx::default()).effects;
        assert_eq!(t.state, SessionState::Booting, "{fx:?}");
    }
}
