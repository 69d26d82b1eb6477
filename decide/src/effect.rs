//! What a decision asks the world to do: typed, final [`Effect`]s. The supervisor executes them
//! as they are; it never re-decides, filters or drops one. Notices are an enum, so that the event
//! stream, correlation and webhooks match on variants, not on strings.

use std::fmt;

use argus_shared::command::Action;
use argus_shared::ids::Incarnation;
use argus_shared::state::SessionState;
use argus_shared::time::UnixMs;
use serde::Serialize;

use crate::escalate::{Destructive, Verdict};

/// Something to do because of a step.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// The state changed: record and announce it.
    Transition {
        from: SessionState,
        to: SessionState,
        reason: String,
    },
    /// Tell people (event stream, logs); correlation reads some notices.
    Notify(Notice),
    /// Send a command to the node agent. A destructive one has already taken its token from the
    /// fleet budget ([`crate::budget::Gate`]).
    Command {
        action: Action,
        reason: String,
        incarnation: Option<Incarnation>,
    },
    /// Ask triage; its answer comes back as [`crate::detect::Input::Verdict`].
    Triage(TriageCase),
    /// [`crate::detect::Durable`] changed: persist it.
    Persist,
}

/// A notice about one session, for people and for correlation.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// A person must act (a permission prompt, a crash loop, triage said so, ...).
    NeedsHuman(String),
    /// A rate-limit cooldown started; it ends at `until`.
    RateLimited {
        until: UnixMs,
        cooldown_s: i64,
        from_screen: bool,
    },
    /// The limit came back after a resume; a shorter cooldown ends at `until`.
    RateLimitRenewed {
        renewals: u32,
        max: u32,
        until: UnixMs,
        cooldown_s: i64,
    },
    /// The screen no longer shows the limit.
    RateLimitCleared {
        /// What ended it.
        why: &'static str,
    },
    /// The limit was renewed too often: the agent is restarted.
    RateLimitRestart { renewals: u32 },
    /// The agent died (pane, process or session gone).
    AgentDied { what: String, reason: String },
    /// Too many crashes in the window: no restart before the cooldown ends.
    CrashLoop {
        crashes: usize,
        window_s: i64,
        cooldown_s: i64,
    },
    /// Unchanged past the hard limit: a restart is being confirmed.
    HardStall { idle_s: i64 },
    /// The first rung of the ladder.
    IdleWarning { idle_s: i64 },
    /// Idle at its prompt, but a person is attached: no nudge.
    NudgeHeld,
    /// A kill or restart is due but held (correlation, node not up, fleet budget spent).
    CommandHeld(Destructive),
    /// Triage answered.
    Triage(Verdict),
    /// The quality gate passed (on this attempt).
    GatePassed { attempt: u32 },
    /// The quality gate failed; the agent gets the failure's last lines as feedback.
    GateFailed {
        attempt: u32,
        max: u32,
        tail: String,
    },
    /// The quality gate failed for the last time (or said NOT_READY): a person is called.
    GateEscalated {
        attempts: u32,
        why: String,
        tail: String,
    },
    /// A gate run was ordered but not carried out; no attempt counted.
    GateNotRun(String),
    /// The node agent restored a guarded file (what, from where).
    GuardRestored(String),
}

impl Notice {
    /// The event kind on the admin event stream (`argusctl watch`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NeedsHuman(_) => "needs_human",
            Self::RateLimited { .. } => "rate_limited",
            Self::RateLimitRenewed { .. } => "rate_limit_renewed",
            Self::RateLimitCleared { .. } => "rate_limit_cleared",
            Self::RateLimitRestart { .. } => "rate_limit_restart",
            Self::AgentDied { .. } => "agent_died",
            Self::CrashLoop { .. } => "crash_loop",
            Self::HardStall { .. } => "hard_stall",
            Self::IdleWarning { .. } => "idle_warning",
            Self::NudgeHeld => "nudge_held",
            Self::CommandHeld(_) => "command_held",
            Self::Triage(_) => "triage",
            Self::GatePassed { .. } => "gate_passed",
            Self::GateFailed { .. } => "gate_failed",
            Self::GateEscalated { .. } => "gate_escalated",
            Self::GateNotRun(_) => "gate_not_run",
            Self::GuardRestored(_) => "guard_restored",
        }
    }
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NeedsHuman(why) => f.write_str(why),
            Self::RateLimited {
                cooldown_s,
                from_screen,
                ..
            } => write!(
                f,
                "rate or usage limit; cooldown for {cooldown_s} s{}",
                if *from_screen {
                    " (reset time read from the screen)"
                } else {
                    ""
                }
            ),
            Self::RateLimitRenewed {
                renewals,
                max,
                cooldown_s,
                ..
            } => write!(
                f,
                "rate limit renewed ({renewals} of {max}); cooldown for {cooldown_s} s"
            ),
            Self::RateLimitCleared { why } => write!(f, "rate limit over: {why}"),
            Self::RateLimitRestart { renewals } => write!(
                f,
                "rate limit renewed {renewals} times: restarting the agent"
            ),
            Self::AgentDied { what, reason } => write!(f, "{what}: {reason}"),
            Self::CrashLoop {
                crashes,
                window_s,
                cooldown_s,
            } => write!(
                f,
                "{crashes} crashes within {window_s} s: no restart for {cooldown_s} s"
            ),
            Self::HardStall { idle_s } => write!(f, "unchanged for {idle_s} s (hard limit)"),
            Self::IdleWarning { idle_s } => write!(f, "idle for {idle_s} s"),
            Self::NudgeHeld => {
                f.write_str("idle at its prompt, but a person is attached: no nudge")
            }
            Self::CommandHeld(what) => write!(
                f,
                "{what:?} held: destructive actions are paused (correlation, node not up or fleet budget)"
            ),
            Self::Triage(v) => write!(f, "triage verdict: {v:?}"),
            Self::GatePassed { attempt } => {
                write!(f, "quality gate passed (attempt {attempt})")
            }
            Self::GateFailed { attempt, max, tail } => write!(
                f,
                "quality gate failed (attempt {attempt} of {max}), feedback sent: {tail}"
            ),
            Self::GateEscalated {
                attempts,
                why,
                tail,
            } => write!(
                f,
                "quality gate: {why} (after {attempts} attempts); a person must look, no more nudges: {tail}"
            ),
            Self::GateNotRun(why) => write!(f, "quality gate not run: {why}"),
            Self::GuardRestored(what) => f.write_str(what),
        }
    }
}

/// What triage is asked about.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TriageCase {
    pub state: String,
    pub condition: String,
    pub agent: String,
    pub idle_for_s: i64,
    pub nudges_in_window: usize,
    pub nudge_budget: u32,
    pub restarts_in_window: usize,
    pub restart_known: bool,
    pub reason: String,
}

/// The outcome of one step of a session.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Step {
    /// What to do, in order.
    pub effects: Vec<Effect>,
    /// When the session next needs a [`crate::detect::Input::Tick`] (Unix ms); `None` while only
    /// a new input can change anything. Ticking earlier is harmless, later is not.
    pub next_due: Option<UnixMs>,
}
