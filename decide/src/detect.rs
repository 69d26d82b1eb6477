//! The session lifecycle and detection, as a pure function: `step(track, input, now, policy, ctx)`
//! updates one session's [`Track`] and returns a [`Step`]: the [`Effect`]s to carry out and when
//! the session next needs time. No I/O, no clock: tests drive it with a simulated one.
//!
//! Observable state wins over recorded state: a dead pane is dead whatever was recorded, an agent
//! seen running is working again. Idleness needs several signals agreeing (screen unchanged, no
//! agent CPU, no tmux output, not thinking, not waiting for a person) for `idle_checks` probe
//! intervals; any activity returns a stalled session to working and resets its escalation ladder.
//! Destructive steps wait for a confirming re-check and for the fleet-level gate in [`Ctx`].
//! Rate limits are cooldowns, never stalls or crashes; deaths feed the crash-loop budget. What
//! must survive a controller restart lives in [`Durable`].

use std::collections::BTreeMap;

/// How long after a rate limit's reset the agent has to resume by itself before it gets the
/// resume nudge (at least three probe intervals).
pub const RESUME_GRACE_MS: i64 = 10_000;

use argus_shared::command::{Action, shell_command_from_tmux};
use argus_shared::labels;
use argus_shared::profile::Condition;
use argus_shared::state::SessionState;
use argus_shared::time::UnixMs;
use serde::{Deserialize, Serialize};

use crate::budget::{Gate, Unlimited};
pub use crate::effect::{Effect, Notice, Step, TriageCase};
use crate::escalate::{Destructive, Ladder, Rung, Verdict};
use crate::policy::{Policy, RestartOnDeath};

pub use argus_shared::ids::Incarnation;
pub use recover::Remembered;

mod recover;

/// One validated observation of a session (from the wire's `SessionObservation`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Observation {
    pub pane_id: String,
    /// The pane's process (0: unknown).
    pub pane_pid: u32,
    pub pane_dead: bool,
    pub exit_status: i32,
    pub agent: Option<Incarnation>,
    pub agent_name: String,
    pub agent_cpu_ms: u64,
    pub screen_hash: String,
    pub condition: Condition,
    pub rate_limit_reset_at: i64,
    pub last_output_ms: i64,
    pub attached_clients: u32,
    pub start_command: String,
    pub cwd: String,
    pub labels: BTreeMap<String, String>,
    pub profile: String,
    /// The screen's hash with its animation masked (empty when the node agent does not compute
    /// it: then no animated hang is ever found).
    pub progress_hash: String,
    /// The source that decided `condition` ("screen", "title", "transcript").
    pub decided_by: String,
    /// The agent's own conversation id, when it reported one.
    pub agent_session_id: String,
}

impl Observation {
    /// A label's value, when set and not empty.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

/// What happened to a session.
#[derive(Debug, Clone)]
pub enum Input {
    /// A fresh observation from its node agent.
    Observed(Box<Observation>),
    /// The agent process exited (pidfd), the pane may live on.
    AgentExited(Incarnation),
    /// The pane's process exited (its pid; 0 when unknown).
    PaneDied(u32),
    /// The tmux session is gone.
    Gone,
    /// An operator killed it: it must not come back by itself.
    KilledByOperator,
    /// The node agent answered that a policy restart sent at `sent_ms` was not carried out (no
    /// such session any more, tmux failed, its deadline had passed): no agent is coming from it.
    RestartNotDone { sent_ms: UnixMs },
    /// Triage answered.
    Verdict(Verdict),
    /// Time passed (the controller ticks every session periodically).
    Tick,
    /// What the node agent reported for a quality gate run.
    Gate(crate::gate::GateResult),
    /// The node agent restored a guarded file of this session (`path`; `detail` for people).
    GuardRestored { path: String, detail: String },
    /// The session's work tree has held uncommitted work since then (Unix ms); 0: clean.
    WorkTree { dirty_since_ms: UnixMs },
}

/// The fleet-level context of one step, decided by correlation outside the session.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    /// The session's tmux name (for the policy's `act_on` globs).
    pub session_name: &'a str,
    /// The node is up and connected (commands can reach it) and the store takes writes (their
    /// audit rows can be kept). While not, no time-driven decision and no nudge is made for its
    /// sessions.
    pub node_up: bool,
    /// When the node's messages last resumed after a silence, or its stream attached (Unix ms; 0
    /// when unknown). Time before it is not evidence: idleness and the ladder's waits count from
    /// it, so that a stopped node agent, a cut-off stream or a controller restart delays
    /// supervision and never shortens a wait.
    pub node_back_ms: UnixMs,
    /// Kills and restarts may be ordered now: the controller does not suspect itself, the host
    /// has no mass-death incident, the node is up.
    pub destructive_allowed: bool,
    /// A provider incident covers this session's provider/account: the fleet-wide cooldown ends
    /// then (Unix ms).
    pub provider_cooldown_until: Option<UnixMs>,
    /// A random number in [0, 1) for backoff jitter.
    pub jitter: f64,
    /// The fleet budget: a destructive command takes its token here when it is decided.
    pub gate: &'a dyn Gate,
}

impl Ctx<'_> {
    /// True when a kill or restart may be ordered now; takes its token from the fleet budget.
    fn reserve_destructive(&self, now: UnixMs) -> bool {
        self.destructive_allowed && self.gate.reserve(now)
    }
}

impl std::fmt::Debug for Ctx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("node_up", &self.node_up)
            .field("node_back_ms", &self.node_back_ms)
            .field("destructive_allowed", &self.destructive_allowed)
            .field("provider_cooldown_until", &self.provider_cooldown_until)
            .field("jitter", &self.jitter)
            .finish_non_exhaustive()
    }
}

impl Default for Ctx<'static> {
    fn default() -> Self {
        Self {
            session_name: "",
            node_up: true,
            node_back_ms: 0,
            destructive_allowed: true,
            provider_cooldown_until: None,
            jitter: 1.0,
            gate: &Unlimited,
        }
    }
}

/// A rate-limit episode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    /// When it was first seen (Unix ms).
    pub since: UnixMs,
    /// The cooldown ends then (Unix ms).
    pub until: UnixMs,
    /// How often the limit came back after a resume.
    pub renewals: u32,
    /// When the last resume nudge of this cooldown was sent.
    pub resumed_at: Option<UnixMs>,
    /// Resume nudges sent while the same limit stayed on screen.
    #[serde(default)]
    pub resumes: u32,
    /// After the resume, when the screen first stopped showing the limit (the agent went back to
    /// work): a limit seen after this is a new occurrence, a renewal.
    #[serde(default)]
    pub left_at: Option<UnixMs>,
    /// A person was called because resumes did not help.
    #[serde(default)]
    pub called_person: bool,
    /// The start time of the newest agent process seen showing the limit (clock ticks since
    /// boot; 0 when unknown). The hold is a judgement on that agent: a newer one that ran and
    /// ended where no controller saw it is no longer covered by it.
    #[serde(default)]
    pub agent_started: u64,
}

impl RateLimit {
    /// When the next resume nudge is due, if one may be sent: the cooldown's end for the first,
    /// then one more per `base` while the same limit stays on screen, at most `max` in all.
    fn resume_due(&self, base: i64, max: u32, provider_until: Option<UnixMs>) -> Option<UnixMs> {
        match self.resumed_at {
            None => Some(self.until.max(provider_until.unwrap_or(0))),
            Some(_) if self.left_at.is_some() => None,
            Some(at) if self.resumes < max => Some(at + base),
            Some(at) if !self.called_person => Some(at + base),
            Some(_) => None,
        }
    }
}

/// Per-session state that survives a controller restart.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Durable {
    /// Format version.
    pub version: u32,
    /// The current rate-limit episode.
    pub rate: Option<RateLimit>,
    /// Times of policy restarts within the restart window.
    pub restarts: Vec<UnixMs>,
    /// Times of deaths within the crash-loop window.
    pub crashes: Vec<UnixMs>,
    /// No restart before this (crash-loop cooldown and backoff), Unix ms.
    pub restart_not_before: UnixMs,
    /// Too many restarts: no more blind restarts until a person acts or the agent runs healthy.
    pub restarts_blocked: bool,
    /// What the controller last knew of the session, to reconcile it after a restart.
    #[serde(default)]
    pub remembered: Remembered,
    /// The quality gate's episode (attempts, a run awaited).
    #[serde(default)]
    pub gate: crate::gate::GateState,
    /// A guarded file was restored: this warning waits for the agent's prompt.
    #[serde(default)]
    pub guard_warning: Option<String>,
    /// Since when the session's work tree has held uncommitted work (Unix ms); 0: clean.
    #[serde(default)]
    pub dirty_since: UnixMs,
    /// When the agent was last reminded to commit.
    #[serde(default)]
    pub commit_reminded_at: Option<UnixMs>,
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
    /// A restart is wanted once the backoff and the gate allow it.
    pub restart_wanted: bool,
    /// An operator killed it: no automatic restart.
    pub operator_killed: bool,
    /// The node agent's probe interval (idleness is counted in probe intervals).
    pub probe_ms: i64,
    /// What survives a controller restart.
    pub durable: Durable,
    /// When the session next needs a tick, as the last [`step`] returned it.
    pub next_due: Option<UnixMs>,
    /// When the agent last showed progress: a new masked screen, a new turn, a new agent.
    pub progress_ms: UnixMs,
    /// When the last restart was sent, until an agent is seen again: a restart lost on the
    /// way (the node agent died with it, the stream broke) is sent again.
    pub restart_sent_ms: Option<UnixMs>,
    /// Restored from the store ([`Track::recovered`], a controller restart or a replica's
    /// takeover) and not observed since: the first observation is a baseline, not activity.
    pub resumed: bool,
}

impl Track {
    /// A session seen for the first time; `recorded` is the state the store last recorded for
    /// it and `durable` its persisted cooldowns and crash records (after a controller restart),
    /// which the first observation confirms or overrules.
    pub fn new(now: UnixMs, recorded: Option<SessionState>, durable: Option<Durable>) -> Self {
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
            restart_wanted: false,
            operator_killed: false,
            probe_ms: 1000,
            durable: durable.unwrap_or(Durable {
                version: 1,
                ..Durable::default()
            }),
            // A session recorded before a restart may be due at once.
            next_due: Some(now),
            progress_ms: now,
            restart_sent_ms: None,
            resumed: false,
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
        if let Some(l) = self.obs.label(labels::RESTART) {
            return Some(l.to_owned());
        }
        let cmd = shell_command_from_tmux(&self.obs.start_command);
        if cmd.is_empty() {
            return None;
        }
        Some(self.resume_reported(&cmd).unwrap_or(cmd))
    }

    /// `cmd` resuming the conversation the agent itself reported (`claude --resume <id>`), so
    /// that a restart continues that one, not the last one in its directory.
    fn resume_reported(&self, cmd: &str) -> Option<String> {
        let id = self.obs.agent_session_id.as_str();
        if id.is_empty() {
            return None;
        }
        argus_shared::profile::builtin_profile(&self.obs.profile)?.resume_with_id(cmd, id)
    }

    /// Why the policy may type into, interrupt, kill or restart this session, or `None` when it
    /// may only watch it: the first rule of a supervisor is to act only on positive evidence
    /// that the target is an agent.
    pub fn agent_evidence(&self, session_name: &str, policy: &Policy) -> Option<&'static str> {
        let profile = self.obs.profile.as_str();
        if self
            .obs
            .label(labels::PROFILE)
            .is_some_and(|p| p != argus_shared::profile::GENERIC)
        {
            Some("@argus-profile label")
        } else if self.obs.label(labels::RESTART).is_some() {
            Some("@argus-restart label")
        } else if !profile.is_empty() && profile != argus_shared::profile::GENERIC {
            Some("recognised by its agent profile")
        } else if policy
            .act_on
            .iter()
            .any(|g| crate::policy::glob_matches(g, session_name))
        {
            Some("policy act_on")
        } else {
            None
        }
    }

    /// True while the session sits in a rate-limit cooldown.
    pub fn rate_limited(&self) -> bool {
        self.durable.rate.is_some()
    }
}

/// When `t` next needs an [`Input::Tick`] (Unix ms), or `None` while only a new input can
/// change anything. Conservative: a due time may come early (the tick then does nothing and a
/// new due time is computed), never late.
pub fn next_due(t: &Track, now: UnixMs, policy: &Policy, ctx: &Ctx) -> Option<UnixMs> {
    let ms = |d: std::time::Duration| d.as_millis() as i64;
    if t.restart_wanted && !t.state.is_alive() {
        return Some(t.durable.restart_not_before.max(now));
    }
    if let Some(at) = unconfirmed_restart(t) {
        return Some((at + restart_confirm_ms(policy)).max(now));
    }
    if !t.state.is_alive() || t.obs_at_ms.is_none() || t.obs.agent.is_none() {
        return None;
    }
    let confirming = matches!(t.ladder.rung, Rung::Confirming(_));
    let mut due: Option<UnixMs> = None;
    let mut at = |when: UnixMs| due = Some(due.map_or(when, |d| d.min(when)).max(now));
    if let Some(d) = crate::gate::due(&t.durable.gate, policy) {
        at(d);
    }
    if t.obs.condition == Condition::AtPrompt
        && let Some(d) = crate::worktree::due(t, policy)
    {
        // Only at the prompt: a change of condition comes as an observation anyway.
        at(d);
    }
    if let Some(r) = &t.durable.rate {
        let base = ms(policy.rate_limit_cooldown);
        let resume = r.resume_due(
            base,
            policy.rate_limit_max_renewals,
            ctx.provider_cooldown_until,
        );
        if let Some(d) = resume.filter(|_| {
            t.obs.condition == Condition::RateLimited
                && t.agent_evidence(ctx.session_name, policy).is_some()
        }) {
            at(d);
        }
        if !confirming {
            return due;
        }
    }
    let hang_due = animated_hang_due(t, policy);
    let hung = hang_due.is_some_and(|d| now >= d);
    let exempt = matches!(
        t.obs.condition,
        Condition::Thinking
            | Condition::WaitingPermission
            | Condition::Dialog
            | Condition::RateLimited
    ) && !confirming
        && !hung;
    if exempt {
        if let Some(d) = hang_due {
            at(d);
        }
        return due;
    }
    let idle_after = i64::from(policy.idle_checks) * t.probe_ms;
    // Idleness counts from the node's return at the earliest (see `tick`).
    let active = t.last_activity_ms.max(ctx.node_back_ms.min(now));
    if t.agent_evidence(ctx.session_name, policy).is_none() {
        // Only watched: it may stall and be warned about, nothing more (a rung confirming a
        // restart or kill waits for evidence that never comes from time alone).
        match (t.state, t.ladder.rung) {
            (SessionState::Working, _) => at(active + idle_after),
            (SessionState::Stalled, Rung::Clear) => at(now),
            _ => {}
        }
        return due;
    }
    let since = if hung { t.progress_ms } else { active };
    let hard = since + ms(policy.hard_stall);
    let entered = t.ladder.entered_ms.max(ctx.node_back_ms.min(now));
    if t.state == SessionState::Working {
        at(if hung { now } else { since + idle_after });
    }
    match (t.state, t.ladder.rung) {
        (_, Rung::Confirming(_)) => at(entered + ms(policy.confirm_after)),
        (SessionState::Stalled, Rung::Clear) => at(now),
        (SessionState::Stalled, Rung::Warned | Rung::Nudged) => {
            at(entered + ms(policy.nudge_dwell));
            at(hard);
        }
        (SessionState::Stalled, Rung::Triaging) => {
            at(entered + ms(policy.triage_timeout) + 5000);
            at(hard);
        }
        _ => {}
    }
    due
}

/// Advances one session.
pub fn step(t: &mut Track, input: Input, now: UnixMs, policy: &Policy, ctx: &Ctx) -> Step {
    let before = t.durable.clone();
    let mut fx = Vec::new();
    match input {
        Input::Observed(o) => {
            observe(t, *o, now, policy, ctx, &mut fx);
            crate::guard::deliver(t, ctx, &mut fx);
        }
        Input::AgentExited(inc) => {
            if t.obs.agent == Some(inc) && t.state.is_alive() {
                t.go(
                    SessionState::Zombie,
                    format!("agent process {} exited", inc.pid),
                    now,
                    &mut fx,
                );
                death(t, "agent exited", now, policy, ctx, &mut fx);
            } else if held_past(t, inc) {
                // The node agent saw a newer agent run and end while no controller listened
                // (its buffered exit event): the limit the hold was for did not stop it, and its
                // death is judged on its own, under the usual backoff and crash-loop rules.
                t.durable.rate = None;
                t.restart_wanted = false;
                fx.push(Effect::Notify(Notice::RateLimitCleared {
                    why: "a newer agent ran and ended since the one that showed it",
                }));
                t.reason = format!("agent process {} exited unseen", inc.pid);
                death(t, "a newer agent exited", now, policy, ctx, &mut fx);
            }
        }
        Input::PaneDied(pid) => {
            // An exit of a pane process the pane has since replaced (a respawn seen in a later
            // snapshot, a buffered event delivered after it) says nothing of the pane now.
            let stale = pid != 0 && t.obs.pane_pid != 0 && pid != t.obs.pane_pid;
            if !stale && t.state != SessionState::Dead && t.state != SessionState::Completed {
                let was_alive = t.state.is_alive();
                t.go(
                    SessionState::Dead,
                    "pane process exited".into(),
                    now,
                    &mut fx,
                );
                if was_alive {
                    death(t, "pane died", now, policy, ctx, &mut fx);
                }
            }
        }
        Input::Gone => {
            if t.state != SessionState::Dead {
                let was_alive = t.state.is_alive();
                t.go(
                    SessionState::Dead,
                    "tmux session closed".into(),
                    now,
                    &mut fx,
                );
                if was_alive {
                    death(t, "session closed", now, policy, ctx, &mut fx);
                }
            }
        }
        Input::KilledByOperator => {
            t.operator_killed = true;
            t.restart_wanted = false;
        }
        Input::RestartNotDone { sent_ms } => {
            // The restart this session waits for (sent no later than this one) will bring no
            // agent: it is wanted again now, under the same budget, rather than after its
            // confirm window. An answer about an older restart, superseded since, is no news.
            if unconfirmed_restart(t).is_some_and(|at| at <= sent_ms + 1000) {
                retry_restart(t, now, policy, &mut fx);
            }
        }
        Input::Verdict(v) => verdict(t, v, now, policy, ctx, &mut fx),
        Input::Tick => tick(t, now, policy, ctx, &mut fx),
        Input::Gate(result) => crate::gate::outcome(t, result, now, policy, &mut fx),
        Input::GuardRestored { path, detail } => {
            crate::guard::restored(t, &path, detail, policy, ctx, &mut fx);
        }
        Input::WorkTree { dirty_since_ms } => {
            if dirty_since_ms <= 0 {
                t.durable.commit_reminded_at = None;
            }
            t.durable.dirty_since = dirty_since_ms.max(0);
        }
    }
    crate::worktree::remind(t, now, policy, ctx, &mut fx);
    recover::remember(t);
    if t.durable != before {
        fx.push(Effect::Persist);
    }
    t.next_due = next_due(t, now, policy, ctx);
    Step {
        effects: fx,
        next_due: t.next_due,
    }
}

fn observe(
    t: &mut Track,
    o: Observation,
    now: UnixMs,
    policy: &Policy,
    ctx: &Ctx,
    fx: &mut Vec<Effect>,
) {
    let first = t.obs_at_ms.is_none();
    // The first sight of a session restored from the store is its baseline after a restart or
    // takeover: no evidence of activity (a stalled session stays stalled), and its idle time
    // counts from now, when supervision resumed (the store has no activity history).
    let baseline = first && std::mem::take(&mut t.resumed);
    let elapsed_ms = t.obs_at_ms.map_or(1, |at| (now - at).max(1) as u64);
    let cpu_delta = o.agent_cpu_ms.saturating_sub(t.obs.agent_cpu_ms);
    let new_agent = o.agent.is_some() && o.agent != t.obs.agent;
    if o.agent.is_some() {
        // The restart (if one was sent) brought an agent back.
        t.restart_sent_ms = None;
    }
    let busy_cpu =
        !first && !new_agent && cpu_delta * 1000 >= policy.cpu_active_ms_per_s * elapsed_ms;
    let screen_moved = !first && o.screen_hash != t.obs.screen_hash;
    let output = !first && o.last_output_ms > t.obs.last_output_ms;
    if first || new_agent || progressed(&t.obs, &o) {
        t.progress_ms = now;
    }
    t.obs = o;
    t.obs_at_ms = Some(now);
    // A busy screen that moves only in its animation is no activity once it has done so for
    // `animated_hang`: its spinner must not keep resetting the ladder.
    let hung = animated_hang(t, now, policy).is_some();
    if baseline && !new_agent {
        t.last_activity_ms = t.last_activity_ms.max(now);
    }
    let active = !hung
        && ((first && !baseline)
            || new_agent
            || screen_moved
            || busy_cpu
            || output
            || t.obs.condition == Condition::Thinking);

    if t.obs.pane_dead {
        // tmux may report the pane dead a moment before it knows the exit status (-1).
        let status = t.obs.exit_status;
        let (to, reason) = match status {
            0 => (
                SessionState::Completed,
                "agent exited with status 0".to_owned(),
            ),
            -1 => (SessionState::Dead, "pane process exited".to_owned()),
            _ => (
                SessionState::Dead,
                format!("pane process exited with status {status}"),
            ),
        };
        if t.state == to {
            t.reason = reason;
        } else {
            let was_alive = t.state.is_alive();
            t.go(to, reason, now, fx);
            if was_alive && to == SessionState::Dead {
                death(t, "pane died", now, policy, ctx, fx);
            }
            if was_alive && to == SessionState::Completed {
                crate::gate::at_exit(t, now, policy, ctx, fx);
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
                death(t, "agent gone", now, policy, ctx, fx);
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
    if t.obs.condition == Condition::Thinking && !hung {
        t.ladder.worked();
    }
    if new_agent {
        t.ladder.reset();
        t.ladder.worked();
        t.restart_wanted = false;
        t.operator_killed = false;
    }
    if new_agent && !first {
        // A new agent process starts a new gate episode.
        t.durable.gate = crate::gate::GateState::default();
    }
    if active {
        t.last_activity_ms = now;
        if t.ladder.rung != Rung::Clear {
            t.ladder.reset();
        }
        if !first {
            crate::gate::worked(t, policy);
        }
    }
    // A long healthy run forgives past restarts.
    let healthy = policy.healthy_reset.as_millis() as i64;
    if t.durable
        .restarts
        .last()
        .is_some_and(|at| now - at >= healthy)
    {
        t.durable.restarts.clear();
        t.durable.crashes.clear();
        t.durable.restarts_blocked = false;
    }
    match t.state {
        SessionState::Working => {}
        SessionState::Stalled if active => {
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

    // Waiting for a person is its own condition: announced once per prompt, never acted on.
    if matches!(
        t.obs.condition,
        Condition::WaitingPermission | Condition::Dialog
    ) {
        if !t.human_notified {
            t.human_notified = true;
            let why = if t.obs.condition == Condition::Dialog {
                "a login, trust or first-run dialog: a person must answer"
            } else {
                "waiting for a permission or confirmation: a person must answer"
            };
            fx.push(Effect::Notify(Notice::NeedsHuman(why.into())));
        }
    } else {
        t.human_notified = false;
    }
    rate_limit(t, now, policy, ctx, fx);
}

/// Rate limits: a cooldown (the parsed reset time, else `rate_limit_cooldown`), a resume nudge
/// when it ends, renewals with shrinking cooldowns, and a restart at the last renewal.
///
/// A CLI that retries by itself shows its retry line or spinner (thinking) between attempts: the
/// episode stays open and nothing is counted. A renewal is a new occurrence of the limit after a
/// resume: the screen stopped showing the limit (the agent went back to work) and shows it again.
/// The same message still on screen is never a renewal, however much else on screen changes.
fn rate_limit(t: &mut Track, now: UnixMs, policy: &Policy, ctx: &Ctx, fx: &mut Vec<Effect>) {
    let cond = t.obs.condition;
    let reset_ms = t.obs.rate_limit_reset_at * 1000;
    let base = policy.rate_limit_cooldown.as_millis() as i64;
    match (&mut t.durable.rate, cond) {
        (None, Condition::RateLimited) => {
            let until = if reset_ms > now { reset_ms } else { now + base };
            t.durable.rate = Some(RateLimit {
                since: now,
                until,
                renewals: 0,
                resumed_at: None,
                resumes: 0,
                left_at: None,
                called_person: false,
                agent_started: t.obs.agent.map_or(0, |a| a.start_time),
            });
            fx.push(Effect::Notify(Notice::RateLimited {
                until,
                cooldown_s: (until - now) / 1000,
                from_screen: reset_ms > now,
            }));
        }
        (Some(r), Condition::RateLimited) => {
            if let Some(a) = t.obs.agent {
                r.agent_started = r.agent_started.max(a.start_time);
            }
            if r.resumed_at.is_none() || r.left_at.is_none() {
                // The same limit, or the CLI's own retries before any resume: wait.
                return;
            }
            r.renewals += 1;
            r.resumed_at = None;
            r.resumes = 0;
            r.left_at = None;
            if r.renewals >= policy.rate_limit_max_renewals {
                let n = r.renewals;
                t.durable.rate = None;
                fx.push(Effect::Notify(Notice::RateLimitRestart { renewals: n }));
                if t.agent_evidence(ctx.session_name, policy).is_none() {
                    return;
                }
                if t.restart_command().is_some() && ctx.reserve_destructive(now) {
                    issue_restart(t, "rate limit renewed too often", now, policy, ctx, fx);
                } else {
                    t.ladder.enter(Rung::Confirming(Destructive::Restart), now);
                }
                return;
            }
            let shrunk = now + base / i64::from(r.renewals + 1);
            r.until = if reset_ms > now { reset_ms } else { shrunk };
            fx.push(Effect::Notify(Notice::RateLimitRenewed {
                renewals: r.renewals,
                max: policy.rate_limit_max_renewals,
                until: r.until,
                cooldown_s: (r.until - now) / 1000,
            }));
        }
        (Some(r), Condition::Thinking) => {
            // Busy: retrying by itself, or working again after the resume.
            if r.resumed_at.is_some() && r.left_at.is_none() {
                r.left_at = Some(now);
            }
        }
        (Some(_), _) => {
            // The screen no longer shows the limit and the agent is not busy: it moved on.
            t.durable.rate = None;
            fx.push(Effect::Notify(Notice::RateLimitCleared {
                why: "the screen no longer shows it",
            }));
        }
        (None, _) => {}
    }
}

/// True when `exited` is an agent newer than the one whose rate limit holds this dead
/// session's restart, and one this controller never saw.
fn held_past(t: &Track, exited: Incarnation) -> bool {
    t.restart_wanted
        && !t.state.is_alive()
        && t.obs.agent != Some(exited)
        && t.durable
            .rate
            .as_ref()
            .is_some_and(|r| r.agent_started > 0 && exited.start_time > r.agent_started)
}

/// Time-driven decisions: delayed restarts, the end of a cooldown, idleness and the ladder.
fn tick(t: &mut Track, now: UnixMs, policy: &Policy, ctx: &Ctx, fx: &mut Vec<Effect>) {
    if !ctx.node_up {
        // A silent node's sessions get no per-session action; their time resumes with the node.
        return;
    }
    let mut why = "agent died";
    if let Some(at) = unconfirmed_restart(t)
        && now >= at + restart_confirm_ms(policy)
        && retry_restart(t, now, policy, fx)
    {
        why = "agent died; the restart sent earlier brought no agent back";
    }
    if t.restart_wanted && !t.state.is_alive() {
        if now >= t.durable.restart_not_before && ctx.reserve_destructive(now) {
            issue_restart(t, why, now, policy, ctx, fx);
        }
        return;
    }
    if !t.state.is_alive() || t.obs_at_ms.is_none() || t.obs.agent.is_none() {
        return;
    }
    let acts = t.agent_evidence(ctx.session_name, policy).is_some();
    if let Some(r) = &mut t.durable.rate {
        let base = policy.rate_limit_cooldown.as_millis() as i64;
        let max = policy.rate_limit_max_renewals;
        let due = r.resume_due(base, max, ctx.provider_cooldown_until);
        // A CLI that resumes by itself after the reset gets no nudge: it had `grace` to show
        // activity (then its condition is no longer the limit) before anything is typed.
        let grace = (3 * t.probe_ms).max(RESUME_GRACE_MS);
        if acts
            && due.is_some_and(|d| now >= d + grace)
            && t.obs.attached_clients == 0
            && t.obs.condition == Condition::RateLimited
        {
            if r.resumed_at.is_some() && r.resumes >= max {
                r.called_person = true;
                fx.push(Effect::Notify(Notice::NeedsHuman(format!(
                    "still rate limited after {} resume nudges: the limit message did not change",
                    r.resumes
                ))));
            } else {
                r.resumed_at = Some(now);
                r.resumes += 1;
                fx.push(Effect::Command {
                    action: Action::Nudge {
                        text: policy.rate_limit_resume_text.clone(),
                    },
                    reason: "rate-limit cooldown over: resume".into(),
                    incarnation: t.obs.agent,
                });
            }
        }
        if !matches!(t.ladder.rung, Rung::Confirming(_)) {
            return;
        }
    }
    // What happened while the node was not heard from is unknown: idleness and the ladder's
    // waits count again from when its messages resumed (a fault delays, never hastens).
    let back = ctx.node_back_ms.min(now);
    if t.ladder.rung != Rung::Clear && t.ladder.entered_ms < back {
        t.ladder.entered_ms = back;
    }
    let cond = t.obs.condition;
    let hung = animated_hang(t, now, policy);
    let exempt = matches!(
        cond,
        Condition::Thinking
            | Condition::WaitingPermission
            | Condition::Dialog
            | Condition::RateLimited
    ) && !matches!(t.ladder.rung, Rung::Confirming(_))
        && hung.is_none();
    let idle_for = hung.unwrap_or(now - t.last_activity_ms.max(back));
    let idle_after = i64::from(policy.idle_checks) * t.probe_ms;
    if t.state == SessionState::Working && !exempt && (idle_for >= idle_after || hung.is_some()) {
        let reason = match hung {
            Some(ms) => hung_reason(ms),
            None => format!(
                "idle for {} s: screen unchanged, no output, no agent CPU, not thinking",
                idle_for / 1000
            ),
        };
        t.go(SessionState::Stalled, reason, now, fx);
    }
    if crate::gate::at_prompt(t, now, policy, ctx, fx) {
        // A quality gate runs: the idle ladder waits for its outcome.
        return;
    }
    if t.state != SessionState::Stalled && !matches!(t.ladder.rung, Rung::Confirming(_)) {
        return;
    }
    if exempt {
        return;
    }
    if t.agent_evidence(ctx.session_name, policy).is_none() {
        // Not known to be an agent: watched and reported once, never typed into or ended.
        if t.ladder.rung == Rung::Clear {
            t.ladder.enter(Rung::Warned, now);
            fx.push(Effect::Notify(Notice::IdleWarning {
                idle_s: idle_for / 1000,
            }));
        }
        return;
    }
    let dwell = policy.nudge_dwell.as_millis() as i64;
    let hard = policy.hard_stall.as_millis() as i64;
    if idle_for >= hard && !matches!(t.ladder.rung, Rung::Confirming(_) | Rung::Done) {
        t.ladder.enter(Rung::Confirming(Destructive::Restart), now);
        fx.push(Effect::Notify(Notice::HardStall {
            idle_s: idle_for / 1000,
        }));
        return;
    }
    match t.ladder.rung {
        Rung::Clear => {
            t.ladder.enter(Rung::Warned, now);
            fx.push(Effect::Notify(Notice::IdleWarning {
                idle_s: idle_for / 1000,
            }));
        }
        Rung::Warned | Rung::Nudged if now - t.ladder.entered_ms >= dwell => {
            let window = policy.nudge_window.as_millis() as i64;
            let used = t.ladder.nudges_within(now, window);
            if cond == Condition::AtPrompt && used < policy.nudge_budget as usize {
                nudge(
                    t,
                    &policy.nudge_text,
                    &format!("idle at its prompt for {} s", idle_for / 1000),
                    now,
                    fx,
                );
            } else if let Some(window) = interrupt_window_ms(t)
                && t.ladder.may_interrupt(cond, now, window)
            {
                interrupt(t, idle_for, now, fx);
            } else if cond != Condition::AtPrompt || used >= policy.nudge_budget as usize {
                if t.obs.attached_clients > 0 && cond == Condition::AtPrompt {
                    hold_for_human(t, fx);
                    return;
                }
                t.ladder.enter(Rung::Triaging, now);
                fx.push(Effect::Triage(TriageCase {
                    state: t.state.as_str().to_owned(),
                    condition: if hung.is_some() {
                        ANIMATED_HANG.to_owned()
                    } else {
                        cond.as_str().to_owned()
                    },
                    agent: t.obs.agent_name.clone(),
                    idle_for_s: idle_for / 1000,
                    nudges_in_window: used,
                    nudge_budget: policy.nudge_budget,
                    restarts_in_window: t.durable.restarts.len(),
                    restart_known: t.restart_command().is_some(),
                    reason: t.reason.clone(),
                }));
            }
        }
        Rung::Triaging
            if now - t.ladder.entered_ms >= policy.triage_timeout.as_millis() as i64 + 5000 =>
        {
            // The supervisor answers a timeout with Extend; this only guards a lost answer.
            verdict(t, Verdict::Extend, now, policy, ctx, fx);
        }
        Rung::Confirming(what)
            if now - t.ladder.entered_ms >= policy.confirm_after.as_millis() as i64 =>
        {
            let commands = match what {
                Destructive::Restart => {
                    t.restart_command().is_some() && !t.durable.restarts_blocked
                }
                Destructive::Kill => true,
            };
            if commands && !ctx.reserve_destructive(now) {
                if !t.ladder.held_destructive {
                    t.ladder.held_destructive = true;
                    fx.push(Effect::Notify(Notice::CommandHeld(what)));
                }
                return;
            }
            t.ladder.enter(Rung::Done, now);
            match what {
                Destructive::Restart => {
                    if commands {
                        issue_restart(t, "escalation (confirmed still idle)", now, policy, ctx, fx);
                    } else {
                        fx.push(Effect::Notify(Notice::NeedsHuman(
                            "a restart is due but no restart command is known (or restarts are blocked)".into(),
                        )));
                    }
                }
                Destructive::Kill => fx.push(Effect::Command {
                    action: Action::Kill {
                        grace_ms: argus_shared::command::DEFAULT_KILL_GRACE_MS,
                    },
                    reason: "escalation: triage said kill (confirmed still idle)".into(),
                    incarnation: t.obs.agent,
                }),
            }
        }
        _ => {}
    }
}

// === Hangs that still animate ===

/// The triage case's condition for an agent that is busy by its screen but shows no progress.
pub const ANIMATED_HANG: &str = "animated-hang";

/// The agent showed progress between two observations: a new masked screen (new output, not
/// just its spinner, timer or token counter moving), or a turn that starts or ends. Without a
/// progress hash from the node agent every observation counts as progress.
fn progressed(old: &Observation, new: &Observation) -> bool {
    new.progress_hash.is_empty()
        || new.progress_hash != old.progress_hash
        || new.condition != Condition::Thinking
        || old.condition != Condition::Thinking
}

/// When a busy agent with no progress since `progress_ms` counts as hung, if it is busy at all.
fn animated_hang_due(t: &Track, policy: &Policy) -> Option<UnixMs> {
    (t.obs.condition == Condition::Thinking
        && !t.obs.progress_hash.is_empty()
        && t.obs.agent.is_some())
    .then(|| t.progress_ms + policy.animated_hang_for(&t.obs.profile).as_millis() as i64)
}

/// How long a busy agent has shown nothing but its animation, once that is `animated_hang` or
/// more: it is hung, not working.
fn animated_hang(t: &Track, now: UnixMs, policy: &Policy) -> Option<i64> {
    animated_hang_due(t, policy)
        .filter(|due| now >= *due)
        .map(|_| now - t.progress_ms)
}

fn hung_reason(ms: i64) -> String {
    format!(
        "animated but no progress for {} s: only its spinner, timer or token counter moves, no new output",
        ms / 1000
    )
}

/// The CLI's "press again to exit" window, from its built-in agent profile; `None` for any
/// other program, which the policy never interrupts: nobody measured which key stops its work
/// without ending it (a plain program ends on C-c).
fn interrupt_window_ms(t: &Track) -> Option<i64> {
    argus_shared::profile::builtin_profile(&t.obs.profile)
        .filter(|p| p.name != argus_shared::profile::GENERIC)
        .map(|p| p.interrupt_window().as_millis() as i64)
}

/// Stops the turn of an agent stuck mid-turn, as a person would before asking it to go on:
/// one interrupt ([`Ladder::may_interrupt`] says when), never while a person is attached.
fn interrupt(t: &mut Track, idle_for: i64, now: UnixMs, fx: &mut Vec<Effect>) {
    if t.obs.attached_clients > 0 {
        hold_for_human(t, fx);
        return;
    }
    t.ladder.interrupted(now);
    fx.push(Effect::Command {
        action: Action::Interrupt,
        reason: format!(
            "stuck mid-turn for {} s: no prompt, nothing moving",
            idle_for / 1000
        ),
        incarnation: t.obs.agent,
    });
}

fn hold_for_human(t: &mut Track, fx: &mut Vec<Effect>) {
    if !t.ladder.held_for_human {
        t.ladder.held_for_human = true;
        fx.push(Effect::Notify(Notice::NudgeHeld));
    }
}

fn nudge(t: &mut Track, text: &str, reason: &str, now: UnixMs, fx: &mut Vec<Effect>) {
    if t.obs.attached_clients > 0 {
        hold_for_human(t, fx);
        return;
    }
    t.ladder.nudged(now);
    fx.push(Effect::Command {
        action: Action::Nudge {
            text: text.to_owned(),
        },
        reason: reason.to_owned(),
        incarnation: t.obs.agent,
    });
}

/// Applies triage's answer.
fn verdict(
    t: &mut Track,
    v: Verdict,
    now: UnixMs,
    policy: &Policy,
    ctx: &Ctx,
    fx: &mut Vec<Effect>,
) {
    if t.ladder.rung != Rung::Triaging {
        return;
    }
    fx.push(Effect::Notify(Notice::Triage(v.clone())));
    match v {
        Verdict::Continue | Verdict::Extend => t.ladder.enter(Rung::Warned, now),
        Verdict::Nudge(text) => {
            let window = policy.nudge_window.as_millis() as i64;
            if ctx.node_up
                && t.ladder.nudges_within(now, window) < policy.nudge_budget as usize
                && argus_shared::command::validate_nudge(&text).is_ok()
            {
                nudge(t, &text, "triage asked for a nudge", now, fx);
            } else {
                t.ladder.enter(Rung::Warned, now);
            }
        }
        Verdict::Restart => t.ladder.enter(Rung::Confirming(Destructive::Restart), now),
        Verdict::Kill => t.ladder.enter(Rung::Confirming(Destructive::Kill), now),
        Verdict::NeedsHuman(why) => {
            t.ladder.enter(Rung::Done, now);
            fx.push(Effect::Notify(Notice::NeedsHuman(why)));
        }
    }
}

/// A death: announce it, count it towards the crash-loop budget and, when the policy allows,
/// schedule a restart with backoff.
fn death(t: &mut Track, what: &str, now: UnixMs, policy: &Policy, ctx: &Ctx, fx: &mut Vec<Effect>) {
    // What a restart sent earlier brought back has died: this death is decided on its own.
    t.restart_sent_ms = None;
    fx.push(Effect::Notify(Notice::AgentDied {
        what: what.to_owned(),
        reason: t.reason.clone(),
    }));
    let allowed = match policy.restart_on_death {
        RestartOnDeath::Never => false,
        RestartOnDeath::Labelled => t.obs.label(labels::RESTART).is_some(),
        RestartOnDeath::Always => t.agent_evidence(ctx.session_name, policy).is_some(),
    };
    if !allowed || t.operator_killed || t.restart_command().is_none() || t.restart_wanted {
        return;
    }
    if let Some(r) = &t.durable.rate {
        // A rate-limited agent that exits is not a crash: it restarts when the cooldown ends.
        t.durable.restart_not_before = r.until.max(ctx.provider_cooldown_until.unwrap_or(0));
        t.restart_wanted = true;
        return;
    }
    let d = &mut t.durable;
    let window = policy.restart_window.as_millis() as i64;
    let crash_window = policy.crash_loop_window.as_millis() as i64;
    d.restarts.retain(|at| now - at < window);
    d.crashes.retain(|at| now - at < crash_window);
    d.crashes.push(now);
    if d.restarts_blocked || d.restarts.len() > policy.max_restarts as usize {
        if !d.restarts_blocked {
            d.restarts_blocked = true;
            fx.push(Effect::Notify(Notice::NeedsHuman(format!(
                "crash loop: {} restarts within {} s; no more blind restarts",
                d.restarts.len(),
                window / 1000
            ))));
        }
        return;
    }
    let n = d.restarts.len().min(30) as u32;
    let min = policy.restart_backoff_min.as_millis() as i64;
    let max = policy.restart_backoff_max.as_millis() as i64;
    let backoff = min.saturating_mul(1i64 << n).min(max);
    // "Equal jitter": half fixed, half random, so restarts of many sessions spread out.
    let delay = backoff / 2 + (backoff as f64 / 2.0 * ctx.jitter) as i64;
    let mut not_before = now + delay;
    if d.crashes.len() >= policy.crash_loop_crashes as usize {
        let cooldown = policy.crash_loop_cooldown.as_millis() as i64;
        not_before = not_before.max(now + cooldown);
        fx.push(Effect::Notify(Notice::CrashLoop {
            crashes: d.crashes.len(),
            window_s: crash_window / 1000,
            cooldown_s: cooldown / 1000,
        }));
        d.crashes.clear();
    }
    d.restart_not_before = not_before;
    t.restart_wanted = true;
    if now >= not_before && ctx.reserve_destructive(now) {
        issue_restart(t, what, now, policy, ctx, fx);
    }
}

/// When a restart was sent for this dead session and no agent has been seen since (`None`
/// otherwise, and while another restart is already wanted).
fn unconfirmed_restart(t: &Track) -> Option<UnixMs> {
    let dead = matches!(t.state, SessionState::Dead | SessionState::Zombie);
    t.restart_sent_ms
        .filter(|_| dead && !t.restart_wanted && !t.operator_killed)
}

/// How long a restart may take to show its agent before it counts as lost: the command's
/// deadline twice over (the node agent may have to reconnect first).
fn restart_confirm_ms(policy: &Policy) -> UnixMs {
    2 * policy.command_timeout.as_millis() as i64
}

/// A restart that brought no agent back (lost with its node agent or its stream) is wanted
/// again, under the same restart budget as a death: past it, a person is called instead.
/// True when it is wanted again.
fn retry_restart(t: &mut Track, now: UnixMs, policy: &Policy, fx: &mut Vec<Effect>) -> bool {
    t.restart_sent_ms = None;
    let d = &mut t.durable;
    let window = policy.restart_window.as_millis() as i64;
    d.restarts.retain(|at| now - at < window);
    if d.restarts_blocked {
        return false;
    }
    if d.restarts.len() > policy.max_restarts as usize {
        d.restarts_blocked = true;
        fx.push(Effect::Notify(Notice::NeedsHuman(format!(
            "{} restarts within {} s brought no agent back; no more blind restarts",
            d.restarts.len(),
            window / 1000
        ))));
        return false;
    }
    d.restart_not_before = now;
    t.restart_wanted = true;
    true
}

fn issue_restart(
    t: &mut Track,
    why: &str,
    now: UnixMs,
    _policy: &Policy,
    _ctx: &Ctx,
    fx: &mut Vec<Effect>,
) {
    let Some(command) = t.restart_command() else {
        return;
    };
    t.restart_wanted = false;
    t.restart_sent_ms = Some(now);
    t.durable.restarts.push(now);
    fx.push(Effect::Command {
        action: Action::Restart {
            command,
            cwd: t.obs.cwd.clone(),
            labels: t.obs.labels.clone(),
            replaces_pane_pid: t.obs.pane_pid,
        },
        reason: format!("restart: {why}"),
        incarnation: None,
    });
}

#[cfg(test)]
mod tests;
