//! The escalation ladder of one session: warn -> nudge -> triage -> (confirm) -> restart or kill,
//! each rung with a dwell time, nudges within a budget per window. Any activity sends the session
//! back to the bottom rung; the nudge history stays so that the budget holds across resets.

use std::collections::VecDeque;

use argus_shared::profile::Condition;
use argus_shared::time::UnixMs;

/// A destructive step waiting for its confirming re-check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destructive {
    /// Start the agent again (respawn-pane with its command).
    Restart,
    /// End the session.
    Kill,
}

/// A rung of the ladder, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rung {
    /// Nothing found.
    #[default]
    Clear,
    /// People were warned.
    Warned,
    /// At least one nudge was sent.
    Nudged,
    /// Triage was asked; its verdict is awaited.
    Triaging,
    /// A destructive step waits `confirm_after` for a re-check.
    Confirming(Destructive),
    /// The ladder's end: a restart or kill was ordered, or a person was called.
    Done,
}

/// What triage answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The agent is fine: leave it.
    Continue,
    /// Not sure: wait one more dwell (also what a timeout means).
    Extend,
    /// Type this text.
    Nudge(String),
    /// Start the agent again.
    Restart,
    /// End the session.
    Kill,
    /// Call a person; no more automatic steps until activity.
    NeedsHuman(String),
}

/// Ladder state of one session.
#[derive(Debug, Clone, Default)]
pub struct Ladder {
    /// Current rung.
    pub rung: Rung,
    /// When the rung was entered.
    pub entered_ms: UnixMs,
    /// Times of recent nudges.
    pub nudges: VecDeque<UnixMs>,
    /// "A person is attached, nudge held" was announced.
    pub held_for_human: bool,
    /// "Destructive step held" was announced.
    pub held_destructive: bool,
    /// When the last interrupt was sent. Kept across resets, like the nudge history: an
    /// interrupt moves the screen, and that activity must not make room for a second one.
    pub interrupted_at: Option<UnixMs>,
    /// An interrupt was sent in this stall episode; the episode ends when the agent is seen
    /// working (thinking) again.
    pub interrupted_episode: bool,
}

impl Ladder {
    /// Moves to `rung` at `now`.
    pub fn enter(&mut self, rung: Rung, now: UnixMs) {
        self.rung = rung;
        self.entered_ms = now;
        self.held_destructive = false;
    }

    /// Back to the bottom rung (activity was seen). The nudge history stays: the budget counts
    /// nudges per window, whatever happened between them.
    pub fn reset(&mut self) {
        self.rung = Rung::Clear;
        self.held_for_human = false;
        self.held_destructive = false;
    }

    /// Records a nudge at `now`.
    pub fn nudged(&mut self, now: UnixMs) {
        self.nudges.push_back(now);
        self.enter(Rung::Nudged, now);
    }

    /// Whether the ladder may interrupt the agent's turn now. An interrupt must never end the
    /// agent, and the CLIs exit on a second interrupt within their "press again to exit"
    /// window (`window_ms`, the profile's): so only on a screen stuck mid-turn (`None`: no
    /// prompt, nothing recognised; at an idle prompt there is nothing to interrupt, and a
    /// question, dialog or limit is for a person or a cooldown), at most once per stall
    /// episode, and never within `window_ms` of the last one.
    pub fn may_interrupt(&self, condition: Condition, now: UnixMs, window_ms: i64) -> bool {
        condition == Condition::None
            && !self.interrupted_episode
            && self.interrupted_at.is_none_or(|at| now - at >= window_ms)
    }

    /// Records an interrupt at `now`; the next rung waits a dwell.
    pub fn interrupted(&mut self, now: UnixMs) {
        self.interrupted_at = Some(now);
        self.interrupted_episode = true;
        self.enter(Rung::Warned, now);
    }

    /// The agent was seen working: a later stall is a new episode.
    pub fn worked(&mut self) {
        self.interrupted_episode = false;
    }

    /// Nudges sent within `window_ms` before `now`.
    pub fn nudges_within(&mut self, now: UnixMs, window_ms: i64) -> usize {
        while self.nudges.front().is_some_and(|t| now - t >= window_ms) {
            self.nudges.pop_front();
        }
        self.nudges.len()
    }
}
