//! The built-in triage: a heuristic over the classified screen and the session's history. The
//! controller may ask an external command or a model instead; whatever they answer, a timeout or
//! a bad answer means "extend", never "kill".

use crate::detect::TriageCase;
use crate::escalate::Verdict;

/// A session idle this long without a recognisable prompt is restarted by the heuristic.
const HUNG_RESTART_AFTER_S: i64 = 600;

/// The built-in heuristic: reads the classified screen and the history.
pub fn heuristic(case: &TriageCase) -> Verdict {
    match case.condition.as_str() {
        "waiting-permission" => Verdict::NeedsHuman("waiting for a permission".into()),
        "dialog" => Verdict::NeedsHuman("a login, trust or first-run dialog".into()),
        "rate-limited" | "thinking" => Verdict::Extend,
        // An error banner is the agent's own report; a restart would throw its work away, and a
        // nudge cannot fix a bad key or a provider outage. A person decides.
        "error" => Verdict::NeedsHuman(format!(
            "the agent shows an error and has been idle for {} s",
            case.idle_for_s
        )),
        "at-prompt" if case.nudges_in_window >= case.nudge_budget as usize => {
            Verdict::NeedsHuman(format!(
                "idle at its prompt for {} s after {} nudges: done, or waiting for a task",
                case.idle_for_s, case.nudges_in_window
            ))
        }
        "at-prompt" => Verdict::Nudge("Please continue with your task.".into()),
        // Busy by its screen, but only its spinner and counters moved for `animated_hang`: a
        // nudge would queue behind the hung turn and a restart throws the turn away. A person
        // decides (an external triage may answer restart).
        crate::detect::ANIMATED_HANG => Verdict::NeedsHuman(format!(
            "busy for {} s with no new output: only its spinner, timer or token counter moves",
            case.idle_for_s
        )),
        _ if case.idle_for_s >= HUNG_RESTART_AFTER_S && case.restart_known => Verdict::Restart,
        _ if case.idle_for_s >= HUNG_RESTART_AFTER_S => Verdict::NeedsHuman(format!(
            "silent for {} s and no restart command known",
            case.idle_for_s
        )),
        _ => Verdict::Extend,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(condition: &str, idle: i64, nudges: usize) -> TriageCase {
        TriageCase {
            state: "stalled".into(),
            condition: condition.into(),
            agent: "claude".into(),
            idle_for_s: idle,
            nudges_in_window: nudges,
            nudge_budget: 3,
            restarts_in_window: 0,
            restart_known: true,
            reason: String::new(),
        }
    }

    #[test]
    fn heuristic_is_careful() {
        assert_eq!(heuristic(&case("thinking", 9999, 0)), Verdict::Extend);
        assert!(matches!(
            heuristic(&case("waiting-permission", 9999, 0)),
            Verdict::NeedsHuman(_)
        ));
        assert!(matches!(
            heuristic(&case("at-prompt", 100, 0)),
            Verdict::Nudge(_)
        ));
        assert!(matches!(
            heuristic(&case("at-prompt", 100, 3)),
            Verdict::NeedsHuman(_)
        ));
        assert!(
            matches!(heuristic(&case("error", 10, 0)), Verdict::NeedsHuman(_)),
            "an error on screen never restarts by itself"
        );
        assert!(matches!(
            heuristic(&case("error", 7200, 0)),
            Verdict::NeedsHuman(_)
        ));
        assert_eq!(heuristic(&case("none", 60, 0)), Verdict::Extend);
        assert!(
            matches!(
                heuristic(&case("animated-hang", 900, 0)),
                Verdict::NeedsHuman(_)
            ),
            "a hang that animates calls a person, never restarts by itself"
        );
        assert_eq!(heuristic(&case("none", 700, 0)), Verdict::Restart);
    }
}
