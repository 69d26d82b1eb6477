//! Durable alarms: when a due alarm is typed into its session. Pure: the controller gives the
//! alarm's timing and what it sees of the session, and gets back deliver, hold (with the reason,
//! shown in `argusctl alarms`) or wait.
//!
//! An alarm is a nudge the agent (or an operator) asked for, so it follows the nudge's manners:
//! only at the agent's prompt, never while it works, waits for a person (permission, dialog),
//! is rate-limited, or while a person is attached (they may be typing). A held alarm is never
//! dropped: it is delivered at the first prompt after its due time.

use argus_shared::profile::Condition;
use argus_shared::state::SessionState;
use argus_shared::time::UnixMs;

/// Longest delay an alarm may be set for.
pub const MAX_AHEAD_MS: i64 = 30 * 24 * 3600 * 1000;
/// Longest note, in bytes.
pub const MAX_NOTE: usize = 1000;
/// After a delivery, the session's next alarm waits for an observation newer than it (the
/// agent answered: its screen moved), or this long when none comes.
pub const SETTLE_MS: i64 = 10_000;

/// An alarm's timing, as the controller keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// When it is due.
    pub due_ms: UnixMs,
    /// After a failed delivery: not before this time.
    pub retry_at_ms: UnixMs,
    /// A delivery is under way (its answer has not come back).
    pub in_flight: bool,
}

/// What the controller sees of the alarm's session right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The node is up, connected and its first snapshot after attach was applied.
    pub node_ready: bool,
    /// The session is in the live view; `None` fields below when it is not.
    pub session: Option<SessionSeen>,
    /// Another alarm of the same session is being delivered, or comes first (due earlier).
    pub sibling_first: bool,
    /// When the session's last alarm was delivered (by this controller process).
    pub last_delivery_ms: Option<UnixMs>,
}

/// The session's part of [`Seen`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSeen {
    pub state: SessionState,
    pub condition: Condition,
    /// Human clients attached.
    pub attached: u32,
    /// An agent process (or the pane's own non-shell program) is known.
    pub has_agent: bool,
    /// When the latest observation arrived.
    pub observed_ms: UnixMs,
}

/// Why a due alarm waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// Its node is down, disconnected or not yet reconciled after an attach.
    NodeNotReady,
    /// The session is not in the live view (it may come back).
    SessionAbsent,
    /// The session ended (dead, completed) or has no agent: delivered once it runs again.
    NotRunning(SessionState),
    /// The agent is working.
    Working,
    /// The agent asks a person (permission, login, trust).
    WaitingForPerson,
    /// The agent is rate-limited.
    RateLimited,
    /// A person is attached to the session.
    PersonAttached,
    /// Neither a prompt nor anything else recognised on the screen.
    NotAtPrompt,
    /// The last delivery failed; the next attempt is at this time.
    Retrying { at_ms: UnixMs },
    /// A delivery is under way.
    InFlight,
    /// Another alarm of the session goes first.
    Queued,
    /// An alarm was just delivered: waiting to see the agent take it.
    Settling,
}

impl std::fmt::Display for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NodeNotReady => write!(f, "held: the node is not connected"),
            Self::SessionAbsent => write!(f, "held: the session is not in the live view"),
            Self::NotRunning(s) => write!(f, "held: the session is {}", s.as_str()),
            Self::Working => write!(f, "held: the agent is working"),
            Self::WaitingForPerson => write!(f, "held: the agent waits for a person"),
            Self::RateLimited => write!(f, "held: the agent is rate-limited"),
            Self::PersonAttached => write!(f, "held: a person is attached"),
            Self::NotAtPrompt => write!(f, "held: the agent is not at its prompt"),
            Self::Retrying { .. } => write!(f, "held: the last delivery failed, retrying"),
            Self::InFlight => write!(f, "being delivered"),
            Self::Queued => write!(f, "held: another alarm of this session goes first"),
            Self::Settling => write!(f, "held: the agent is taking the previous alarm"),
        }
    }
}

/// What to do with one alarm now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Not due yet.
    Wait,
    /// Type it into the session now.
    Deliver,
    /// Due, but not now.
    Held(Hold),
}

/// Decides one alarm at `now`.
pub fn decide(t: &Timing, seen: &Seen, now: UnixMs) -> Decision {
    if now < t.due_ms {
        return Decision::Wait;
    }
    if t.in_flight {
        return Decision::Held(Hold::InFlight);
    }
    if now < t.retry_at_ms {
        return Decision::Held(Hold::Retrying {
            at_ms: t.retry_at_ms,
        });
    }
    if !seen.node_ready {
        return Decision::Held(Hold::NodeNotReady);
    }
    let Some(s) = &seen.session else {
        return Decision::Held(Hold::SessionAbsent);
    };
    let running = matches!(
        s.state,
        SessionState::Booting | SessionState::Working | SessionState::Stalled
    );
    if !running || !s.has_agent {
        return Decision::Held(Hold::NotRunning(s.state));
    }
    let hold = match s.condition {
        Condition::Thinking => Some(Hold::Working),
        Condition::WaitingPermission | Condition::Dialog => Some(Hold::WaitingForPerson),
        Condition::RateLimited => Some(Hold::RateLimited),
        Condition::None | Condition::Error => Some(Hold::NotAtPrompt),
        Condition::AtPrompt => None,
    };
    if let Some(h) = hold {
        return Decision::Held(h);
    }
    if s.attached > 0 {
        return Decision::Held(Hold::PersonAttached);
    }
    if seen.sibling_first {
        return Decision::Held(Hold::Queued);
    }
    // The prompt seen may be the one from before the last delivery: wait for a newer look.
    if let Some(last) = seen.last_delivery_ms
        && s.observed_ms <= last
        && now - last < SETTLE_MS
    {
        return Decision::Held(Hold::Settling);
    }
    Decision::Deliver
}

/// The wait before the next attempt after `failures` failed deliveries: 5 s doubling, at most
/// 5 minutes.
pub fn retry_delay_ms(failures: u32) -> i64 {
    (5_000i64 << failures.saturating_sub(1).min(6)).min(300_000)
}

/// Why a requested alarm is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AlarmError {
    /// Neither or both of a delay and a time.
    #[error("give exactly one of in_ms and at_ms")]
    When,
    /// The time is in the past.
    #[error("at_ms is in the past")]
    Past,
    /// Too far ahead.
    #[error("an alarm may be set at most 30 days ahead")]
    TooFar,
    /// The note is empty.
    #[error("the note is empty")]
    EmptyNote,
    /// The note is too long.
    #[error("the note is {len} bytes; at most {MAX_NOTE}")]
    NoteTooLong { len: usize },
}

/// The due time of an alarm requested at `now` with a delay (`in_ms`) or a time (`at_ms`,
/// a past time up to 1 s back counts as now: the clocks of caller and controller differ a bit).
pub fn due_time(in_ms: u64, at_ms: i64, now: UnixMs) -> Result<UnixMs, AlarmError> {
    let due = match (in_ms, at_ms) {
        (0, 0) => return Err(AlarmError::When),
        (d, 0) => now.saturating_add(i64::try_from(d).unwrap_or(i64::MAX)),
        (0, at) if at < now - 1000 => return Err(AlarmError::Past),
        (0, at) => at.max(now),
        _ => return Err(AlarmError::When),
    };
    if due - now > MAX_AHEAD_MS {
        return Err(AlarmError::TooFar);
    }
    Ok(due)
}

/// Checks a note's length (the nudge's own validation refuses control characters).
pub fn check_note(note: &str) -> Result<(), AlarmError> {
    if note.trim().is_empty() {
        return Err(AlarmError::EmptyNote);
    }
    if note.len() > MAX_NOTE {
        return Err(AlarmError::NoteTooLong { len: note.len() });
    }
    Ok(())
}

/// The text typed into the session: says it is an alarm and who set it, then the note.
pub fn nudge_text(note: &str, origin: &str) -> String {
    let who = if origin == "self" {
        "you"
    } else {
        "an operator"
    };
    format!("[alarm set by {who}] {note}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(due: i64) -> Timing {
        Timing {
            due_ms: due,
            retry_at_ms: 0,
            in_flight: false,
        }
    }

    fn seen(state: SessionState, condition: Condition, attached: u32) -> Seen {
        Seen {
            node_ready: true,
            session: Some(SessionSeen {
                state,
                condition,
                attached,
                has_agent: true,
                observed_ms: 0,
            }),
            sibling_first: false,
            last_delivery_ms: None,
        }
    }

    #[test]
    fn delivered_at_the_prompt_once_due() {
        let at_prompt = seen(SessionState::Stalled, Condition::AtPrompt, 0);
        assert_eq!(decide(&timing(100), &at_prompt, 99), Decision::Wait);
        assert_eq!(decide(&timing(100), &at_prompt, 100), Decision::Deliver);
        let booting = seen(SessionState::Booting, Condition::AtPrompt, 0);
        assert_eq!(decide(&timing(100), &booting, 500), Decision::Deliver);
    }

    #[test]
    fn held_while_working_waiting_for_a_person_or_watched() {
        let cases = [
            (SessionState::Working, Condition::Thinking, 0, Hold::Working),
            (
                SessionState::Stalled,
                Condition::WaitingPermission,
                0,
                Hold::WaitingForPerson,
            ),
            (
                SessionState::Stalled,
                Condition::Dialog,
                0,
                Hold::WaitingForPerson,
            ),
            (
                SessionState::Stalled,
                Condition::RateLimited,
                0,
                Hold::RateLimited,
            ),
            (
                SessionState::Stalled,
                Condition::AtPrompt,
                1,
                Hold::PersonAttached,
            ),
            (SessionState::Working, Condition::None, 0, Hold::NotAtPrompt),
            (
                SessionState::Dead,
                Condition::AtPrompt,
                0,
                Hold::NotRunning(SessionState::Dead),
            ),
            (
                SessionState::Zombie,
                Condition::AtPrompt,
                0,
                Hold::NotRunning(SessionState::Zombie),
            ),
        ];
        for (state, condition, attached, hold) in cases {
            assert_eq!(
                decide(&timing(0), &seen(state, condition, attached), 10),
                Decision::Held(hold),
                "{state:?} {condition:?}"
            );
        }
    }

    #[test]
    fn held_while_the_node_or_session_is_away_in_flight_or_backing_off() {
        let mut s = seen(SessionState::Stalled, Condition::AtPrompt, 0);
        s.node_ready = false;
        assert_eq!(
            decide(&timing(0), &s, 10),
            Decision::Held(Hold::NodeNotReady)
        );
        let absent = Seen {
            node_ready: true,
            session: None,
            sibling_first: false,
            last_delivery_ms: None,
        };
        assert_eq!(
            decide(&timing(0), &absent, 10),
            Decision::Held(Hold::SessionAbsent)
        );
        let ok = seen(SessionState::Stalled, Condition::AtPrompt, 0);
        let mut t = timing(0);
        t.in_flight = true;
        assert_eq!(decide(&t, &ok, 10), Decision::Held(Hold::InFlight));
        let t = Timing {
            retry_at_ms: 50,
            ..timing(0)
        };
        assert_eq!(
            decide(&t, &ok, 10),
            Decision::Held(Hold::Retrying { at_ms: 50 })
        );
        assert_eq!(decide(&t, &ok, 50), Decision::Deliver);
    }

    #[test]
    fn one_alarm_of_a_session_at_a_time_each_at_a_fresh_prompt() {
        let mut s = seen(SessionState::Stalled, Condition::AtPrompt, 0);
        s.sibling_first = true;
        assert_eq!(decide(&timing(0), &s, 10), Decision::Held(Hold::Queued));
        s.sibling_first = false;
        // Delivered at 100; the prompt was seen at 90: not yet.
        s.last_delivery_ms = Some(100);
        if let Some(x) = s.session.as_mut() {
            x.observed_ms = 90;
        }
        assert_eq!(decide(&timing(0), &s, 200), Decision::Held(Hold::Settling));
        // A newer look at the prompt, or long enough without one.
        assert_eq!(decide(&timing(0), &s, 100 + SETTLE_MS), Decision::Deliver);
        if let Some(x) = s.session.as_mut() {
            x.observed_ms = 150;
        }
        assert_eq!(decide(&timing(0), &s, 200), Decision::Deliver);
    }

    #[test]
    fn due_times_are_checked() {
        assert_eq!(due_time(0, 0, 1000), Err(AlarmError::When));
        assert_eq!(due_time(5, 7000, 1000), Err(AlarmError::When));
        assert_eq!(due_time(500, 0, 1000), Ok(1500));
        assert_eq!(due_time(0, 5000, 1000), Ok(5000));
        // A moment in the past (clock skew) is now; further back is refused.
        assert_eq!(due_time(0, 500, 1000), Ok(1000));
        assert_eq!(due_time(0, -500, 1000), Err(AlarmError::Past));
        assert_eq!(
            due_time(MAX_AHEAD_MS as u64 + 1, 0, 0),
            Err(AlarmError::TooFar)
        );
        assert_eq!(due_time(u64::MAX, 0, 0), Err(AlarmError::TooFar));
        assert_eq!(check_note(" "), Err(AlarmError::EmptyNote));
        assert!(check_note(&"x".repeat(MAX_NOTE + 1)).is_err());
        assert!(check_note("check the CI run").is_ok());
    }

    #[test]
    fn retries_back_off_to_five_minutes() {
        assert_eq!(retry_delay_ms(1), 5_000);
        assert_eq!(retry_delay_ms(2), 10_000);
        assert_eq!(retry_delay_ms(50), 300_000);
    }
}
