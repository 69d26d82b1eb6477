//! The decision core on a simulated clock.

use std::collections::BTreeMap;

use argus_shared::command::Action;
use argus_shared::profile::Condition;
use argus_shared::state::SessionState;
use proptest::prelude::*;

use super::*;
use crate::escalate::Verdict;
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
        profile: "claude".into(),
        agent_cpu_ms: cpu,
        screen_hash: hash.into(),
        condition,
        start_command: "\"claude --resume\"".into(),
        exit_status: -1,
        ..Default::default()
    }
}

const CTX: Ctx<'static> = Ctx {
    session_name: "s",
    node_up: true,
    node_back_ms: 0,
    destructive_allowed: true,
    provider_cooldown_until: None,
    jitter: 1.0,
    gate: &crate::budget::Unlimited,
};

/// The effects of one step.
fn step(t: &mut Track, input: Input, now: i64, p: &Policy, ctx: &Ctx) -> Vec<Effect> {
    super::step(t, input, now, p, ctx).effects
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
        fx.extend(step(t, Input::Tick, now, p, &CTX));
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
        .filter(|e| matches!(e, Effect::Notify(n) if n.kind() == kind))
        .count()
}

#[test]
fn first_observation_of_an_agent_is_working() {
    let p = policy();
    let mut t = Track::new(0, None, None);
    let fx = step(&mut t, seen(obs("a", 0, Condition::None)), 0, &p, &CTX);
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
    let mut t = Track::new(0, None, None);
    step(&mut t, seen(obs("a", 0, Condition::AtPrompt)), 0, &p, &CTX);
    // Three unchanged probe intervals: stalled and warned, not yet nudged.
    let fx = tick_until(&mut t, 1000, 4000, &p);
    assert_eq!(t.state, SessionState::Stalled);
    assert_eq!(notified(&fx, "idle_warning"), 1);
    assert!(commands(&fx).is_empty());
    // After the dwell: a nudge, carrying the agent's incarnation.
    let fx = step(&mut t, Input::Tick, 3000 + 60_000, &p, &CTX);
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
    let mut t = Track::new(0, None, None);
    let mut now = 0;
    let mut nudges = 0;
    for round in 0..10 {
        // Idle at the prompt until nudged, then the agent answers (activity) and idles again.
        step(
            &mut t,
            seen(obs(&format!("h{round}"), 0, Condition::AtPrompt)),
            now,
            &p,
            &CTX,
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
    let mut t = Track::new(0, None, None);
    step(
        &mut t,
        seen(obs("same", 0, Condition::Thinking)),
        0,
        &p,
        &CTX,
    );
    let fx = tick_until(&mut t, 1000, 2 * 3600 * 1000, &p);
    assert_eq!(t.state, SessionState::Working);
    assert!(fx.is_empty(), "{fx:?}");
}

#[test]
fn cpu_counts_as_activity() {
    let p = policy();
    let mut t = Track::new(0, None, None);
    step(&mut t, seen(obs("same", 0, Condition::None)), 0, &p, &CTX);
    let mut fx = Vec::new();
    for s in 1..600 {
        // 200 ms of CPU per second with an unchanged screen: busy.
        fx.extend(step(
            &mut t,
            seen(obs("same", s * 200, Condition::None)),
            s as i64 * 1000,
            &p,
            &CTX,
        ));
        fx.extend(step(&mut t, Input::Tick, s as i64 * 1000 + 500, &p, &CTX));
    }
    assert_eq!(t.state, SessionState::Working);
    assert!(commands(&fx).is_empty());
}

#[test]
fn permission_prompt_needs_a_human_once_and_gets_no_command() {
    let p = policy();
    let mut t = Track::new(0, None, None);
    let fx = step(
        &mut t,
        seen(obs("p", 0, Condition::WaitingPermission)),
        0,
        &p,
        &CTX,
    );
    assert_eq!(notified(&fx, "needs_human"), 1);
    let mut all = tick_until(&mut t, 1000, 2 * 3600 * 1000, &p);
    all.extend(step(
        &mut t,
        seen(obs("p", 0, Condition::WaitingPermission)),
        2 * 3600 * 1000,
        &p,
        &CTX,
    ));
    assert!(commands(&all).is_empty(), "{all:?}");
    assert_eq!(notified(&all, "needs_human"), 0, "announced again");
    assert_ne!(t.state, SessionState::Stalled);
}

#[test]
fn attached_person_holds_the_nudge() {
    let p = policy();
    let mut t = Track::new(0, None, None);
    let mut o = obs("a", 0, Condition::AtPrompt);
    o.attached_clients = 1;
    step(&mut t, seen(o), 0, &p, &CTX);
    let fx = tick_until(&mut t, 1000, 10 * 60_000, &p);
    assert!(commands(&fx).is_empty());
    assert_eq!(notified(&fx, "nudge_held"), 1);
}

#[test]
fn activity_returns_a_stalled_session_to_working() {
    let p = policy();
    let mut t = Track::new(0, None, None);
    step(&mut t, seen(obs("a", 0, Condition::AtPrompt)), 0, &p, &CTX);
    tick_until(&mut t, 1000, 5000, &p);
    assert_eq!(t.state, SessionState::Stalled);
    step(&mut t, seen(obs("b", 0, Condition::None)), 5000, &p, &CTX);
    assert_eq!(t.state, SessionState::Working);
    assert_eq!(t.ladder.rung, crate::escalate::Rung::Clear);
}

#[test]
fn hard_limit_restarts_once() {
    let p = Policy {
        hard_stall: std::time::Duration::from_secs(600),
        ..policy()
    };
    let mut t = Track::new(0, None, None);
    step(&mut t, seen(obs("a", 0, Condition::None)), 0, &p, &CTX);
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
    let mut t = Track::new(0, None, None);
    step(&mut t, seen(obs("a", 0, Condition::None)), 0, &p, &CTX);
    let mut o = obs("a", 0, Condition::None);
    o.pane_dead = true;
    o.exit_status = 0;
    o.agent = None;
    let fx = step(&mut t, seen(o.clone()), 1000, &p, &CTX);
    assert_eq!(t.state, SessionState::Completed);
    assert!(commands(&fx).is_empty());
    // Agent gone while the pane lives: zombie.
    let mut t = Track::new(0, None, None);
    step(&mut t, seen(obs("a", 0, Condition::None)), 0, &p, &CTX);
    let mut gone = obs("a", 0, Condition::None);
    gone.agent = None;
    step(&mut t, seen(gone), 1000, &p, &CTX);
    assert_eq!(t.state, SessionState::Zombie);
    // Session closed: dead, and no restart without the operator's opt-in label.
    let fx = step(&mut t, Input::Gone, 2000, &p, &CTX);
    assert_eq!(t.state, SessionState::Dead);
    assert!(commands(&fx).is_empty());
}

#[test]
fn a_restart_that_brings_no_agent_back_is_sent_again_and_one_that_does_is_not() {
    let p = Policy {
        restart_on_death: RestartOnDeath::Labelled,
        ..policy()
    };
    let restart_ticks = |t: &mut Track, from: i64, to: i64| {
        let mut at = from;
        let mut sent = Vec::new();
        while at < to {
            if !commands(&step(t, Input::Tick, at, &p, &CTX)).is_empty() {
                sent.push(at);
            }
            at += 100;
        }
        sent
    };
    let mut o = obs("a", 0, Condition::None);
    o.labels = BTreeMap::from([("restart".to_owned(), "claude -c".to_owned())]);
    o.agent = Some(Incarnation {
        pid: 100,
        start_time: 1,
    });
    // The session closes with its agent; the restart sent ~1 s later is lost (the node agent
    // died with it): nothing more is ever observed of the session.
    let mut lost = Track::new(0, None, None);
    step(&mut lost, seen(o.clone()), 0, &p, &CTX);
    step(&mut lost, Input::Gone, 10, &p, &CTX);
    let confirm = 2 * p.command_timeout.as_millis() as i64;
    let sent = restart_ticks(&mut lost, 100, 2 * confirm);
    assert_eq!(sent.len(), 2, "sent at {sent:?}");
    assert!(sent[1] - sent[0] >= confirm, "{sent:?}");

    // The same, but the restart brings an agent back: sent once only, even when that agent
    // later completes.
    let mut back = Track::new(0, None, None);
    step(&mut back, seen(o.clone()), 0, &p, &CTX);
    step(&mut back, Input::Gone, 10, &p, &CTX);
    let sent = restart_ticks(&mut back, 100, 3_000);
    assert_eq!(sent.len(), 1, "{sent:?}");
    o.agent = Some(Incarnation {
        pid: 101,
        start_time: 2,
    });
    step(&mut back, seen(o.clone()), 3_000, &p, &CTX);
    assert!(restart_ticks(&mut back, 3_100, 3 * confirm).is_empty());

    // The node agent answers that the restart was not carried out (its tmux id named another
    // session after a server restart): it is sent again at once, not after the confirm window.
    let mut refused = Track::new(0, None, None);
    step(&mut refused, seen(o.clone()), 0, &p, &CTX);
    step(&mut refused, Input::Gone, 10, &p, &CTX);
    let sent = restart_ticks(&mut refused, 100, 3_000);
    assert_eq!(sent.len(), 1, "{sent:?}");
    // An answer about an older restart, superseded since, changes nothing...
    step(
        &mut refused,
        Input::RestartNotDone {
            sent_ms: sent[0] - 5_000,
        },
        3_000,
        &p,
        &CTX,
    );
    assert!(restart_ticks(&mut refused, 3_100, 6_000).is_empty());
    // ...the answer about this one brings the next at once.
    step(
        &mut refused,
        Input::RestartNotDone { sent_ms: sent[0] },
        6_000,
        &p,
        &CTX,
    );
    let again = restart_ticks(&mut refused, 6_000, 9_000);
    assert_eq!(again.len(), 1, "{again:?}");
    assert!(again[0] < sent[0] + confirm, "{again:?}");

    // An operator's kill is never retried.
    let mut killed = Track::new(0, None, None);
    step(&mut killed, seen(o.clone()), 0, &p, &CTX);
    step(&mut killed, Input::Gone, 10, &p, &CTX);
    assert_eq!(restart_ticks(&mut killed, 100, 3_000).len(), 1);
    step(&mut killed, Input::KilledByOperator, 3_000, &p, &CTX);
    assert!(restart_ticks(&mut killed, 3_100, 3 * confirm).is_empty());
}

#[test]
fn labelled_deaths_restart_with_backoff_then_crash_loop_rules() {
    let p = Policy {
        restart_on_death: RestartOnDeath::Labelled,
        ..policy()
    };
    let mut t = Track::new(0, None, None);
    let mut o = obs("a", 0, Condition::None);
    o.labels = BTreeMap::from([("restart".to_owned(), "claude -c".to_owned())]);
    o.pane_pid = 4242;
    let mut restarts_at = Vec::new();
    let mut notes = Vec::new();
    let mut now = 0;
    let mut pid = 100;
    // The agent dies right after every restart, for 40 simulated minutes.
    while now < 40 * 60_000 {
        o.agent = Some(Incarnation { pid, start_time: 1 });
        step(&mut t, seen(o.clone()), now, &p, &CTX);
        let mut fx = step(
            &mut t,
            Input::AgentExited(Incarnation { pid, start_time: 1 }),
            now + 10,
            &p,
            &CTX,
        );
        let mut at = now + 10;
        notes.extend(fx.clone());
        while commands(&fx).is_empty() && at < 40 * 60_000 {
            at += 100;
            fx = step(&mut t, Input::Tick, at, &p, &CTX);
            notes.extend(fx.clone());
        }
        if commands(&fx).is_empty() {
            break;
        }
        // Each restart names the pane process it replaces: a late second one is refused.
        assert!(
            matches!(
                commands(&fx)[..],
                [Action::Restart {
                    replaces_pane_pid: 4242,
                    ..
                }]
            ),
            "{fx:?}"
        );
        restarts_at.push(at);
        now = at + 10;
        pid += 1;
    }
    let gaps: Vec<i64> = restarts_at.windows(2).map(|w| w[1] - w[0]).collect();
    // Backoff 1 s then 2 s; the third crash within 120 s starts a 120 s cooldown.
    assert!((1000..1300).contains(&restarts_at[0]), "{restarts_at:?}");
    assert!((2000..2300).contains(&gaps[0]), "{gaps:?}");
    assert!(gaps[1] >= 120_000, "{gaps:?}");
    assert!(notified(&notes, "crash_loop") >= 1);
    // More than 5 restarts in 10 minutes: no more blind restarts, a person is called.
    let in_window = |i: usize| {
        restarts_at
            .iter()
            .filter(|at| **at > restarts_at[i] - 600_000 && **at <= restarts_at[i])
            .count()
    };
    assert!(
        (0..restarts_at.len()).all(|i| in_window(i) <= 6),
        "{restarts_at:?}"
    );
    assert!(t.durable.restarts_blocked, "{restarts_at:?}");
    assert!(notified(&notes, "needs_human") >= 1);
}

#[test]
fn rate_limit_cooldown_resume_renewals_and_restart() {
    let p = Policy {
        rate_limit_cooldown: std::time::Duration::from_secs(300),
        ..policy()
    };
    let mut t = Track::new(0, None, None);
    let mut o = obs("limit-1", 0, Condition::RateLimited);
    let fx = step(&mut t, seen(o.clone()), 0, &p, &CTX);
    assert_eq!(notified(&fx, "rate_limited"), 1);
    // Nothing during the cooldown: no stall, no nudge, no restart.
    let fx = tick_until(&mut t, 1000, 300_000, &p);
    assert!(fx.is_empty(), "{fx:?}");
    assert_eq!(t.state, SessionState::Working);
    // Cooldown over, and the agent did not resume by itself within the grace: one resume nudge.
    let fx = tick_until(&mut t, 301_000, 300_000 + G, &p);
    assert!(commands(&fx).is_empty(), "{fx:?}");
    let fx = step(&mut t, Input::Tick, 300_000 + G, &p, &CTX);
    assert!(matches!(&commands(&fx)[..], [Action::Nudge { text }] if text == "continue"));
    // The limit comes back three times: cooldowns 150 s, 100 s, 75 s...
    let mut now = 300_000 + G;
    for (n, want) in [(2, 150_000), (3, 100_000), (4, 75_000)] {
        // The agent goes back to work, then hits the limit again: a new occurrence.
        now += 2_000;
        step(
            &mut t,
            seen(obs(&format!("work-{n}"), 0, Condition::Thinking)),
            now,
            &p,
            &CTX,
        );
        now += 3_000;
        o.screen_hash = format!("limit-{n}");
        let fx = step(&mut t, seen(o.clone()), now, &p, &CTX);
        assert_eq!(notified(&fx, "rate_limit_renewed"), 1, "{fx:?}");
        let until = t.durable.rate.as_ref().map(|r| r.until).unwrap_or(0);
        assert_eq!(until - now, want);
        assert!(commands(&tick_until(&mut t, now + 1000, until + G, &p)).is_empty());
        now = until + G;
        let fx = step(&mut t, Input::Tick, now, &p, &CTX);
        assert_eq!(commands(&fx).len(), 1);
    }
    // ...and the 4th renewal forces a restart.
    now += 2_000;
    step(
        &mut t,
        seen(obs("work-5", 0, Condition::Thinking)),
        now,
        &p,
        &CTX,
    );
    now += 3_000;
    o.screen_hash = "limit-5".into();
    let fx = step(&mut t, seen(o.clone()), now, &p, &CTX);
    assert!(
        matches!(&commands(&fx)[..], [Action::Restart { .. }]),
        "{fx:?}"
    );
    assert!(
        t.durable.restarts.len() == 1 && t.durable.crashes.is_empty(),
        "a rate limit is no crash"
    );
}

#[test]
fn a_cli_retrying_by_itself_is_busy_and_a_limit_still_on_screen_is_no_renewal() {
    let p = Policy {
        rate_limit_cooldown: std::time::Duration::from_secs(300),
        ..policy()
    };
    let mut t = Track::new(0, None, None);
    // Aider: the provider's 429 names a reset 4 minutes ahead; Aider prints "Retrying in 1.0
    // seconds" (thinking) and hits the 429 again, over and over, the screen changing each time.
    let mut o = obs("429-0", 0, Condition::RateLimited);
    o.rate_limit_reset_at = 240;
    let mut fx = step(&mut t, seen(o.clone()), 0, &p, &CTX);
    let mut now = 0;
    for n in 1..100 {
        now += 1_000;
        fx.extend(step(
            &mut t,
            seen(obs(&format!("retry-{n}"), 0, Condition::Thinking)),
            now,
            &p,
            &CTX,
        ));
        fx.extend(step(&mut t, Input::Tick, now + 500, &p, &CTX));
        now += 1_000;
        o.screen_hash = format!("429-{n}");
        fx.extend(step(&mut t, seen(o.clone()), now, &p, &CTX));
    }
    assert!(
        commands(&fx).is_empty(),
        "no nudge while it retries: {fx:?}"
    );
    assert_eq!(notified(&fx, "rate_limited"), 1);
    assert_eq!(notified(&fx, "rate_limit_renewed"), 0);
    assert_eq!(t.durable.rate.as_ref().map(|r| r.until), Some(240_000));
    // It gives up and shows the limit; the provider's reset time passes: one resume nudge.
    let fx = tick_until(&mut t, now + 1000, 240_000 + G, &p);
    assert!(commands(&fx).is_empty(), "{fx:?}");
    let fx = step(&mut t, Input::Tick, 240_000 + G, &p, &CTX);
    assert_eq!(commands(&fx).len(), 1, "{fx:?}");
    // The same limit stays on screen (the nudge echoed, the screen changed): no renewal, and the
    // next resume only after another cooldown.
    o.screen_hash = "429 and continue".into();
    let fx = step(&mut t, seen(o.clone()), 241_000 + G, &p, &CTX);
    assert_eq!(notified(&fx, "rate_limit_renewed"), 0, "{fx:?}");
    let fx = tick_until(&mut t, 242_000 + G, 540_000 + G, &p);
    assert!(commands(&fx).is_empty(), "{fx:?}");
    let mut resumes = 1;
    let mut fx = Vec::new();
    let mut at = 540_000 + G;
    while at < 540_000 + 10 * 300_000 {
        fx.extend(step(&mut t, Input::Tick, at, &p, &CTX));
        at += 1_000;
    }
    resumes += commands(&fx).len();
    assert_eq!(resumes, p.rate_limit_max_renewals as usize, "{fx:?}");
    assert_eq!(notified(&fx, "needs_human"), 1, "then a person: {fx:?}");
}

/// The grace after a reset before the resume nudge.
const G: i64 = super::RESUME_GRACE_MS;

#[test]
fn a_cli_that_resumes_by_itself_after_the_reset_gets_no_resume_nudge() {
    let p = Policy {
        rate_limit_cooldown: std::time::Duration::from_secs(300),
        ..policy()
    };
    let mut t = Track::new(0, None, None);
    step(
        &mut t,
        seen(obs("limit", 0, Condition::RateLimited)),
        0,
        &p,
        &CTX,
    );
    // The reset passes; two seconds later the CLI retries on its own and works.
    let mut fx = tick_until(&mut t, 1_000, 302_000, &p);
    fx.extend(step(
        &mut t,
        seen(obs("working again", 0, Condition::Thinking)),
        302_000,
        &p,
        &CTX,
    ));
    fx.extend(tick_until(&mut t, 303_000, 400_000, &p));
    assert!(
        commands(&fx).is_empty(),
        "typed into a resumed agent: {fx:?}"
    );
}

#[test]
fn parsed_reset_time_is_the_cooldown_and_survives_a_controller_restart() {
    let p = policy();
    let mut t = Track::new(0, None, None);
    let mut o = obs("limit", 0, Condition::RateLimited);
    o.rate_limit_reset_at = 3600; // Unix seconds: one hour from t = 0.
    let fx = step(&mut t, seen(o.clone()), 0, &p, &CTX);
    assert!(fx.contains(&Effect::Persist));
    // The controller restarts at t = 10 min: a new Track from the persisted state.
    let persisted: Durable =
        serde_json::from_str(&serde_json::to_string(&t.durable).expect("json")).expect("parse");
    let mut t2 = Track::new(600_000, Some(SessionState::Working), Some(persisted));
    step(&mut t2, seen(o.clone()), 600_000, &p, &CTX);
    let fx = tick_until(&mut t2, 601_000, 3_600_000 + G, &p);
    assert!(commands(&fx).is_empty(), "acted before the reset: {fx:?}");
    let fx = step(&mut t2, Input::Tick, 3_600_000 + G, &p, &CTX);
    assert_eq!(commands(&fx).len(), 1, "no resume after the reset time");
}

#[test]
fn a_newer_agent_that_ran_and_died_unseen_lifts_the_rate_limit_hold() {
    let p = Policy {
        restart_on_death: RestartOnDeath::Labelled,
        ..policy()
    };
    let mut o = obs("limit", 0, Condition::RateLimited);
    o.labels = BTreeMap::from([("restart".to_owned(), "claude -c".to_owned())]);
    o.rate_limit_reset_at = 3600; // an hour away
    let held = |o: &Observation| {
        let mut t = Track::new(0, None, None);
        step(&mut t, seen(o.clone()), 0, &p, &CTX);
        // The limited agent dies: its restart waits for the reset.
        let fx = step(&mut t, Input::AgentExited(INC), 1_000, &p, &CTX);
        assert!(commands(&fx).is_empty(), "{fx:?}");
        assert!(t.restart_wanted && t.durable.rate.is_some());
        t
    };
    // The node agent's buffered exit of the same agent, or of an older one, changes nothing.
    for stale in [
        INC,
        Incarnation {
            pid: 99,
            start_time: 5,
        },
    ] {
        let mut t = held(&o);
        let mut fx = step(&mut t, Input::AgentExited(stale), 5_000, &p, &CTX);
        fx.extend(tick_until(&mut t, 6_000, 120_000, &p));
        assert!(commands(&fx).is_empty(), "{stale:?}: {fx:?}");
        assert!(t.durable.rate.is_some());
    }
    // A newer agent ran and died while no controller listened (someone started it by hand):
    // the hold was not about it; its death is restarted like any other.
    let mut t = held(&o);
    let newer = Incarnation {
        pid: 300,
        start_time: 90,
    };
    let mut fx = step(&mut t, Input::AgentExited(newer), 5_000, &p, &CTX);
    assert_eq!(notified(&fx, "rate_limit_cleared"), 1);
    assert!(t.durable.rate.is_none());
    fx.extend(tick_until(&mut t, 6_000, 120_000, &p));
    assert!(
        matches!(commands(&fx).first(), Some(Action::Restart { .. })),
        "restarted under the usual backoff: {fx:?}"
    );
    // An unlabelled session is not restarted either way.
    o.labels.clear();
    let mut t = Track::new(0, None, None);
    step(&mut t, seen(o.clone()), 0, &p, &CTX);
    step(&mut t, Input::AgentExited(INC), 1_000, &p, &CTX);
    let mut fx = step(&mut t, Input::AgentExited(newer), 5_000, &p, &CTX);
    fx.extend(tick_until(&mut t, 6_000, 120_000, &p));
    assert!(commands(&fx).is_empty(), "{fx:?}");
}

#[test]
fn the_exit_of_a_pane_process_since_replaced_is_no_death() {
    let p = Policy {
        restart_on_death: RestartOnDeath::Labelled,
        ..policy()
    };
    let mut o = obs("a", 0, Condition::None);
    o.labels = BTreeMap::from([("restart".to_owned(), "claude -c".to_owned())]);
    o.pane_pid = 4242;
    let mut t = Track::new(0, None, None);
    step(&mut t, seen(o), 0, &p, &CTX);
    // A buffered exit of the pane process before the respawn, delivered after the snapshot.
    let mut fx = step(&mut t, Input::PaneDied(1111), 1_000, &p, &CTX);
    fx.extend(tick_until(&mut t, 2_000, 60_000, &p));
    assert_eq!(notified(&fx, "agent_died"), 0, "{fx:?}");
    assert!(t.state.is_alive() && !t.restart_wanted, "{:?}", t.state);
    // The pane's own process exiting is a death.
    let fx = step(&mut t, Input::PaneDied(4242), 60_000, &p, &CTX);
    assert_eq!(notified(&fx, "agent_died"), 1, "{fx:?}");
}

#[test]
fn provider_cooldown_and_gate_hold_actions() {
    let p = policy();
    let mut t = Track::new(0, None, None);
    step(
        &mut t,
        seen(obs("limit", 0, Condition::RateLimited)),
        0,
        &p,
        &CTX,
    );
    let fleet = Ctx {
        provider_cooldown_until: Some(900_000),
        ..CTX
    };
    for at in (1000..900_000 + G).step_by(1000) {
        assert!(commands(&step(&mut t, Input::Tick, at, &p, &fleet)).is_empty());
    }
    assert_eq!(
        commands(&step(&mut t, Input::Tick, 900_000 + G, &p, &fleet)).len(),
        1
    );
    // A frozen fleet (self-suspicion, mass death, budget) holds a hard-stall restart.
    let hard = Policy {
        hard_stall: std::time::Duration::from_secs(60),
        ..policy()
    };
    let mut t = Track::new(0, None, None);
    step(&mut t, seen(obs("x", 0, Condition::None)), 0, &hard, &CTX);
    let frozen = Ctx {
        destructive_allowed: false,
        ..CTX
    };
    let mut fx = Vec::new();
    for at in (1000..600_000).step_by(1000) {
        fx.extend(step(&mut t, Input::Tick, at, &hard, &frozen));
    }
    assert!(commands(&fx).iter().all(|a| !a.is_destructive()), "{fx:?}");
    assert_eq!(notified(&fx, "command_held"), 1);
    let fx = step(&mut t, Input::Tick, 600_000, &hard, &CTX);
    assert!(
        matches!(&commands(&fx)[..], [Action::Restart { .. }]),
        "{fx:?}"
    );
}

#[test]
fn triage_verdicts_drive_the_ladder() {
    let p = policy();
    let mut t = Track::new(0, None, None);
    // Hung silently (no prompt): warn, one interrupt after the dwell, triage after the next.
    step(&mut t, seen(obs("x", 0, Condition::None)), 0, &p, &CTX);
    let fx = tick_until(&mut t, 1000, 128_000, &p);
    assert_eq!(commands(&fx), [&Action::Interrupt], "{fx:?}");
    let case = fx.iter().find_map(|e| match e {
        Effect::Triage(c) => Some(c.clone()),
        _ => None,
    });
    assert!(case.is_some(), "{fx:?}");
    // Triage says restart: a confirming re-check first, then the restart.
    let fx = step(&mut t, Input::Verdict(Verdict::Restart), 128_000, &p, &CTX);
    assert!(commands(&fx).is_empty());
    let fx = step(&mut t, Input::Tick, 129_000, &p, &CTX);
    assert!(
        commands(&fx).is_empty(),
        "restart before the confirmation delay"
    );
    let fx = step(&mut t, Input::Tick, 130_000, &p, &CTX);
    assert!(
        matches!(&commands(&fx)[..], [Action::Restart { .. }]),
        "{fx:?}"
    );
    // Activity during the confirmation cancels the destructive step.
    let mut t = Track::new(0, None, None);
    step(&mut t, seen(obs("x", 0, Condition::None)), 0, &p, &CTX);
    tick_until(&mut t, 1000, 128_000, &p);
    step(&mut t, Input::Verdict(Verdict::Kill), 128_000, &p, &CTX);
    step(
        &mut t,
        seen(obs("moved", 0, Condition::None)),
        129_000,
        &p,
        &CTX,
    );
    let fx = tick_until(&mut t, 130_000, 134_000, &p);
    assert!(commands(&fx).is_empty(), "{fx:?}");
}

#[test]
fn a_turn_stuck_mid_way_is_interrupted_once_per_episode() {
    let p = policy();
    let interrupts = |fx: &[Effect]| {
        commands(fx)
            .iter()
            .filter(|a| matches!(a, Action::Interrupt))
            .count()
    };
    let mut t = Track::new(0, None, None);
    step(&mut t, seen(obs("x", 0, Condition::None)), 0, &p, &CTX);
    let fx = tick_until(&mut t, 1000, 70_000, &p);
    assert_eq!(interrupts(&fx), 1, "{fx:?}");
    let sent = fx.iter().find_map(|e| match e {
        Effect::Command {
            action: Action::Interrupt,
            incarnation,
            ..
        } => *incarnation,
        _ => None,
    });
    assert_eq!(sent, Some(INC), "meant for this agent only");
    // The interrupt moved the screen, but the turn is still stuck: the same episode, so the
    // ladder goes on to triage and never sends a second interrupt.
    step(&mut t, seen(obs("y", 0, Condition::None)), 70_000, &p, &CTX);
    let fx = tick_until(&mut t, 71_000, 300_000, &p);
    assert_eq!(interrupts(&fx), 0, "{fx:?}");
    assert!(fx.iter().any(|e| matches!(e, Effect::Triage(_))), "{fx:?}");

    // Back at work, then stuck again: a new episode, one more interrupt.
    let mut t = Track::new(0, None, None);
    step(&mut t, seen(obs("x", 0, Condition::None)), 0, &p, &CTX);
    tick_until(&mut t, 1000, 70_000, &p);
    step(
        &mut t,
        seen(obs("w", 0, Condition::Thinking)),
        70_000,
        &p,
        &CTX,
    );
    step(&mut t, seen(obs("z", 0, Condition::None)), 71_000, &p, &CTX);
    let fx = tick_until(&mut t, 72_000, 150_000, &p);
    assert_eq!(interrupts(&fx), 1, "{fx:?}");

    // Never at an idle prompt (a nudge is what helps there), never with a person attached.
    let mut t = Track::new(0, None, None);
    step(&mut t, seen(obs("x", 0, Condition::AtPrompt)), 0, &p, &CTX);
    let fx = tick_until(&mut t, 1000, 600_000, &p);
    assert_eq!(interrupts(&fx), 0, "{fx:?}");
    let mut t = Track::new(0, None, None);
    let mut o = obs("x", 0, Condition::None);
    o.attached_clients = 1;
    step(&mut t, seen(o), 0, &p, &CTX);
    let fx = tick_until(&mut t, 1000, 200_000, &p);
    assert_eq!(interrupts(&fx), 0, "{fx:?}");
}

#[test]
fn no_second_interrupt_within_the_cli_s_window() {
    let mut l = crate::escalate::Ladder::default();
    assert!(l.may_interrupt(Condition::None, 0, 2000));
    l.interrupted(0);
    l.worked();
    assert!(!l.may_interrupt(Condition::None, 1999, 2000));
    assert!(l.may_interrupt(Condition::None, 2000, 2000));
    for c in [
        Condition::AtPrompt,
        Condition::Thinking,
        Condition::WaitingPermission,
        Condition::Dialog,
        Condition::RateLimited,
        Condition::Error,
    ] {
        assert!(!l.may_interrupt(c, 10_000, 2000), "{c:?}");
    }
    // The window is the CLI's own, from its profile.
    let mut t = Track::new(0, None, None);
    t.obs.profile = "codex".into();
    assert_eq!(super::interrupt_window_ms(&t), Some(1000));
    t.obs.profile = "aider".into();
    assert_eq!(super::interrupt_window_ms(&t), Some(2000));
    // Any other program ends on C-c: the policy never interrupts it.
    t.obs.profile = "shell".into();
    assert_eq!(super::interrupt_window_ms(&t), None);
    t.obs.profile = "my-wrapper".into();
    assert_eq!(super::interrupt_window_ms(&t), None);
}

#[test]
fn operator_kill_is_not_undone() {
    let p = Policy {
        restart_on_death: RestartOnDeath::Always,
        ..policy()
    };
    let mut t = Track::new(0, None, None);
    step(&mut t, seen(obs("a", 0, Condition::None)), 0, &p, &CTX);
    step(&mut t, Input::KilledByOperator, 10, &p, &CTX);
    let mut fx = step(&mut t, Input::PaneDied(0), 20, &p, &CTX);
    fx.extend(step(&mut t, Input::Gone, 30, &p, &CTX));
    fx.extend(tick_until(&mut t, 1000, 120_000, &p));
    assert!(commands(&fx).is_empty(), "{fx:?}");
}

#[test]
fn recorded_zombie_seen_alive_is_working() {
    let p = policy();
    let mut t = Track::new(0, Some(SessionState::Zombie), None);
    let fx = step(&mut t, seen(obs("a", 0, Condition::None)), 0, &p, &CTX);
    assert_eq!(t.state, SessionState::Working);
    assert!(commands(&fx).is_empty());
}

#[test]
fn a_program_that_is_not_an_agent_is_watched_never_touched() {
    // A dev server in the user's tmux: the generic profile, no labels, started with a command.
    let p = Policy {
        restart_on_death: RestartOnDeath::Always,
        hard_stall: std::time::Duration::from_secs(120),
        ..policy()
    };
    let mut o = obs("server log", 0, Condition::Error);
    o.profile = argus_shared::profile::GENERIC.into();
    o.agent_name = "node".into();
    o.start_command = "npm run dev".into();
    let mut t = Track::new(0, None, None);
    let mut fx = step(&mut t, seen(o.clone()), 0, &p, &CTX);
    let mut now = 0;
    while now < 3_600_000 {
        now += 500;
        fx.extend(step(&mut t, Input::Tick, now, &p, &CTX));
    }
    assert_eq!(t.state, SessionState::Stalled);
    assert_eq!(notified(&fx, "idle_warning"), 1, "reported once: {fx:?}");
    assert!(commands(&fx).is_empty(), "{fx:?}");
    assert!(!fx.iter().any(|e| matches!(e, Effect::Triage(_))));
    assert_eq!(t.next_due, None, "nothing left to decide until it changes");
    // It dies: reported, not restarted, even with restart_on_death = "always".
    let fx = step(&mut t, Input::PaneDied(0), now + 1, &p, &CTX);
    assert_eq!(notified(&fx, "agent_died"), 1);
    assert!(!t.restart_wanted);

    // The same program opted in by the policy's act_on is supervised.
    let p = Policy {
        act_on: vec!["dev-*".into()],
        ..p
    };
    let mut t = Track::new(0, None, None);
    let ctx = Ctx {
        session_name: "dev-server",
        ..CTX
    };
    step(&mut t, seen(o), 0, &p, &ctx);
    assert_eq!(t.agent_evidence("dev-server", &p), Some("policy act_on"));
    assert_eq!(t.agent_evidence("my-dev-server", &p), None);
    // Labelling it a shell says it is no agent.
    let mut t = Track::new(0, None, None);
    let mut shell = obs("prompt", 0, Condition::AtPrompt);
    shell.profile = argus_shared::profile::GENERIC.into();
    shell.labels = BTreeMap::from([("profile".to_owned(), "shell".to_owned())]);
    step(&mut t, seen(shell), 0, &p, &CTX);
    assert_eq!(t.agent_evidence("s", &p), None);
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
        (0u8..3, 0u64..500, 0u8..7, any::<bool>()).prop_map(|(hash, cpu, cond, attached)| {
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
        Condition::Dialog,
    ][n as usize % 7]
}

proptest! {
    /// Whatever happens: no command while the agent thinks or waits for a person; a ladder nudge
    /// only at a prompt with nobody attached, within the budget; a resume nudge only on a
    /// rate-limited screen; an interrupt only on a screen stuck mid-turn with nobody attached,
    /// at most one per stall episode and never within the CLI's window.
    #[test]
    fn policy_invariants(steps in proptest::collection::vec(sim(), 1..200)) {
        let p = Policy { nudge_dwell: std::time::Duration::from_secs(5), ..Policy::default() };
        let mut t = Track::new(0, None, None);
        let mut now = 0i64;
        let mut cpu = 0u64;
        let mut nudges: Vec<i64> = Vec::new();
        // (when, a thinking screen was seen since)
        let mut last_interrupt: Option<(i64, bool)> = None;
        for s in steps {
            let fx = match s {
                Sim::Obs { hash, cpu: c, cond, attached } => {
                    now += 250;
                    cpu += c;
                    let mut o = obs(&hash.to_string(), cpu, condition(cond));
                    o.attached_clients = u32::from(attached);
                    if let Some((_, worked)) = &mut last_interrupt {
                        *worked |= o.condition == Condition::Thinking;
                    }
                    step(&mut t, seen(o), now, &p, &CTX)
                }
                Sim::Tick(ms) => { now += i64::from(ms); step(&mut t, Input::Tick, now, &p, &CTX) }
                Sim::Exit => { now += 5; step(&mut t, Input::AgentExited(INC), now, &p, &CTX) }
                Sim::Gone => { now += 5; step(&mut t, Input::Gone, now, &p, &CTX) }
            };
            for e in &fx {
                if let Effect::Command { action, .. } = e {
                    let cond = t.obs.condition;
                    if t.state.is_alive() {
                        prop_assert!(
                            !matches!(
                                cond,
                                Condition::Thinking | Condition::WaitingPermission | Condition::Dialog
                            ),
                            "{action:?} while {cond:?}"
                        );
                    }
                    if let Action::Interrupt = action {
                        prop_assert_eq!(t.obs.condition, Condition::None);
                        prop_assert_eq!(t.obs.attached_clients, 0);
                        if let Some((at, worked)) = last_interrupt {
                            prop_assert!(worked, "a second interrupt in one stall episode");
                            prop_assert!(now - at >= 2000, "within the CLI's window");
                        }
                        last_interrupt = Some((now, false));
                    }
                    if let Action::Nudge { text } = action {
                        prop_assert_eq!(t.obs.attached_clients, 0);
                        if *text == p.rate_limit_resume_text {
                            prop_assert_eq!(cond, Condition::RateLimited);
                            continue;
                        }
                        prop_assert_eq!(cond, Condition::AtPrompt);
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

/// An input at a time, for the due-time equivalence below.
#[derive(Debug, Clone)]
enum Timed {
    Obs {
        hash: u8,
        cpu: u64,
        cond: u8,
        attached: bool,
        restart: bool,
        reset_in_s: u8,
        /// Not recognised as an agent (generic profile): only an `@argus-restart` makes it one.
        generic: bool,
    },
    Exit,
    PaneDied,
    Gone,
    Verdict(u8),
}

fn timed() -> impl Strategy<Value = (u16, Timed)> {
    let input = prop_oneof![
        6 => (0u8..3, 0u64..300, 0u8..7, any::<bool>(), any::<bool>(), 0u8..40, any::<bool>()).prop_map(
            |(hash, cpu, cond, attached, restart, reset_in_s, generic)| Timed::Obs {
                hash, cpu, cond, attached, restart, reset_in_s, generic,
            }
        ),
        1 => Just(Timed::Exit),
        1 => Just(Timed::PaneDied),
        1 => Just(Timed::Gone),
        1 => (0u8..6).prop_map(Timed::Verdict),
    ];
    // Gaps in 500 ms ticks: up to two minutes between inputs.
    (0u16..240, input)
}

fn verdict_of(n: u8) -> Verdict {
    match n {
        0 => Verdict::Continue,
        1 => Verdict::Extend,
        2 => Verdict::Nudge("go on".into()),
        3 => Verdict::Restart,
        4 => Verdict::Kill,
        _ => Verdict::NeedsHuman("why".into()),
    }
}

proptest! {
    /// `next_due` is never late: a supervisor that ticks a session only when its due time has
    /// come (on a 500 ms tick grid) decides exactly what one that ticks it every 500 ms decides.
    #[test]
    fn ticking_only_when_due_decides_the_same(inputs in proptest::collection::vec(timed(), 1..60)) {
        let p = Policy {
            nudge_dwell: std::time::Duration::from_secs(5),
            hard_stall: std::time::Duration::from_secs(90),
            triage_timeout: std::time::Duration::from_secs(3),
            rate_limit_cooldown: std::time::Duration::from_secs(20),
            restart_on_death: RestartOnDeath::Labelled,
            ..Policy::default()
        };
        let mut every = Track::new(0, None, None);
        let mut due_only = Track::new(0, None, None);
        let mut due: Option<i64> = None;
        let (mut fx_every, mut fx_due) = (Vec::new(), Vec::new());
        let mut now = 0i64;
        let mut cpu = 0u64;
        let mut feed = |now: i64, input: Option<Input>, due: &mut Option<i64>,
                        fx_every: &mut Vec<(i64, Effect)>, fx_due: &mut Vec<(i64, Effect)>| {
            match input {
                Some(i) => {
                    fx_every.extend(super::step(&mut every, i.clone(), now, &p, &CTX).effects.into_iter().map(|e| (now, e)));
                    let s = super::step(&mut due_only, i, now, &p, &CTX);
                    *due = s.next_due;
                    fx_due.extend(s.effects.into_iter().map(|e| (now, e)));
                }
                None => {
                    fx_every.extend(super::step(&mut every, Input::Tick, now, &p, &CTX).effects.into_iter().map(|e| (now, e)));
                    if due.is_some_and(|d| d <= now) {
                        let s = super::step(&mut due_only, Input::Tick, now, &p, &CTX);
                        *due = s.next_due;
                        fx_due.extend(s.effects.into_iter().map(|e| (now, e)));
                    }
                }
            }
        };
        for (gap, input) in inputs {
            for _ in 0..gap {
                now += 500;
                feed(now, None, &mut due, &mut fx_every, &mut fx_due);
            }
            now += 500;
            let input = match input {
                Timed::Obs { hash, cpu: c, cond, attached, restart, reset_in_s, generic } => {
                    cpu += c;
                    let mut o = obs(&hash.to_string(), cpu, condition(cond));
                    o.attached_clients = u32::from(attached);
                    if generic {
                        o.profile = argus_shared::profile::GENERIC.into();
                    }
                    if restart {
                        o.labels = BTreeMap::from([("restart".to_owned(), "claude -c".to_owned())]);
                    }
                    if reset_in_s > 0 {
                        o.rate_limit_reset_at = now / 1000 + i64::from(reset_in_s);
                    }
                    seen(o)
                }
                Timed::Exit => Input::AgentExited(INC),
                Timed::PaneDied => Input::PaneDied(0),
                Timed::Gone => Input::Gone,
                Timed::Verdict(v) => Input::Verdict(verdict_of(v)),
            };
            feed(now, Some(input), &mut due, &mut fx_every, &mut fx_due);
        }
        // Let every timer run out.
        for _ in 0..600 {
            now += 500;
            feed(now, None, &mut due, &mut fx_every, &mut fx_due);
        }
        prop_assert_eq!(fx_every, fx_due);
    }
}

#[test]
fn a_silent_node_gets_no_nudge_and_no_time_driven_step() {
    let p = policy();
    let mut t = Track::new(0, None, None);
    step(&mut t, seen(obs("a", 0, Condition::AtPrompt)), 0, &p, &CTX);
    let down = Ctx {
        node_up: false,
        destructive_allowed: false,
        ..CTX
    };
    let mut fx = Vec::new();
    for at in (500..600_000).step_by(500) {
        fx.extend(step(&mut t, Input::Tick, at, &p, &down));
    }
    assert!(fx.is_empty(), "{fx:?}");
    // Triage answered "nudge" while the node went silent: no nudge, the ladder waits.
    t.ladder.enter(Rung::Triaging, 600_000);
    let fx = step(
        &mut t,
        Input::Verdict(Verdict::Nudge("go on".into())),
        600_000,
        &p,
        &down,
    );
    assert!(commands(&fx).is_empty(), "{fx:?}");
    assert_eq!(t.ladder.rung, Rung::Warned);
}

// === Hangs that still animate ===

/// A busy observation at second `i`: the raw screen, its output time and the agent's CPU move
/// every time (the spinner, the timer), the progress hash is `progress`.
fn animating(i: i64, progress: &str) -> Observation {
    Observation {
        progress_hash: progress.into(),
        last_output_ms: i * 1000,
        ..obs(&format!("frame{i}"), (i as u64) * 500, Condition::Thinking)
    }
}

fn hang_policy() -> Policy {
    Policy {
        animated_hang: std::time::Duration::from_secs(30),
        nudge_dwell: std::time::Duration::from_secs(10),
        ..Policy::default()
    }
}

/// Observes every second from `from` to `to` (exclusive) with ticks between, collecting effects.
fn animate(
    t: &mut Track,
    from: i64,
    to: i64,
    p: &Policy,
    progress: impl Fn(i64) -> String,
) -> Vec<Effect> {
    let mut fx = Vec::new();
    for i in from..to {
        fx.extend(step(t, seen(animating(i, &progress(i))), i * 1000, p, &CTX));
        fx.extend(step(t, Input::Tick, i * 1000 + 500, p, &CTX));
    }
    fx
}

#[test]
fn a_spinner_over_no_new_output_is_hung_and_triage_decides_first() {
    let p = hang_policy();
    let mut t = Track::new(0, None, None);
    // Busy and animating for 29 s: working, whatever the spinner does.
    let fx = animate(&mut t, 0, 29, &p, |_| "same".into());
    assert_eq!(t.state, SessionState::Working, "{fx:?}");
    assert!(commands(&fx).is_empty());
    // At 30 s without progress: stalled, with its own reason, and warned.
    let fx = animate(&mut t, 29, 32, &p, |_| "same".into());
    assert_eq!(t.state, SessionState::Stalled, "{fx:?}");
    assert!(
        t.reason.starts_with("animated but no progress for 30 s"),
        "{}",
        t.reason
    );
    assert_eq!(notified(&fx, "idle_warning"), 1);
    // After the dwell: triage with its own condition; never a nudge or an interrupt first.
    let fx = animate(&mut t, 32, 45, &p, |_| "same".into());
    assert!(commands(&fx).is_empty(), "{fx:?}");
    let cases: Vec<&TriageCase> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::Triage(c) => Some(c),
            _ => None,
        })
        .collect();
    assert_eq!(cases.len(), 1, "{fx:?}");
    assert_eq!(cases[0].condition, ANIMATED_HANG);
    assert!(cases[0].idle_for_s >= 40, "{:?}", cases[0]);
    assert_eq!(t.ladder.rung, Rung::Triaging);
    // A new output line: working again, the ladder back at the bottom.
    let fx = animate(&mut t, 45, 47, &p, |i| format!("new{i}"));
    assert_eq!(t.state, SessionState::Working, "{fx:?}");
    assert_eq!(t.ladder.rung, Rung::Clear);
}

#[test]
fn a_slow_answer_that_progresses_is_never_hung() {
    let p = hang_policy();
    let mut t = Track::new(0, None, None);
    // A new line every 20 s (less often than the dwell, more often than the hang time).
    let fx = animate(&mut t, 0, 300, &p, |i| format!("line{}", i / 20));
    assert_eq!(t.state, SessionState::Working);
    assert!(
        fx.iter()
            .all(|e| !matches!(e, Effect::Triage(_) | Effect::Command { .. }))
    );
    assert_eq!(notified(&fx, "idle_warning"), 0);
}

#[test]
fn no_progress_hash_means_no_animated_hang() {
    // An older node agent sends none: busy stays working, as before.
    let p = hang_policy();
    let mut t = Track::new(0, None, None);
    let fx = animate(&mut t, 0, 120, &p, |_| String::new());
    assert_eq!(t.state, SessionState::Working);
    assert_eq!(notified(&fx, "idle_warning"), 0);
}

#[test]
fn the_hang_time_is_per_profile_and_next_due_wakes_for_it() {
    let mut p = hang_policy();
    p.animated_hang_profiles
        .insert("claude".into(), std::time::Duration::from_secs(90).into());
    let mut t = Track::new(0, None, None);
    let s = super::step(&mut t, seen(animating(0, "same")), 0, &p, &CTX);
    assert_eq!(s.next_due, Some(90_000), "woken when the hang is due");
    let fx = animate(&mut t, 1, 80, &p, |_| "same".into());
    assert_eq!(t.state, SessionState::Working, "{fx:?}");
    animate(&mut t, 80, 92, &p, |_| "same".into());
    assert_eq!(t.state, SessionState::Stalled);
}

#[test]
fn a_restart_resumes_the_conversation_the_agent_reported() {
    let mut t = Track::new(0, None, None);
    let mut o = obs("a", 0, Condition::None);
    o.start_command = "\"claude --continue\"".into();
    step(&mut t, seen(o.clone()), 0, &policy(), &CTX);
    assert_eq!(t.restart_command().as_deref(), Some("claude --continue"));
    o.agent_session_id = "2b246e8d-f2c5".into();
    step(&mut t, seen(o.clone()), 1000, &policy(), &CTX);
    assert_eq!(
        t.restart_command().as_deref(),
        Some("claude --resume 2b246e8d-f2c5")
    );
    // An operator's restart label is used as written.
    o.labels
        .insert(labels::RESTART.to_owned(), "claude --continue".into());
    step(&mut t, seen(o), 2000, &policy(), &CTX);
    assert_eq!(t.restart_command().as_deref(), Some("claude --continue"));
}

/// A node's silence is not idleness: after its messages resume (a stopped node agent, a cut-off
/// stream, a controller restart), a stall and the ladder's waits count from then, so a fault
/// delays an action and never brings it on.
#[test]
fn time_the_node_was_silent_is_not_idleness() {
    let p = Policy::default();
    let commands = |fx: &[Effect]| {
        fx.iter()
            .filter(|e| matches!(e, Effect::Command { .. }))
            .count()
    };
    // Busy until 10 s, then the node is silent until 100 s: nothing counts as idle before
    // 100 s plus the idle checks.
    let mut t = Track::new(0, None, None);
    for at in (0..=10_000).step_by(1000) {
        step(
            &mut t,
            seen(obs(&at.to_string(), 0, Condition::None)),
            at,
            &p,
            &CTX,
        );
    }
    let back = Ctx {
        node_back_ms: 100_000,
        ..CTX
    };
    let idle_after = i64::from(p.idle_checks) * t.probe_ms;
    for at in (100_000..100_000 + idle_after).step_by(250) {
        step(&mut t, Input::Tick, at, &p, &back);
        assert_eq!(t.state, SessionState::Working, "stalled at {at}");
    }
    // Idle at its prompt and warned before the silence: the nudge waits a whole dwell after it.
    let mut t = Track::new(0, None, None);
    let mut fx = Vec::new();
    for at in (0..=10_000).step_by(500) {
        fx.extend(step(
            &mut t,
            seen(obs("same", 0, Condition::AtPrompt)),
            at,
            &p,
            &CTX,
        ));
        fx.extend(step(&mut t, Input::Tick, at + 250, &p, &CTX));
    }
    assert_eq!(t.state, SessionState::Stalled);
    assert_eq!(commands(&fx), 0, "{fx:?}");
    let dwell = p.nudge_dwell.as_millis() as i64;
    for at in (100_000..100_000 + dwell).step_by(250) {
        let fx = step(&mut t, Input::Tick, at, &p, &back);
        assert_eq!(
            commands(&fx),
            0,
            "acted at {at}, within the dwell after the silence: {fx:?}"
        );
    }
    let later: Vec<Effect> = (0..20)
        .flat_map(|i| step(&mut t, Input::Tick, 100_000 + dwell + i * 250, &p, &back))
        .collect();
    assert_eq!(
        commands(&later),
        1,
        "the nudge comes once the dwell has passed: {later:?}"
    );
}
