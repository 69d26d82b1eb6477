//! Git discipline: a reminder to commit. The node agent reports since when a session's work tree
//! has held uncommitted work (`Input::WorkTree`); when that work is older than the policy's
//! `commit_reminder_after`, the agent gets one reminder nudge per `commit_reminder_after`, only
//! at its prompt (never while it works, waits for a person or a person is attached), never while
//! a quality gate runs.

use argus_shared::command::Action;
use argus_shared::profile::Condition;
use argus_shared::time::UnixMs;

use crate::detect::{Ctx, Track};
use crate::effect::Effect;
use crate::policy::Policy;

/// When the next reminder may be typed, if the work tree holds uncommitted work and reminders
/// are on.
pub(crate) fn due(t: &Track, policy: &Policy) -> Option<UnixMs> {
    let after = policy.commit_reminder_after.as_millis() as i64;
    let since = t.durable.dirty_since;
    if after == 0 || since <= 0 {
        return None;
    }
    let again = t.durable.commit_reminded_at.map_or(0, |at| at + after);
    Some((since + after).max(again))
}

/// Types the reminder when it is due and the agent sits at its prompt.
pub(crate) fn remind(t: &mut Track, now: UnixMs, policy: &Policy, ctx: &Ctx, fx: &mut Vec<Effect>) {
    let Some(due) = due(t, policy) else {
        return;
    };
    if now < due
        || !ctx.node_up
        || !t.state.is_alive()
        || t.obs.agent.is_none()
        || t.obs.condition != Condition::AtPrompt
        || t.obs.attached_clients > 0
        || t.durable.gate.running_since.is_some()
        || t.agent_evidence(ctx.session_name, policy).is_none()
    {
        return;
    }
    t.durable.commit_reminded_at = Some(now);
    fx.push(Effect::Command {
        action: Action::Nudge {
            text: policy.commit_reminder_text.clone(),
        },
        reason: format!(
            "uncommitted work for {} min: reminder to commit",
            (now - t.durable.dirty_since) / 60_000
        ),
        incarnation: t.obs.agent,
    });
}

#[cfg(test)]
mod tests {
    use argus_shared::command::Action;
    use argus_shared::profile::Condition;

    use crate::detect::{Ctx, Effect, Incarnation, Input, Observation, Track, step};
    use crate::policy::Policy;

    fn obs(condition: Condition) -> Input {
        Input::Observed(Box::new(Observation {
            agent: Some(Incarnation {
                pid: 1,
                start_time: 1,
            }),
            profile: "claude".into(),
            screen_hash: format!("{condition:?}"),
            condition,
            exit_status: -1,
            ..Default::default()
        }))
    }

    fn reminders(fx: &[Effect]) -> usize {
        fx.iter()
            .filter(|e| matches!(e, Effect::Command { action: Action::Nudge { text }, .. } if text.contains("commit")))
            .count()
    }

    #[test]
    fn one_reminder_per_window_only_at_the_prompt() {
        let p = Policy::default();
        let min = 60_000;
        let ctx = Ctx::default();
        let mut t = Track::new(0, None, None);
        let sent = std::cell::Cell::new(0);
        let at = |t: &mut Track, i: Input, now: i64| {
            let s = step(t, i, now, &p, &ctx);
            sent.set(sent.get() + reminders(&s.effects));
            s.next_due
        };
        at(&mut t, obs(Condition::Thinking), 0);
        at(&mut t, Input::WorkTree { dirty_since_ms: 1 }, 1);
        // Old enough at 30 min, but the agent works: nothing.
        at(&mut t, Input::Tick, 31 * min);
        assert_eq!(sent.get(), 0);
        // At its prompt: one reminder, then none within the window.
        at(&mut t, obs(Condition::AtPrompt), 32 * min);
        assert_eq!(sent.get(), 1);
        at(&mut t, Input::Tick, 40 * min);
        at(&mut t, Input::Tick, 61 * min);
        assert_eq!(sent.get(), 1);
        at(&mut t, Input::Tick, 62 * min);
        assert_eq!(sent.get(), 2);
        // Committed: no more.
        at(&mut t, Input::WorkTree { dirty_since_ms: 0 }, 63 * min);
        at(&mut t, Input::Tick, 200 * min);
        assert_eq!(sent.get(), 2);
    }
}
