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
        .map(|c| if argus_shared::command::is_refused(c) { ' ' } else { c })
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
