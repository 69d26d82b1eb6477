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
    /// Session names (globs, `*` matches any run of characters) the policy may act on although
    /// no agent profile recognised them and no `@argus-profile`/`@argus-restart` label opts them
    /// in. Everything else is only watched.
    pub act_on: Vec<String>,
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
    /// Time a destructive decision waits for a confirming re-check (still idle, node up).
    #[serde(with = "humantime_serde")]
    pub confirm_after: Duration,
    /// Who answers at the triage rung.
    pub triage: TriageConfig,
    /// Triage gets this long; no answer means "extend", never "kill".
    #[serde(with = "humantime_serde")]
    pub triage_timeout: Duration,
    /// Rate-limit cooldown when the screen names no reset time.
    #[serde(with = "humantime_serde")]
    pub rate_limit_cooldown: Duration,
    /// The renewal that forces a restart (cooldowns shrink as cooldown / renewals before it).
    pub rate_limit_max_renewals: u32,
    /// What is typed when a cooldown ends.
    pub rate_limit_resume_text: String,
    /// Deaths within `crash_loop_window` that make a crash loop.
    pub crash_loop_crashes: u32,
    /// Window of `crash_loop_crashes`.
    #[serde(with = "humantime_serde")]
    pub crash_loop_window: Duration,
    /// No restart for this long once a crash loop is seen.
    #[serde(with = "humantime_serde")]
    pub crash_loop_cooldown: Duration,
    /// More restarts than this within `restart_window`: no more blind restarts, triage and a human.
    pub max_restarts: u32,
    /// Restart history is forgotten after this long healthy.
    #[serde(with = "humantime_serde")]
    pub healthy_reset: Duration,
    /// Rate-limited sessions on one provider/account within `provider_window` that make one
    /// provider incident.
    pub provider_incident_sessions: u32,
    /// Window of `provider_incident_sessions`.
    #[serde(with = "humantime_serde")]
    pub provider_window: Duration,
    /// Deaths on one host within `mass_death_window` that make one host incident.
    pub mass_death_deaths: u32,
    /// Window of `mass_death_deaths`.
    #[serde(with = "humantime_serde")]
    pub mass_death_window: Duration,
    /// Restarts on a host are held this long after its last death in a mass-death incident.
    #[serde(with = "humantime_serde")]
    pub mass_death_hold: Duration,
    /// Share of nodes silent at once (with at least 2 nodes) at which the controller suspects its
    /// own network and freezes every destructive action.
    pub self_suspect_share: f64,
    /// Fleet-wide kills and restarts per minute.
    pub fleet_destructive_per_minute: u32,
    /// An open incident is notified again (webhooks) at most this often.
    #[serde(with = "humantime_serde")]
    pub notify_repeat: Duration,
    /// The quality gate command (`sh -c`, in the session's working directory) run at a finish
    /// point; empty: none. A session's `@argus-gate` label overrides it.
    pub gate: String,
    /// Gate runs per episode: failures before the last one send feedback, the last calls a person.
    pub gate_attempts: u32,
    /// A gate still running after this is killed and counts as failed.
    #[serde(with = "humantime_serde")]
    pub gate_timeout: Duration,
    /// Lines of the gate's output in a feedback nudge.
    pub gate_feedback_lines: u32,
    /// Bytes of the gate's output in a feedback nudge.
    pub gate_feedback_bytes: usize,
    /// Files an agent must not change (`[[guards]]`): the node agent restores them from git
    /// HEAD or from the copy it took when it first saw the session, and the agent is warned.
    pub guards: Vec<Guard>,
    /// Uncommitted work older than this gets a reminder nudge at the agent's prompt, at most
    /// one per this long; 0 turns reminders off.
    #[serde(with = "humantime_serde")]
    pub commit_reminder_after: Duration,
    /// What the reminder types.
    pub commit_reminder_text: String,
    /// A busy agent whose screen moves only in its animation (spinner glyph, elapsed-time and
    /// token counters, masked by its profile) for this long, with no new output line, is hung
    /// although its spinner moves: the ladder takes it up, triage first.
    #[serde(with = "humantime_serde")]
    pub animated_hang: Duration,
    /// `animated_hang` per agent profile (`{ claude = "20m" }`), for CLIs whose turns are slow.
    pub animated_hang_profiles:
        std::collections::BTreeMap<String, humantime_serde::Serde<Duration>>,
    /// How a restart hands the work over to the new agent (resume message, timeouts).
    pub handoff: crate::handoff::HandoffPolicy,
    /// Labels for untagged sessions (`[[selectors]]`), sent to every node agent, which tries
    /// them after its own configuration's; they give profile, provider, account and group only.
    pub selectors: Vec<argus_shared::selector::SelectorSpec>,
    /// Per-group overrides (`@argus-group`): `[groups.NAME]` with any of the keys above.
    #[serde(skip)]
    pub groups: std::collections::BTreeMap<String, std::sync::Arc<Policy>>,
}

/// A guarded file: `path` relative to the session's work tree, `marker` a string that must stay
/// in it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Guard {
    pub path: String,
    pub marker: String,
}

/// Who answers at the triage rung.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum TriageConfig {
    /// The built-in heuristic (reads the classified screen and history).
    #[default]
    Builtin,
    /// An external command: the case as JSON on stdin, a verdict as JSON on stdout.
    Command {
        /// argv of the command.
        argv: Vec<String>,
    },
    /// An OpenAI-compatible chat completions endpoint (`https://`, or `http://` on loopback).
    Openai {
        /// Base URL, e.g. `http://127.0.0.1:8000/v1` or `https://llm.example.com/v1`.
        url: String,
        /// Model name.
        model: String,
        /// Environment variable holding the API key, if any.
        #[serde(default)]
        api_key_env: String,
    },
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
            act_on: Vec::new(),
            restart_backoff_min: Duration::from_secs(1),
            restart_backoff_max: Duration::from_secs(60),
            restart_window: Duration::from_secs(600),
            node_suspect_after: Duration::from_secs(6),
            node_down_after: Duration::from_secs(15),
            command_timeout: Duration::from_secs(10),
            forget_dead_after: Duration::from_secs(3600),
            confirm_after: Duration::from_secs(2),
            triage: TriageConfig::Builtin,
            triage_timeout: Duration::from_secs(30),
            rate_limit_cooldown: Duration::from_secs(300),
            rate_limit_max_renewals: 4,
            rate_limit_resume_text: "continue".to_owned(),
            crash_loop_crashes: 3,
            crash_loop_window: Duration::from_secs(120),
            crash_loop_cooldown: Duration::from_secs(120),
            max_restarts: 5,
            healthy_reset: Duration::from_secs(600),
            provider_incident_sessions: 2,
            provider_window: Duration::from_secs(300),
            mass_death_deaths: 3,
            mass_death_window: Duration::from_secs(10),
            mass_death_hold: Duration::from_secs(60),
            self_suspect_share: 0.5,
            fleet_destructive_per_minute: 30,
            notify_repeat: Duration::from_secs(4 * 3600),
            gate: String::new(),
            gate_attempts: 3,
            gate_timeout: Duration::from_secs(600),
            gate_feedback_lines: 20,
            gate_feedback_bytes: 1500,
            guards: Vec::new(),
            commit_reminder_after: Duration::from_secs(30 * 60),
            commit_reminder_text: "You have uncommitted work older than 30 minutes: please commit your work now (git add, git commit) with a clear message, then continue.".to_owned(),
            animated_hang: Duration::from_secs(15 * 60),
            animated_hang_profiles: std::collections::BTreeMap::new(),
            handoff: crate::handoff::HandoffPolicy::default(),
            selectors: Vec::new(),
            groups: std::collections::BTreeMap::new(),
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
    Invalid { key: String, why: String },
}

impl Policy {
    /// Parses and validates a policy document. `[groups.NAME]` tables override keys for the
    /// sessions whose `@argus-group` is NAME.
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        let mut table: toml::Table = toml::from_str(text)?;
        let groups = match table.remove("groups") {
            None => toml::Table::new(),
            Some(toml::Value::Table(t)) => t,
            Some(_) => {
                return Err(PolicyError::Invalid {
                    key: "groups".into(),
                    why: "must be a table of [groups.NAME] tables".into(),
                });
            }
        };
        let mut p: Self = table.clone().try_into()?;
        p.validate()?;
        for (name, overrides) in groups {
            let toml::Value::Table(overrides) = overrides else {
                return Err(PolicyError::Invalid {
                    key: format!("groups.{name}"),
                    why: "must be a table".into(),
                });
            };
            let mut merged = table.clone();
            merged.extend(overrides);
            let g: Self = merged
                .try_into()
                .map_err(|e: toml::de::Error| PolicyError::Invalid {
                    key: format!("groups.{name}"),
                    why: e.to_string(),
                })?;
            g.validate().map_err(|e| match e {
                PolicyError::Invalid { key, why } => PolicyError::Invalid {
                    key: format!("groups.{name}.{key}"),
                    why,
                },
                other => other,
            })?;
            p.groups.insert(name, std::sync::Arc::new(g));
        }
        Ok(p)
    }

    /// The policy for a session of `group` (its `@argus-group` label): the group's overrides, or
    /// this policy.
    pub fn for_group<'a>(
        self: &'a std::sync::Arc<Self>,
        group: Option<&str>,
    ) -> &'a std::sync::Arc<Self> {
        group.and_then(|g| self.groups.get(g)).unwrap_or(self)
    }

    /// How long a busy agent of `profile` may show only its animation before it is hung.
    pub fn animated_hang_for(&self, profile: &str) -> Duration {
        self.animated_hang_profiles
            .get(profile)
            .map_or(self.animated_hang, |d| d.into_inner())
    }

    /// Checks ranges and relations between keys.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let invalid = |key: &str, why: &str| {
            Err(PolicyError::Invalid {
                key: key.to_owned(),
                why: why.to_owned(),
            })
        };
        if self.idle_checks == 0 {
            return invalid("idle_checks", "must be at least 1");
        }
        if let Some(g) = self.act_on.iter().find(|g| g.trim().is_empty()) {
            return invalid("act_on", &format!("empty session-name glob {g:?}"));
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
        if let Err(e) = argus_shared::command::validate_nudge(&self.rate_limit_resume_text) {
            return invalid("rate_limit_resume_text", &e.to_string());
        }
        if self.rate_limit_max_renewals == 0 {
            return invalid("rate_limit_max_renewals", "must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.self_suspect_share) || self.self_suspect_share == 0.0 {
            return invalid("self_suspect_share", "must be in (0, 1]");
        }
        if self.crash_loop_crashes == 0
            || self.mass_death_deaths == 0
            || self.provider_incident_sessions == 0
        {
            return invalid("crash_loop_crashes", "counts must be at least 1");
        }
        if self.triage_timeout.is_zero() {
            return invalid("triage_timeout", "must be positive");
        }
        if self.animated_hang.is_zero() {
            return invalid("animated_hang", "must be positive");
        }
        if let Some((name, _)) = self
            .animated_hang_profiles
            .iter()
            .find(|(_, d)| d.into_inner().is_zero())
        {
            return invalid(
                &format!("animated_hang_profiles.{name}"),
                "must be positive",
            );
        }
        if let TriageConfig::Command { argv } = &self.triage
            && argv.is_empty()
        {
            return invalid("triage.argv", "must name a command");
        }
        if self.command_timeout.is_zero() {
            return invalid("command_timeout", "must be positive");
        }
        if let Err((key, why)) = self.handoff.validate() {
            return invalid(&key, &why);
        }
        if let Err(e) = self
            .selectors
            .iter()
            .enumerate()
            .try_for_each(|(i, s)| s.check_policy(i))
            .and_then(|()| argus_shared::selector::Selectors::compile(&self.selectors).map(drop))
        {
            return invalid(&format!("selectors[{}].{}", e.index, e.key), &e.why);
        }
        self.validate_gate()
    }

    /// The quality-gate keys.
    fn validate_gate(&self) -> Result<(), PolicyError> {
        let invalid = |key: &str, why: String| {
            Err(PolicyError::Invalid {
                key: key.into(),
                why,
            })
        };
        let max_ms = argus_shared::command::MAX_GATE_TIMEOUT_MS;
        if self.gate_timeout.is_zero() || self.gate_timeout.as_millis() > u128::from(max_ms) {
            return invalid(
                "gate_timeout",
                format!("must be positive and at most {max_ms} ms"),
            );
        }
        if !self.gate.trim().is_empty()
            && let Err(e) = argus_shared::command::Action::gate(&self.gate, 0)
        {
            return invalid("gate", e.to_string());
        }
        for (i, g) in self.guards.iter().enumerate() {
            let path = std::path::Path::new(&g.path);
            let bad_path = g.path.is_empty()
                || path.is_absolute()
                || path
                    .components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)));
            if bad_path {
                return invalid(
                    &format!("guards[{i}].path"),
                    format!("{:?} must be a relative path inside the work tree", g.path),
                );
            }
            if g.marker.is_empty() || g.marker.contains('\n') {
                return invalid(
                    &format!("guards[{i}].marker"),
                    "must be a non-empty string on one line".into(),
                );
            }
        }
        if let Err(e) = argus_shared::command::validate_nudge(&self.commit_reminder_text) {
            return invalid("commit_reminder_text", e.to_string());
        }
        if self.gate_attempts == 0 {
            return invalid("gate_attempts", "must be at least 1".into());
        }
        if !(100..=3000).contains(&self.gate_feedback_bytes) || self.gate_feedback_lines == 0 {
            return invalid(
                "gate_feedback_bytes",
                "must be 100 to 3000 (and gate_feedback_lines at least 1)".into(),
            );
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
    fn groups_override_the_base() {
        let p = std::sync::Arc::new(
            Policy::from_toml(
                "nudge_dwell = \"5s\"\n[groups.night]\nnudge_budget = 10\n[triage]\nkind = \"command\"\nargv = [\"/bin/true\"]",
            )
            .expect("parses"),
        );
        let night = p.for_group(Some("night"));
        assert_eq!(night.nudge_budget, 10);
        assert_eq!(night.nudge_dwell, Duration::from_secs(5));
        assert_eq!(p.for_group(Some("day")).nudge_budget, 3);
        assert_eq!(p.for_group(None).nudge_budget, 3);
        assert!(matches!(p.triage, TriageConfig::Command { .. }));
        let e = Policy::from_toml("[groups.x]\nnudge_budgte = 1").expect_err("typo in group");
        assert!(
            e.to_string().contains("groups.x") && e.to_string().contains("nudge_budgte"),
            "{e}"
        );
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

    #[test]
    fn selectors_give_labels_but_never_commands() {
        let p = Policy::from_toml("[[selectors]]\nsession = \"claudesquad_*\"\ngroup = \"squad\"")
            .expect("parses");
        assert_eq!(p.selectors[0].group.as_deref(), Some("squad"));
        let e = Policy::from_toml("[[selectors]]\nsession = \"a*\"\nrestart = \"claude\"")
            .expect_err("a command");
        assert!(e.to_string().contains("selectors[0].restart"), "{e}");
        let e = Policy::from_toml("[[selectors]]\ngroup = \"g\"").expect_err("matches all");
        assert!(e.to_string().contains("selectors[0].session"), "{e}");
    }

    #[test]
    fn gate_keys() {
        let p =
            Policy::from_toml("gate = \"cargo test\"\ngate_attempts = 2\ngate_timeout = \"5m\"")
                .expect("parses");
        assert_eq!((p.gate.as_str(), p.gate_attempts), ("cargo test", 2));
        let p = Policy::from_toml("[[guards]]\npath = \"RULES.md\"\nmarker = \"IRON_LAW\"")
            .expect("parses");
        assert_eq!(p.guards[0].path, "RULES.md");
        for bad in [
            "[[guards]]\npath = \"../x\"\nmarker = \"m\"",
            "[[guards]]\npath = \"/etc/x\"\nmarker = \"m\"",
            "[[guards]]\npath = \"x\"\nmarker = \"\"",
        ] {
            let e = Policy::from_toml(bad).expect_err(bad);
            assert!(e.to_string().contains("guards[0]"), "{e}");
        }
        for bad in [
            "gate_attempts = 0",
            "gate_timeout = \"2h\"",
            "gate = \"a\\u0007\"",
        ] {
            let e = Policy::from_toml(bad).expect_err(bad);
            assert!(e.to_string().contains("gate"), "{e}");
        }
    }
}

/// True when `name` matches `glob`, where `*` matches any run of characters and everything else
/// matches itself.
pub fn glob_matches(glob: &str, name: &str) -> bool {
    let mut parts = glob.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod glob_tests {
    use super::glob_matches;

    #[test]
    fn globs_match_session_names() {
        assert!(glob_matches("agent-*", "agent-1"));
        assert!(glob_matches("agent-*", "agent-"));
        assert!(!glob_matches("agent-*", "my-agent-1"));
        assert!(glob_matches("*-worker", "codex-worker"));
        assert!(glob_matches("a*b*c", "a-b-c"));
        assert!(!glob_matches("a*b*c", "a-c"));
        assert!(glob_matches("exact", "exact"));
        assert!(!glob_matches("exact", "exact2"));
        assert!(glob_matches("*", ""));
        assert!(
            !glob_matches("ab*ba", "aba"),
            "the two ends must not overlap"
        );
    }
}
