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
        "rate-limited" | "thinking" => Verdict::Extend,
        "error" if case.restart_known => Verdict::Restart,
        "error" => Verdict::NeedsHuman("error on screen and no restart command known".into()),
        "at-prompt" if case.nudges_in_window >= case.nudge_budget as usize => {
            Verdict::NeedsHuman(format!(
                "idle at its prompt for {} s after {} nudges: done, or waiting for a task",
                case.idle_for_s, case.nudges_in_window
            ))
        }
        "at-prompt" => Verdict::Nudge("Please continue with your task.".into()),
        _ if case.idle_for_s >= HUNG_RESTART_AFTER_S && case.restart_known => Verdict::Restart,
        _ if case.idle_for_s >= HUNG_RESTART_AFTER_S => Verdict::NeedsHuman(format!(
            "silent for {} s and no restart command known",
            case.idle_for_s
        )),
        _ => Verdict::Extend,
    }
}
