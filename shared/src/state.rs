//! Session lifecycle states and screen conditions, with their wire forms.

use argus_proto::v1 as pb;

use crate::profile::Condition;

/// The lifecycle state of a supervised session.
///
/// `Booting -> Working <-> Stalled`, and the ends `Completed`, `Zombie` (tmux lives, agent gone)
/// and `Dead` (tmux session or pane gone). Observable state always wins over recorded state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionState {
    /// Seen, no activity yet.
    Booting,
    /// Alive and active, or not idle long enough to doubt it.
    Working,
    /// Alive but idle: screen unchanged, no CPU, not thinking.
    Stalled,
    /// The agent exited with status 0.
    Completed,
    /// The tmux session lives but its agent is gone.
    Zombie,
    /// The tmux session or its pane is gone.
    Dead,
}

impl SessionState {
    /// Lower-case name used in the store and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Booting => "booting",
            Self::Working => "working",
            Self::Stalled => "stalled",
            Self::Completed => "completed",
            Self::Zombie => "zombie",
            Self::Dead => "dead",
        }
    }

    /// Parses [`SessionState::as_str`] back.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "booting" => Self::Booting,
            "working" => Self::Working,
            "stalled" => Self::Stalled,
            "completed" => Self::Completed,
            "zombie" => Self::Zombie,
            "dead" => Self::Dead,
            _ => return None,
        })
    }

    /// True for states in which the agent process runs.
    pub fn is_alive(self) -> bool {
        matches!(self, Self::Booting | Self::Working | Self::Stalled)
    }
}

impl From<SessionState> for pb::SessionState {
    fn from(s: SessionState) -> Self {
        match s {
            SessionState::Booting => Self::Booting,
            SessionState::Working => Self::Working,
            SessionState::Stalled => Self::Stalled,
            SessionState::Completed => Self::Completed,
            SessionState::Zombie => Self::Zombie,
            SessionState::Dead => Self::Dead,
        }
    }
}

impl From<Condition> for pb::Condition {
    fn from(c: Condition) -> Self {
        match c {
            Condition::None => Self::Unspecified,
            Condition::AtPrompt => Self::AtPrompt,
            Condition::Thinking => Self::Thinking,
            Condition::WaitingPermission => Self::WaitingPermission,
            Condition::Dialog => Self::Dialog,
            Condition::RateLimited => Self::RateLimited,
            Condition::Error => Self::Error,
        }
    }
}

impl From<pb::Condition> for Condition {
    fn from(c: pb::Condition) -> Self {
        match c {
            pb::Condition::Unspecified => Self::None,
            pb::Condition::AtPrompt => Self::AtPrompt,
            pb::Condition::Thinking => Self::Thinking,
            pb::Condition::WaitingPermission => Self::WaitingPermission,
            pb::Condition::Dialog => Self::Dialog,
            pb::Condition::RateLimited => Self::RateLimited,
            pb::Condition::Error => Self::Error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in [
            SessionState::Booting,
            SessionState::Working,
            SessionState::Stalled,
            SessionState::Completed,
            SessionState::Zombie,
            SessionState::Dead,
        ] {
            assert_eq!(SessionState::parse(s.as_str()), Some(s));
        }
        assert_eq!(SessionState::parse("nope"), None);
    }
}

/// How a node looks from its heartbeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Health {
    /// Heard from recently.
    Up,
    /// Silent longer than `node_suspect_after`.
    Suspect,
    /// Silent longer than `node_down_after`, or disconnected.
    Down,
}

impl Health {
    /// Lower-case name for the API and the event stream.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Suspect => "suspect",
            Self::Down => "down",
        }
    }
}
