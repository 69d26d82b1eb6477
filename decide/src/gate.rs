//! Quality gates, pure: when a session's gate runs, how its outcome is judged, and what follows.
//!
//! A session declares a gate command (`@argus-gate`, else the policy's `gate` for its group). The
//! node agent runs it in the session's working directory when the controller asks (a `Gate`
//! command); the decision stays here. The gate runs at a finish point:
//! - the agent sits at its prompt after a stretch of work: it was seen working since the gate
//!   last ran (any activity after first sight arms the gate) and then stayed idle for the
//!   policy's `idle_checks` probe intervals at its prompt (the moment it would turn stalled);
//! - the agent exited with status 0 (the session completed).
//!
//! The ladder of one episode: a pass ends it (`gate_passed`; the idle ladder rests until the
//! agent works again: a finished agent is not nudged to "continue"); a failure below
//! `gate_attempts` sends the agent back with the failure's last lines as feedback; the last
//! failure calls a person (`gate_escalated`, an incident) and stops both runs and nudges until a
//! new agent process appears. A verdict line in the output (`READY`, `NEEDS_WORK`, `NOT_READY`,
//! alone or followed by `:` and text; the last one wins) overrules the exit status: pass,
//! retry with feedback, escalate at once. A gate that ran past its time limit is a failure; a
//! gate that could not be run (node refused it, no answer) counts no attempt.

use argus_shared::command::{Action, is_refused};
use argus_shared::labels;
use argus_shared::profile::Condition;
use argus_shared::state::SessionState;
use argus_shared::time::UnixMs;
use serde::{Deserialize, Serialize};

use crate::detect::{Ctx, Track};
use crate::effect::{Effect, Notice};
use crate::escalate::Rung;
use crate::policy::Policy;

/// The gate's state in one session; part of [`crate::detect::Durable`], so attempts survive a
/// controller restart.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateState {
    /// Failed runs since the last pass (or since this agent started).
    pub attempts: u32,
    /// A run was ordered then and its outcome is awaited (Unix ms).
    pub running_since: Option<UnixMs>,
    /// The agent worked since the gate last ran: the next finish point runs it.
    pub armed: bool,
    /// The last failure called a person: no more runs or feedback until a new agent process.
    pub escalated: bool,
}

/// What the node agent reported for one gate run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateResult {
    /// The gate ran: its exit status (-1 when killed or not started), whether it ran past its
    /// time limit, and the end of its output.
    Ran {
        exit: i32,
        timed_out: bool,
        output: String,
    },
    /// The gate was not run (refused, not answered); the reason.
    NotRun(String),
}

/// How a run is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judgement {
    /// The work is ready.
    Pass,
    /// Send the agent back with the failure as feedback.
    Retry,
    /// Call a person now.
    Escalate,
}

/// The session's gate command: its `@argus-gate` label, else the policy's `gate`.
pub fn command<'a>(t: &'a Track, policy: &'a Policy) -> Option<&'a str> {
    t.obs
        .label(labels::GATE)
        .or_else(|| Some(policy.gate.as_str()).filter(|g| !g.trim().is_empty()))
}

/// The agent was seen working (any activity after first sight): the next finish point runs
/// the gate, when the session has one.
pub(crate) fn worked(t: &mut Track, policy: &Policy) {
    let g = &t.durable.gate;
    if g.running_since.is_none() && !g.armed && command(t, policy).is_some() {
        t.durable.gate.armed = true;
    }
}

/// How long an ordered run may take before its outcome counts as lost.
fn lost_after(policy: &Policy) -> i64 {
    (policy.gate_timeout + policy.command_timeout).as_millis() as i64 + 5_000
}

/// When a running gate's outcome counts as lost (the session needs a tick then).
pub(crate) fn due(g: &GateState, policy: &Policy) -> Option<UnixMs> {
    g.running_since.map(|since| since + lost_after(policy))
}

/// The prompt finish point, checked by the tick once the idle check ran: true while the idle
/// ladder must wait (a gate was ordered now, or one runs).
pub(crate) fn at_prompt(
    t: &mut Track,
    now: UnixMs,
    policy: &Policy,
    ctx: &Ctx,
    fx: &mut Vec<Effect>,
) -> bool {
    if let Some(since) = t.durable.gate.running_since {
        if now - since < lost_after(policy) {
            return true;
        }
        t.durable.gate.running_since = None;
        fx.push(Effect::Notify(Notice::GateNotRun(
            "no outcome came back from the node agent in time".into(),
        )));
    }
    let finished = t.state == SessionState::Stalled
        && t.obs.condition == Condition::AtPrompt
        && t.durable.gate.armed
        && !t.durable.gate.escalated
        && t.agent_evidence(ctx.session_name, policy).is_some();
    if !finished {
        return false;
    }
    run(t, "at its prompt after a stretch of work", now, policy, fx)
}

/// The exit finish point: the agent exited with status 0.
pub(crate) fn at_exit(
    t: &mut Track,
    now: UnixMs,
    policy: &Policy,
    ctx: &Ctx,
    fx: &mut Vec<Effect>,
) {
    if t.durable.gate.running_since.is_none()
        && !t.durable.gate.escalated
        && t.agent_evidence(ctx.session_name, policy).is_some()
    {
        run(t, "the agent exited with status 0", now, policy, fx);
    }
}

fn run(t: &mut Track, why: &str, now: UnixMs, policy: &Policy, fx: &mut Vec<Effect>) -> bool {
    let Some(command) = command(t, policy).map(str::to_owned) else {
        return false;
    };
    let timeout_ms = policy.gate_timeout.as_millis().min(u128::from(u32::MAX)) as u32;
    let Ok(action) = Action::gate(&command, timeout_ms) else {
        return false;
    };
    let g = &mut t.durable.gate;
    g.armed = false;
    g.running_since = Some(now);
    fx.push(Effect::Command {
        action,
        reason: format!(
            "quality gate, attempt {} of {}: {why}",
            g.attempts + 1,
            policy.gate_attempts
        ),
        incarnation: None,
    });
    true
}

/// Applies what the node agent reported for a run: pass, feedback, or a person.
pub(crate) fn outcome(
    t: &mut Track,
    result: GateResult,
    now: UnixMs,
    policy: &Policy,
    fx: &mut Vec<Effect>,
) {
    if t.durable.gate.running_since.take().is_none() {
        // Not ordered by this episode (a late answer after it counted as lost): ignored.
        return;
    }
    let (exit, timed_out, output) = match result {
        GateResult::NotRun(why) => {
            // Counts no attempt; the next finish point tries again.
            t.durable.gate.armed = true;
            fx.push(Effect::Notify(Notice::GateNotRun(why)));
            return;
        }
        GateResult::Ran {
            exit,
            timed_out,
            output,
        } => (exit, timed_out, output),
    };
    let max = policy.gate_attempts;
    let lines = policy.gate_feedback_lines as usize;
    let bytes = policy.gate_feedback_bytes;
    let g = &mut t.durable.gate;
    let attempt = g.attempts + 1;
    let judgement = judge(exit, timed_out, &output);
    if judgement == Judgement::Pass {
        g.attempts = 0;
        t.ladder.enter(Rung::Done, now);
        fx.push(Effect::Notify(Notice::GatePassed { attempt }));
        return;
    }
    g.attempts = attempt;
    let alive = t.state.is_alive() && t.obs.agent.is_some();
    if judgement == Judgement::Retry && attempt < max && alive {
        let command = command(t, policy).unwrap_or_default().to_owned();
        let text = feedback(
            &command,
            exit,
            timed_out,
            &output,
            attempt,
            max,
            (lines, bytes),
        );
        fx.push(Effect::Notify(Notice::GateFailed {
            attempt,
            max,
            tail: tail(&output, lines, bytes),
        }));
        if t.obs.attached_clients > 0 {
            // A person is at the session and sees it; never typed over them.
            fx.push(Effect::Notify(Notice::NudgeHeld));
            t.durable.gate.armed = true;
            return;
        }
        // The idle ladder waits a dwell from here; the feedback is not an idle nudge and
        // does not use the nudge budget.
        t.ladder.enter(Rung::Warned, now);
        fx.push(Effect::Command {
            action: Action::Nudge { text },
            reason: format!("quality gate failed (attempt {attempt} of {max}): feedback"),
            incarnation: t.obs.agent,
        });
        return;
    }
    t.durable.gate.escalated = true;
    t.ladder.enter(Rung::Done, now);
    let why = match judgement {
        Judgement::Escalate => "the gate says NOT_READY".to_owned(),
        _ if !alive => "the agent is gone and its work fails the gate".to_owned(),
        _ => format!("the gate failed {attempt} times"),
    };
    fx.push(Effect::Notify(Notice::GateEscalated {
        attempts: attempt,
        why,
        tail: tail(&output, lines, bytes),
    }));
}

/// The last verdict line of `output`: `READY`, `NEEDS_WORK` or `NOT_READY`, alone on its line
/// (surrounding spaces allowed) or followed by `:` or a space and text.
pub fn verdict_line(output: &str) -> Option<Judgement> {
    output.lines().rev().find_map(|line| {
        let line = line.trim();
        [
            ("NOT_READY", Judgement::Escalate),
            ("NEEDS_WORK", Judgement::Retry),
            ("READY", Judgement::Pass),
        ]
        .into_iter()
        .find_map(|(word, j)| {
            let rest = line.strip_prefix(word)?;
            (rest.is_empty() || rest.starts_with([':', ' '])).then_some(j)
        })
    })
}

/// Judges one run: a verdict line first, else exit status 0 passes; a timeout always fails.
pub fn judge(exit: i32, timed_out: bool, output: &str) -> Judgement {
    if timed_out {
        return Judgement::Retry;
    }
    match verdict_line(output) {
        Some(j) => j,
        None if exit == 0 => Judgement::Pass,
        None => Judgement::Retry,
    }
}

/// The last `lines` non-empty lines of `output`, made safe to type into an agent: control and
/// invisible formatting characters become spaces, runs of spaces shrink to one, lines are joined
/// with " | ", and the result is cut (at a character boundary, keeping the end) to `max_bytes`.
pub fn tail(output: &str, lines: usize, max_bytes: usize) -> String {
    let kept: Vec<String> = output
        .lines()
        .map(clean_line)
        .filter(|l| !l.is_empty())
        .collect();
    let from = kept.len().saturating_sub(lines);
    let joined = kept[from..].join(" | ");
    if joined.len() <= max_bytes {
        return joined;
    }
    let mut start = joined.len() - max_bytes.saturating_sub(4);
    while !joined.is_char_boundary(start) {
        start += 1;
    }
    format!("... {}", joined[start..].trim_start())
}

fn clean_line(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    for c in line.chars() {
        let c = if is_refused(c) { ' ' } else { c };
        if c == ' ' && (out.is_empty() || out.ends_with(' ')) {
            continue;
        }
        out.push(c);
    }
    out.trim_end().to_owned()
}

/// The feedback nudge for a failed run `attempt` of `max` (at most `max_bytes` of the gate's
/// output in it). Always valid nudge text.
pub fn feedback(
    command: &str,
    exit: i32,
    timed_out: bool,
    output: &str,
    attempt: u32,
    max: u32,
    (lines, max_bytes): (usize, usize),
) -> String {
    let how = if timed_out {
        "ran past its time limit".to_owned()
    } else if verdict_line(output) == Some(Judgement::Retry) {
        "says NEEDS_WORK".to_owned()
    } else {
        format!("failed with exit status {exit}")
    };
    let command = clean_line(command);
    let command = if command.len() > 200 {
        format!("{}...", cut(&command, 200))
    } else {
        command
    };
    let tail = tail(output, lines, max_bytes);
    let tail = if tail.is_empty() {
        "(no output)".to_owned()
    } else {
        tail
    };
    format!(
        "The quality gate `{command}` {how} (attempt {attempt} of {max}). Its last lines: {tail} -- Please fix this, then finish again."
    )
}

/// The first at most `max` bytes of `s`, at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::{Incarnation, Input, Observation, step};

    const INC: Incarnation = Incarnation {
        pid: 100,
        start_time: 7,
    };

    fn obs(hash: &str, condition: Condition) -> Observation {
        let mut labels = std::collections::BTreeMap::new();
        labels.insert("gate".to_owned(), "make check".to_owned());
        Observation {
            pane_id: "%1".into(),
            agent: Some(INC),
            agent_name: "claude".into(),
            profile: "claude".into(),
            screen_hash: hash.into(),
            condition,
            start_command: "claude".into(),
            exit_status: -1,
            labels,
            ..Default::default()
        }
    }

    /// A session driven on a simulated clock: observations and ticks every second.
    struct Run {
        t: Track,
        now: UnixMs,
        p: Policy,
        fx: Vec<Effect>,
    }

    impl Run {
        fn new() -> Self {
            let mut r = Self {
                t: Track::new(0, None, None),
                now: 0,
                p: Policy::default(),
                fx: Vec::new(),
            };
            r.input(Input::Observed(Box::new(obs("start", Condition::AtPrompt))));
            r
        }

        fn input(&mut self, i: Input) {
            let s = step(&mut self.t, i, self.now, &self.p, &Ctx::default());
            self.fx.extend(s.effects);
        }

        /// The agent works (the screen moves), then sits at its prompt; ticks until a gate
        /// command is ordered (or 30 s pass).
        fn work_then_prompt(&mut self, n: u32) -> Option<Action> {
            self.now += 1000;
            self.input(Input::Observed(Box::new(obs(
                &format!("w{n}"),
                Condition::Thinking,
            ))));
            self.now += 1000;
            self.input(Input::Observed(Box::new(obs(
                &format!("p{n}"),
                Condition::AtPrompt,
            ))));
            for _ in 0..30 {
                self.now += 1000;
                self.input(Input::Tick);
                if let Some(a) = self.take_gate() {
                    return Some(a);
                }
            }
            None
        }

        fn take_gate(&mut self) -> Option<Action> {
            let at = self.fx.iter().position(|e| {
                matches!(
                    e,
                    Effect::Command {
                        action: Action::Gate { .. },
                        ..
                    }
                )
            })?;
            match self.fx.remove(at) {
                Effect::Command { action, .. } => Some(action),
                _ => None,
            }
        }

        fn report(&mut self, exit: i32, output: &str) {
            self.now += 500;
            self.input(Input::Gate(GateResult::Ran {
                exit,
                timed_out: false,
                output: output.into(),
            }));
        }

        fn nudges(&self) -> Vec<String> {
            self.fx
                .iter()
                .filter_map(|e| match e {
                    Effect::Command {
                        action: Action::Nudge { text },
                        ..
                    } => Some(text.clone()),
                    _ => None,
                })
                .collect()
        }

        fn notices(&self, kind: &str) -> usize {
            self.fx
                .iter()
                .filter(|e| matches!(e, Effect::Notify(n) if n.kind() == kind))
                .count()
        }
    }

    #[test]
    fn a_gate_runs_at_the_prompt_after_work_and_not_before() {
        let mut r = Run::new();
        // Sitting at the prompt from the start is no finish point: nothing was done.
        for _ in 0..10 {
            r.now += 1000;
            r.input(Input::Tick);
        }
        assert!(r.take_gate().is_none(), "{:?}", r.fx);
        let gate = r.work_then_prompt(1).expect("the gate runs");
        assert!(matches!(gate, Action::Gate { ref command, .. } if command == "make check"));
        // While it runs the idle ladder waits: no idle nudge, whatever the dwell.
        for _ in 0..120 {
            r.now += 1000;
            r.input(Input::Tick);
        }
        assert!(
            r.nudges().is_empty() && r.take_gate().is_none(),
            "{:?}",
            r.fx
        );
    }

    #[test]
    fn fails_twice_then_passes() {
        let mut r = Run::new();
        for n in 1..=2 {
            r.work_then_prompt(n).expect("gate runs");
            r.report(1, &format!("test_add FAILED: expected 4, got {n}"));
            let nudges = r.nudges();
            assert_eq!(nudges.len(), n as usize, "{:?}", r.fx);
            let last = nudges.last().expect("feedback");
            assert!(last.contains(&format!("expected 4, got {n}")), "{last}");
            assert!(last.contains(&format!("attempt {n} of 3")), "{last}");
        }
        r.work_then_prompt(3).expect("gate runs a third time");
        r.report(0, "all 12 tests passed");
        assert_eq!(r.notices("gate_passed"), 1);
        assert_eq!(r.notices("gate_failed"), 2);
        assert_eq!(r.nudges().len(), 2);
        assert_eq!(r.t.durable.gate.attempts, 0);
        // Done: a finished agent is not nudged to "continue" while it rests.
        for _ in 0..300 {
            r.now += 1000;
            r.input(Input::Tick);
        }
        assert_eq!(r.nudges().len(), 2, "{:?}", r.fx);
    }

    #[test]
    fn always_failing_gate_runs_three_times_then_calls_a_person_once() {
        let mut r = Run::new();
        let mut runs = 0;
        for n in 1..=6 {
            if r.work_then_prompt(n).is_some() {
                runs += 1;
                r.report(2, "error: build failed");
            }
        }
        assert_eq!(runs, 3);
        assert_eq!(r.nudges().len(), 2, "{:?}", r.fx);
        assert_eq!(r.notices("gate_escalated"), 1);
        assert!(r.t.durable.gate.escalated);
        // A new agent process starts a new episode.
        r.now += 1000;
        let mut o = obs("new", Condition::AtPrompt);
        o.agent = Some(Incarnation {
            pid: 101,
            start_time: 9,
        });
        r.input(Input::Observed(Box::new(o)));
        assert!(!r.t.durable.gate.escalated);
    }

    #[test]
    fn verdicts_and_lost_runs() {
        let mut r = Run::new();
        r.work_then_prompt(1).expect("gate runs");
        r.report(0, "NOT_READY: the design is wrong");
        assert_eq!(r.notices("gate_escalated"), 1);
        assert!(r.nudges().is_empty());

        let mut r = Run::new();
        r.work_then_prompt(1).expect("gate runs");
        r.report(0, "NEEDS_WORK: add tests");
        assert_eq!(r.nudges().len(), 1);
        // A run the node never answers counts as lost after its time limit, no attempt.
        r.work_then_prompt(2).expect("gate runs");
        r.now += (r.p.gate_timeout + r.p.command_timeout).as_millis() as i64 + 6_000;
        r.input(Input::Tick);
        assert_eq!(r.notices("gate_not_run"), 1);
        assert_eq!(r.t.durable.gate.attempts, 1);
        assert!(r.t.durable.gate.running_since.is_none());
        // A refused run counts no attempt either, and the next finish point tries again.
        r.work_then_prompt(3).expect("gate runs");
        r.input(Input::Gate(GateResult::NotRun("no such session".into())));
        assert_eq!(r.t.durable.gate.attempts, 1);
        assert!(r.t.durable.gate.armed);
    }

    #[test]
    fn an_agent_that_exits_0_is_gated_and_a_failure_calls_a_person() {
        let mut r = Run::new();
        r.now += 1000;
        r.input(Input::Observed(Box::new(obs("w", Condition::Thinking))));
        r.now += 1000;
        let mut o = obs("w", Condition::None);
        o.pane_dead = true;
        o.exit_status = 0;
        r.input(Input::Observed(Box::new(o)));
        assert!(r.take_gate().is_some(), "{:?}", r.fx);
        r.report(1, "lint: 3 errors");
        assert!(r.nudges().is_empty(), "a gone agent cannot be nudged");
        assert_eq!(r.notices("gate_escalated"), 1);
    }

    #[test]
    fn verdict_lines_overrule_the_exit_status() {
        assert_eq!(judge(0, false, "ok"), Judgement::Pass);
        assert_eq!(judge(1, false, "FAILED"), Judgement::Retry);
        assert_eq!(judge(1, false, "x\nREADY\n"), Judgement::Pass);
        assert_eq!(
            judge(0, false, "NEEDS_WORK: tests missing"),
            Judgement::Retry
        );
        assert_eq!(judge(0, false, "  NOT_READY  "), Judgement::Escalate);
        // The last verdict line wins; words that only start like one are not verdicts.
        assert_eq!(judge(1, false, "NOT_READY\nREADY"), Judgement::Pass);
        assert_eq!(judge(1, false, "READYMADE"), Judgement::Retry);
        assert_eq!(judge(0, false, "ALREADY done"), Judgement::Pass);
        // A timeout fails whatever was printed before it.
        assert_eq!(judge(0, true, "READY"), Judgement::Retry);
    }

    #[test]
    fn feedback_is_bounded_and_typeable() {
        let out = "line 1\n\u{1b}[31mtest_add FAILED\u{1b}[0m\r\n\u{202E}evil\u{2028}x\n\n";
        let f = feedback("cargo test", 101, false, out, 1, 3, (5, 500));
        argus_shared::command::validate_nudge(&f).expect("typeable");
        assert!(f.contains("test_add FAILED"), "{f}");
        assert!(f.contains("line 1 | "), "{f}");
        assert!(
            f.contains("exit status 101") && f.contains("attempt 1 of 3"),
            "{f}"
        );
        let long = "é".repeat(10_000);
        let f = feedback("make", 2, false, &long, 2, 3, (20, 1000));
        argus_shared::command::validate_nudge(&f).expect("typeable");
        assert!(f.len() < 1400, "{}", f.len());
        let f = feedback("make", 0, true, "", 1, 3, (20, 1000));
        assert!(f.contains("time limit") && f.contains("(no output)"), "{f}");
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let out: String = (1..=50).map(|i| format!("l{i}\n")).collect();
        assert_eq!(tail(&out, 3, 100), "l48 | l49 | l50");
        assert_eq!(tail(&out, 3, 8), "... l50");
    }
}
