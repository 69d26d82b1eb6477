//! The escalation ladder of one session: which rung it stands on, since when, and the nudge
//! budget. The rungs grow with the policy (triage, terminate); each has a dwell time.

use std::collections::VecDeque;

use argus_shared::time::UnixMs;

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
    /// A restart was ordered (or refused for want of a command).
    Restarted,
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
}

impl Ladder {
    /// Moves to `rung` at `now`.
    pub fn enter(&mut self, rung: Rung, now: UnixMs) {
        self.rung = rung;
        self.entered_ms = now;
    }

    /// Back to the bottom rung (activity was seen). The nudge history stays: the budget counts
    /// nudges per window, whatever happened between them.
    pub fn reset(&mut self) {
        self.rung = Rung::Clear;
        self.held_for_human = false;
    }

    /// Records a nudge at `now`.
    pub fn nudged(&mut self, now: UnixMs) {
        self.nudges.push_back(now);
        self.enter(Rung::Nudged, now);
    }

    /// Nudges sent within `window_ms` before `now`.
    pub fn nudges_within(&mut self, now: UnixMs, window_ms: i64) -> usize {
        while self.nudges.front().is_some_and(|t| now - t >= window_ms) {
            self.nudges.pop_front();
        }
        self.nudges.len()
    }
}
