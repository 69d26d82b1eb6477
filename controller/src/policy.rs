//! The supervision policy: thresholds, dwell times and budgets, loaded from TOML with defaults
//! from the design brief. Durations are written as `"30s"`, `"5m"`.

use std::time::Duration;

use serde::Deserialize;

/// When a dead agent is restarted by policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RestartOnDeath {
    /// Never: deaths are reported only.
    Never,
    /// Only sessions with an `@argus-restart` label (the operator opted in).
    Labelled,
    /// Every session whose start command is known.
    Always,
}

/// Every knob of detection and escalation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Unchanged probe intervals (no screen change, no CPU, not thinking) before a session is idle.
    pub idle_checks: u32,
    /// Agent CPU per second of wall time that counts as activity, in milliseconds.
    pub cpu_active_ms_per_s: u64,
    /// A session unchanged this long is restarted (when it has a restart command).
    #[serde(with = "humantime_serde")]
    pub hard_stall: Duration,
    /// Time on one ladder step before the next.
    #[serde(with = "humantime_serde")]
    pub nudge_dwell: Duration,
    /// Nudges allowed per session within `nudge_window`.
    pub nudge_budget: u32,
    /// The window of `nudge_budget`.
    #[serde(with = "humantime_serde")]
    pub nudge_window: Duration,
    /// What a nudge types.
    pub nudge_text: String,
    /// When a dead agent is restarted.
    pub restart_on_death: RestartOnDeath,
    /// First restart delay after a death; doubles per recent restart.
    #[serde(with = "humantime_serde")]
    pub restart_backoff_min: Duration,
    /// Largest restart delay.
    #[serde(with = "humantime_serde")]
    pub restart_backoff_max: Duration,
    /// Window in which restarts count towards the backoff.
    #[serde(with = "humantime_serde")]
    pub restart_window: Duration,
    /// A node silent this long is suspect.
    #[serde(with = "humantime_serde")]
    pub node_suspect_after: Duration,
    /// A node silent this long is down.
    #[serde(with = "humantime_serde")]
    pub node_down_after: Duration,
    /// A command not executed by then is refused by the node agent.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Dead sessions leave the live view after this long (their history stays in the store).
    #[serde(with = "humantime_serde")]
    pub forget_dead_after: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            idle_checks: 3,
            cpu_active_ms_per_s: 50,
            hard_stall: Duration::from_secs(3600),
            nudge_dwell: Duration::from_secs(60),
            nudge_budget: 3,
            nudge_window: Duration::from_secs(30 * 60),
            nudge_text: "Please continue with your task. If you are blocked, say what you need."
                .to_owned(),
            restart_on_death: RestartOnDeath::Labelled,
            restart_backoff_min: Duration::from_secs(1),
            restart_backoff_max: Duration::from_secs(60),
            restart_window: Duration::from_secs(600),
            node_suspect_after: Duration::from_secs(6),
            node_down_after: Duration::from_secs(15),
            command_timeout: Duration::from_secs(10),
            forget_dead_after: Duration::from_secs(3600),
        }
    }
}

/// Why a policy file was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file is not valid TOML for a policy (unknown key, wrong type).
    #[error("policy: {0}")]
    Parse(#[from] toml::de::Error),
    /// A value is out of range.
    #[error("policy key `{key}`: {why}")]
    Invalid { key: &'static str, why: String },
}

impl Policy {
    /// Parses and validates a policy document.
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        let p: Self = toml::from_str(text)?;
        p.validate()?;
        Ok(p)
    }

    /// Checks ranges and relations between keys.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let invalid = |key, why: &str| {
            Err(PolicyError::Invalid {
                key,
                why: why.to_owned(),
            })
        };
        if self.idle_checks == 0 {
            return invalid("idle_checks", "must be at least 1");
        }
        if self.node_down_after <= self.node_suspect_after {
            return invalid("node_down_after", "must be longer than node_suspect_after");
        }
        if self.restart_backoff_max < self.restart_backoff_min {
            return invalid(
                "restart_backoff_max",
                "must not be shorter than restart_backoff_min",
            );
        }
        if let Err(e) = argus_shared::command::validate_nudge(&self.nudge_text) {
            return invalid("nudge_text", &e.to_string());
        }
        if self.command_timeout.is_zero() {
            return invalid("command_timeout", "must be positive");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_files_override() {
        Policy::default().validate().expect("defaults valid");
        let p = Policy::from_toml("nudge_dwell = \"5s\"\nrestart_on_death = \"always\"")
            .expect("parses");
        assert_eq!(p.nudge_dwell, Duration::from_secs(5));
        assert_eq!(p.restart_on_death, RestartOnDeath::Always);
        assert_eq!(p.idle_checks, 3);
    }

    #[test]
    fn bad_files_name_the_key() {
        let e = Policy::from_toml("nudge_dwel = \"5s\"").expect_err("unknown key");
        assert!(e.to_string().contains("nudge_dwel"), "{e}");
        let e = Policy::from_toml("node_suspect_after = \"20s\"").expect_err("relation");
        assert!(e.to_string().contains("node_down_after"), "{e}");
        let e = Policy::from_toml("nudge_text = \"a\\nb\"").expect_err("control char");
        assert!(e.to_string().contains("nudge_text"), "{e}");
    }
}
