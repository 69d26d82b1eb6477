//! Guarded files, the controller's half: the node agent restores a guarded file by itself (it
//! is the one watching with inotify) and reports it; the core records it and decides how the
//! agent is told: one warning nudge, typed only at its prompt and never while a person is
//! attached (held until then; a later restore replaces a warning not yet typed).

use argus_shared::command::{Action, validate_nudge};
use argus_shared::profile::Condition;

use crate::detect::{Ctx, Track};
use crate::effect::{Effect, Notice};
use crate::policy::Policy;

/// A guarded file was restored on the node: announce it and warn the agent.
pub(crate) fn restored(
    t: &mut Track,
    path: &str,
    detail: String,
    policy: &Policy,
    ctx: &Ctx,
    fx: &mut Vec<Effect>,
) {
    fx.push(Effect::Notify(Notice::GuardRestored(detail)));
    if t.agent_evidence(ctx.session_name, policy).is_none() {
        return;
    }
    let path: String = path
        .chars()
        .map(|c| {
            if argus_shared::command::is_refused(c) {
                ' '
            } else {
                c
            }
        })
        .take(300)
        .collect();
    let text = format!(
        "Argus restored {path}: it is a guarded file and must not be edited (its rules stay as they are). Your change was kept aside; carry on without changing {path}."
    );
    if validate_nudge(&text).is_ok() {
        t.durable.guard_warning = Some(text);
    }
    deliver(t, ctx, fx);
}

/// Types a held warning once the agent sits at its prompt with nobody attached.
pub(crate) fn deliver(t: &mut Track, ctx: &Ctx, fx: &mut Vec<Effect>) {
    if t.durable.guard_warning.is_none()
        || !ctx.node_up
        || !t.state.is_alive()
        || t.obs.condition != Condition::AtPrompt
        || t.obs.attached_clients > 0
    {
        return;
    }
    if let Some(text) = t.durable.guard_warning.take() {
        fx.push(Effect::Command {
            action: Action::Nudge { text },
            reason: "guarded file restored: the agent is warned".into(),
            incarnation: t.obs.agent,
        });
    }
}

#[cfg(test)]
mod tests {
    use argus_shared::command::Action;
    use argus_shared::profile::Condition;

    use crate::detect::{Ctx, Effect, Incarnation, Input, Observation, Track, step};
    use crate::policy::Policy;

    fn obs(condition: Condition, attached: u32) -> Input {
        Input::Observed(Box::new(Observation {
            agent: Some(Incarnation {
                pid: 1,
                start_time: 1,
            }),
            profile: "claude".into(),
            screen_hash: format!("{condition:?}{attached}"),
            condition,
            attached_clients: attached,
            exit_status: -1,
            ..Default::default()
        }))
    }

    fn warnings(fx: &[Effect]) -> usize {
        fx.iter()
            .filter(|e| matches!(e, Effect::Command { action: Action::Nudge { text }, .. } if text.starts_with("Argus restored RULES.md")))
            .count()
    }

    #[test]
    fn the_warning_waits_for_the_prompt_and_for_nobody_attached() {
        let p = Policy::default();
        let ctx = Ctx::default();
        let mut t = Track::new(0, None, None);
        step(&mut t, obs(Condition::Thinking, 0), 0, &p, &ctx);
        let restored = || Input::GuardRestored {
            path: "RULES.md".into(),
            detail: "guarded file RULES.md was changed: restored from git HEAD".into(),
        };
        let fx = step(&mut t, restored(), 100, &p, &ctx).effects;
        assert!(
            fx.iter()
                .any(|e| matches!(e, Effect::Notify(n) if n.kind() == "guard_restored"))
        );
        assert_eq!(warnings(&fx), 0, "never typed while the agent works");
        let fx = step(&mut t, obs(Condition::AtPrompt, 1), 200, &p, &ctx).effects;
        assert_eq!(warnings(&fx), 0, "never typed over a person");
        let fx = step(&mut t, obs(Condition::AtPrompt, 0), 300, &p, &ctx).effects;
        assert_eq!(warnings(&fx), 1);
        let fx = step(&mut t, obs(Condition::Thinking, 0), 400, &p, &ctx).effects;
        let fx2 = step(&mut t, obs(Condition::AtPrompt, 0), 500, &p, &ctx).effects;
        assert_eq!(warnings(&fx) + warnings(&fx2), 0, "once");
        // At the prompt already: typed at once.
        let fx = step(&mut t, restored(), 600, &p, &ctx).effects;
        assert_eq!(warnings(&fx), 1);
    }
}
