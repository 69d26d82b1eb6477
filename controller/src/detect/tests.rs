//! The decision core on a simulated clock.

use std::collections::BTreeMap;

use argus_shared::command::Action;
use argus_shared::profile::Condition;
use argus_shared::state::SessionState;
use proptest::prelude::*;

use super::*;
use crate::policy::{Policy, RestartOnDeath};

const INC: Incarnation = Incarnation {
    pid: 100,
    start_time: 7,
};

fn obs(hash: &str, cpu: u64, condition: Condition) -> Observation {
    Observation {
        pane_id: "%1".into(),
        agent: Some(INC),
        agent_name: "claude".into(),
        agent_cpu_ms: cpu,
        screen_hash: hash.into(),
        condition,
        start_command: "\"claude --resume\"".into(),
        exit_status: -1,
        ..Default::default()
    }
}

fn seen(o: Observation) -> Input {
    Input::Observed(Box::new(o))
}

fn policy() -> Policy {
    Policy {
        nudge_dwell: std::time::Duration::from_secs(60),
        ..Policy::default()
    }
}

/// Runs ticks every second from `from` to `to` (exclusive), collecting effects.
fn tick_until(t: &mut Track, from: i64, to: i64, p: &Policy) -> Vec<Effect> {
    let mut fx = Vec::new();
    let mut now = from;
    while now < to {
        fx.extend(step(t, Input::Tick, now, p));
        now += 1000;
    }
    fx
}

fn commands(fx: &[Effect]) -> Vec<&Action> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Command { action, .. } => Some(action),
            _ => None,
        })
        .collect()
}

fn notified(fx: &[Effect], kind: &str) -> usize {
    fx.iter()
        .filter(|e| matches!(e, Effect::Notify { kind: k, .. } if *k == kind))
        .count()
}

#[test]
fn first_observation_of_an_agent_is_working() {
    let p = policy();
    let mut t = Track::new(0, None);
    let fx = step(&mut t, seen(obs("a", 0, Condition::None)), 0, &p);
    assert_eq!(t.state, SessionState::Working);
    assert!(matches!(
        fx[0],
        Effect::Transition {
            to: SessionState::Working,
            ..
        }
    ));
}

#[test]
fn idle_at_prompt_is_warned_then_nudged_within_budget() {
    let p = policy();
    let mut t = Track::new(0, None);
    step(&mut t, seen(obs("a", 0, Condition::AtPrompt)), 0, &p);
    // Three unchanged probe intervals: stalled and warned, not yet nudged.
    let fx = tick_until(&mut t, 1000, 4000, &p);
    assert_eq!(t.state, SessionState::Stalled);
    assert_eq!(notified(&fx, "idle_warning"), 1);
    assert!(commands(&fx).is_empty());
    // After the dwell: a nudge, carrying the agent's incarnation.
    let fx = step(&mut t, Input::Tick, 3000 + 60_000, &p);
    assert!(matches!(
        &fx[..],
        [Effect::Command {
            action: Action::Nudge { .. },
            incarnation: Some(INC),
            ..
        }]
    ));
    // Many more idle minutes: never more than the budget within the window.
    let fx = tick_until(&mut t, 64_000, 30 * 60_000, &p);
    assert_eq!(commands(&fx).len(), 2, "budget of 3 per 30 min");
}

#[test]
fn budget_survives_activity_between_nudges() {
    let p = policy();
    let mut t = Track::new(0, None);
    let mut now = 0;
    let mut nudges = 0;
    for round in 0..10 {
        // Idle at the prompt until nudged, then the agent answers (activity) and idles again.
        step(
            &mut t,
            seen(obs(&format!("h{round}"), 0, Condition::AtPrompt)),
            now,
            &p,
        );
        let fx = tick_until(&mut t, now + 1000, now + 70_000, &p);
        nudges += commands(&fx).len();
        now += 70_000;
    }
    // 10 rounds in 700 s, all within one 30-minute window.
    assert_eq!(nudges, 3);
}

#[test]
fn thinking_agent_is_never_stalled_or_touched() {
    let p = policy();
    let mut t = Track::new(0, None);
    step(&mut t, seen(obs("same", 0, Condition::Thinking)), 0, &p);
    let fx = tick_until(&mut t, 1000, 2 * 3600 * 1000, &p);
    assert_eq!(t.state, SessionState::Working);
    assert!(fx.is_empty(), "{fx:?}");
}

#[test]
fn cpu_counts_as_activity() {
    let p = policy();
    let mut t = Track::new(0, None);
    step(&mut t, seen(obs("same", 0, Condition::None)), 0, &p);
    let mut fx = Vec::new();
    for s in 1..600 {
        // 200 ms of CPU per second with an unchanged screen: busy.
        fx.extend(step(
            &mut t,
            seen(obs("same", s * 200, Condition::None)),
            s as i64 * 1000,
            &p,
        ));
        fx.extend(step(&mut t, Input::Tick, s as i64 * 1000 + 500, &p));
    }
    assert_eq!(t.state, SessionState::Working);
    assert!(commands(&fx).is_empty());
}

#[test]
fn permission_prompt_needs_a_human_once_and_gets_no_command() {
    let p = policy();
    let mut t = Track::new(0, None);
    let fx = step(
        &mut t,
        seen(obs("p", 0, Condition::WaitingPermission)),
        0,
        &p,
    );
    assert_eq!(notified(&fx, "needs_human"), 1);
    let mut all = tick_until(&mut t, 1000, 2 * 3600 * 1000, &p);
    all.extend(step(
        &mut t,
        seen(obs("p", 0, Condition::WaitingPermission)),
        2 * 3600 * 1000,
        &p,
    ));
    assert!(commands(&all).is_empty(), "{all:?}");
    assert_eq!(notified(&all, "needs_human"), 0, "announced again");
    assert_ne!(t.state, SessionState::Stalled);
}

#[test]
fn attached_person_holds_the_nudge() {
    let p = policy();
    let mut t = Track::new(0, None);
    let mut o = obs("a", 0, Condition::AtPrompt);
    o.attached_clients = 1;
    step(&mut t, seen(o), 0, &p);
    let fx = tick_until(&mut t, 1000, 10 * 60_000, &p);
    assert!(commands(&fx).is_empty());
    assert_eq!(notified(&fx, "nudge_held"), 1);
}

#[test]
fn activity_returns_a_stalled_session_to_working() {
    let p = policy();
    let mut t = Track::new(0, None);
    step(&mut t, seen(obs("a", 0, Condition::AtPrompt)), 0, &p);
    tick_until(&mut t, 1000, 5000, &p);
    assert_eq!(t.state, SessionState::Stalled);
    step(&mut t, seen(obs("b", 0, Condition::None)), 5000, &p);
    assert_eq!(t.state, SessionState::Working);
    assert_eq!(t.ladder.rung, crate::escalate::Rung::Clear);
}

#[test]
fn hard_limit_restarts_once() {
    let p = Policy {
        hard_stall: std::time::Duration::from_secs(600),
        ..policy()
    };
    let mut t = Track::new(0, None);
    step(&mut t, seen(obs("a", 0, Condition::None)), 0, &p);
    let fx = tick_until(&mut t, 1000, 3600 * 1000, &p);
    let restarts: Vec<_> = commands(&fx)
        .into_iter()
        .filter(|a| matches!(a, Action::Restart { .. }))
        .collect();
    assert_eq!(restarts.len(), 1, "{fx:?}");
    assert!(matches!(restarts[0], Action::Restart { command, .. } if command == "claude --resume"));
}

#[test]
fn deaths_and_ends() {
    let p = policy();
    // Pane died with status 0: completed, no restart.
    let mut t = Track::new(0, None);
    step(&mut t, seen(obs("a", 0, Condition::None)), 0, &p);
    let mut o = obs("a", 0, Condition::None);
    o.pane_dead = true;
    o.exit_status = 0;
    o.agent = None;
    let fx = step(&mut t, seen(o.clone()), 1000, &p);
    assert_eq!(t.state, SessionState::Completed);
    assert!(commands(&fx).is_empty());
    // Agent gone while the pane lives: zombie.
    let mut t = Track::new(0, None);
    step(&mut t, seen(obs("a", 0, Condition::None)), 0, &p);
    let mut gone = obs("a", 0, Condition::None);
    gone.agent = None;
    step(&mut t, seen(gone), 1000, &p);
    assert_eq!(t.state, SessionState::Zombie);
    // Session closed: dead, and no restart without the operator's opt-in label.
    let fx = step(&mut t, Input::Gone, 2000, &p);
    assert_eq!(t.state, SessionState::Dead);
    assert!(commands(&fx).is_empty());
}

#[test]
fn labelled_deaths_restart_with_backoff() {
    let p = Policy {
        restart_backoff_min: std::time::Duration::from_secs(1),
        restart_backoff_max: std::time::Duration::from_secs(8),
        restart_on_death: RestartOnDeath::Labelled,
        ..policy()
    };
    let mut t = Track::new(0, None);
    let mut o = obs("a", 0, Condition::None);
    o.labels = BTreeMap::from([("restart".to_owned(), "claude -c".to_owned())]);
    let mut restarts_at = Vec::new();
    let mut now = 0;
    for _ in 0..6 {
        step(&mut t, seen(o.clone()), now, &p);
        let mut fx = step(&mut t, Input::AgentExited(INC), now + 10, &p);
        let mut at = now + 10;
        while commands(&fx).is_empty() {
            at += 100;
            fx = step(&mut t, Input::Tick, at, &p);
            assert!(at < now + 60_000, "no restart");
        }
        restarts_at.push(at);
        // The restarted agent is a new incarnation.
        now = at + 10;
        o.agent = Some(Incarnation {
            pid: o.agent.map_or(0, |a| a.pid) + 1,
            start_time: 1,
        });
        step(&mut t, seen(o.clone()), now, &p);
        o.agent = Some(INC);
    }
    let gaps: Vec<i64> = restarts_at.windows(2).map(|w| w[1] - w[0]).collect();
    // 1 s, 2 s, 4 s, 8 s, capped at 8 s (plus the 10-20 ms of each simulated round).
    for (gap, want) in gaps.iter().zip([1000, 2000, 4000, 8000, 8000]) {
        assert!((want..want + 200).contains(gap), "gaps {gaps:?}");
    }
}

#[test]
fn operator_kill_is_not_undone() {
    let p = Policy {
        restart_on_death: RestartOnDeath::Always,
        ..policy()
    };
    let mut t = Track::new(0, None);
    step(&mut t, seen(obs("a", 0, Condition::None)), 0, &p);
    step(&mut t, Input::KilledByOperator, 10, &p);
    let mut fx = step(&mut t, Input::PaneDied, 20, &p);
    fx.extend(step(&mut t, Input::Gone, 30, &p));
    fx.extend(tick_until(&mut t, 1000, 120_000, &p));
    assert!(commands(&fx).is_empty(), "{fx:?}");
}

#[test]
fn recorded_zombie_seen_alive_is_working() {
    let p = policy();
    let mut t = Track::new(0, Some(SessionState::Zombie));
    let fx = step(&mut t, seen(obs("a", 0, Condition::None)), 0, &p);
    assert_eq!(t.state, SessionState::Working);
    assert!(commands(&fx).is_empty());
}

#[derive(Debug, Clone)]
enum Sim {
    Obs {
        hash: u8,
        cpu: u64,
        cond: u8,
        attached: bool,
    },
    Tick(u32),
    Exit,
    Gone,
}

fn sim() -> impl Strategy<Value = Sim> {
    prop_oneof![
        (0u8..3, 0u64..500, 0u8..6, any::<bool>()).prop_map(|(hash, cpu, cond, attached)| {
            Sim::Obs {
                hash,
                cpu,
                cond,
                attached,
            }
        }),
        (1u32..120_000).prop_map(Sim::Tick),
        Just(Sim::Exit),
        Just(Sim::Gone),
    ]
}

fn condition(n: u8) -> Condition {
    [
        Condition::None,
        Condition::AtPrompt,
        Condition::Thinking,
        Condition::WaitingPermission,
        Condition::RateLimited,
        Condition::Error,
    ][n as usize % 6]
}

proptest! {
    /// Whatever happens: no command while the agent thinks or waits for a person; a nudge only at
    /// a prompt with nobody attached; never more nudges per window than the budget.
    #[test]
    fn policy_invariants(steps in proptest::collection::vec(sim(), 1..200)) {
        let p = Policy { nudge_dwell: std::time::Duration::from_secs(5), ..Policy::default() };
        let mut t = Track::new(0, None);
        let mut now = 0i64;
        let mut cpu = 0u64;
        let mut nudges: Vec<i64> = Vec::new();
        for s in steps {
            let fx = match s {
                Sim::Obs { hash, cpu: c, cond, attached } => {
                    now += 250;
                    cpu += c;
                    let mut o = obs(&hash.to_string(), cpu, condition(cond));
                    o.attached_clients = u32::from(attached);
                    step(&mut t, seen(o), now, &p)
                }
                Sim::Tick(ms) => { now += i64::from(ms); step(&mut t, Input::Tick, now, &p) }
                Sim::Exit => { now += 5; step(&mut t, Input::AgentExited(INC), now, &p) }
                Sim::Gone => { now += 5; step(&mut t, Input::Gone, now, &p) }
            };
            for e in &fx {
                if let Effect::Command { action, .. } = e {
                    let cond = t.obs.condition;
                    if t.state.is_alive() {
                        prop_assert!(
                            !matches!(cond, Condition::Thinking | Condition::WaitingPermission | Condition::RateLimited),
                            "{action:?} while {cond:?}"
                        );
                    }
                    if matches!(action, Action::Nudge { .. }) {
                        prop_assert_eq!(cond, Condition::AtPrompt);
                        prop_assert_eq!(t.obs.attached_clients, 0);
                        nudges.push(now);
                        let window = p.nudge_window.as_millis() as i64;
                        let recent = nudges.iter().filter(|at| now - **at < window).count();
                        prop_assert!(recent <= p.nudge_budget as usize);
                    }
                }
            }
        }
    }
}
