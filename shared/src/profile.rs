//! Agent profiles: which process is which agent, and what its screen shows, as versioned data.
//!
//! The patterns live in `shared/profiles/agents.toml` (compiled in) and in an optional operator
//! file layered on top; this module is the generic engine that reads them. A profile names regexes
//! per [`Condition`]; [`Profile::classify`] looks for them in the last non-blank lines of a screen
//! and lets the strongest condition win:
//! `RateLimited > WaitingPermission > Thinking > Error > AtPrompt > None`.
//! Each condition looks only at its own window of bottom lines, so text scrolled further up (an
//! answered permission prompt, an old error) does not count, and a match can be voided by a
//! `cleared_by` line below it (aider's "Tokens: … sent" after a retried rate limit).

mod format;
mod reset;

use std::fmt;
use std::sync::LazyLock;

use regex::RegexSet;

pub use reset::parse_reset;

/// Name of the generic fallback profile. It never matches by process.
pub const GENERIC: &str = "shell";

/// Lines each condition looks at when neither the profile nor the condition says otherwise.
pub const DEFAULT_LAST_LINES: usize = 15;

/// Lines after a rate-limit match that are read for its reset time (the message may wrap).
const RESET_CONTEXT_LINES: usize = 2;

static BUILTIN: LazyLock<Result<Profiles, ProfileError>> =
    LazyLock::new(|| Profiles::from_toml(include_str!("../profiles/agents.toml")));

/// What the screen shows. Mirrors proto `argus.v1.Condition`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Condition {
    /// Nothing recognised.
    #[default]
    None,
    /// The agent shows its input prompt and waits for a task.
    AtPrompt,
    /// The agent is busy (spinner, "esc to interrupt").
    Thinking,
    /// The agent asks for a permission or confirmation: a person must answer.
    WaitingPermission,
    /// The agent reports a rate limit or usage limit.
    RateLimited,
    /// The agent shows an error banner.
    Error,
}

impl Condition {
    /// Every condition a profile can match, strongest first. `None` is what is left.
    pub const PRECEDENCE: [Condition; 5] = [
        Condition::RateLimited,
        Condition::WaitingPermission,
        Condition::Thinking,
        Condition::Error,
        Condition::AtPrompt,
    ];

    /// Kebab-case name, as used in logs and in fixture file names (`at-prompt`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::AtPrompt => "at-prompt",
            Self::Thinking => "thinking",
            Self::WaitingPermission => "waiting-permission",
            Self::RateLimited => "rate-limited",
            Self::Error => "error",
        }
    }

    /// Parses [`Condition::as_str`] back.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "none" => Self::None,
            "at-prompt" => Self::AtPrompt,
            "thinking" => Self::Thinking,
            "waiting-permission" => Self::WaitingPermission,
            "rate-limited" => Self::RateLimited,
            "error" => Self::Error,
            _ => return None,
        })
    }

    /// The key of this condition's table in the profile TOML (`rate_limit`).
    fn key(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::AtPrompt => "prompt",
            Self::Thinking => "thinking",
            Self::WaitingPermission => "permission",
            Self::RateLimited => "rate_limit",
            Self::Error => "error",
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The result of classifying a screen.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Classification {
    /// What the screen shows.
    pub condition: Condition,
    /// For RateLimited: parsed reset time as Unix seconds, when the screen names one.
    pub reset_at: Option<i64>,
}

/// Why a profile document was refused. Every variant names the TOML key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// Not TOML, or not the profile schema (unknown key, wrong type, missing `version`).
    #[error("parse agent profiles: {0}")]
    Parse(#[from] toml::de::Error),
    /// A pattern is not a valid regex.
    #[error("agent profile `{profile}`: `{key}` is not a valid regex: {source}")]
    Pattern {
        profile: String,
        key: String,
        #[source]
        source: regex::Error,
    },
    /// A value is out of range or contradicts the schema's rules.
    #[error("agent profiles: `{key}` {reason}")]
    Invalid { key: String, reason: String },
}

// === impl Profiles ===

/// A set of agent profiles: the built-in ones, possibly with an operator file layered on top.
#[derive(Debug, Clone)]
pub struct Profiles {
    version: u32,
    /// In match order: an operator file's profiles first, then the built-in ones, each in name
    /// order.
    profiles: Vec<Profile>,
}

impl Profiles {
    /// The compiled-in profiles (shared/profiles/agents.toml).
    pub fn builtin() -> Profiles {
        match &*BUILTIN {
            Ok(profiles) => profiles.clone(),
            // The built-in file is checked by `builtin_profiles_parse` in every test run; should
            // it ever be broken, the agent still runs and classifies nothing.
            Err(_) => Profiles {
                version: 0,
                profiles: Vec::new(),
            },
        }
    }

    /// Parse a TOML document in the same format; error names the offending key/profile and why
    /// (bad regex etc.).
    pub fn from_toml(text: &str) -> Result<Profiles, ProfileError> {
        format::parse(text)
    }

    /// `self` with an operator file layered on top: profiles with the same name replace `self`'s,
    /// new names are added. The operator's profiles are tried first by
    /// [`Profiles::match_process`]. The result's version is the higher of the two.
    pub fn with_overrides(self, other: Profiles) -> Profiles {
        let mut profiles = other.profiles;
        for p in self.profiles {
            if !profiles.iter().any(|o| o.name == p.name) {
                profiles.push(p);
            }
        }
        Profiles {
            version: self.version.max(other.version),
            profiles,
        }
    }

    /// Profile by name ("claude", "codex", "aider", "gemini", "shell").
    pub fn get(&self, name: &str) -> Option<&Profile> {
        self.profiles.iter().find(|p| p.name == name)
    }

    /// Names of all profiles, in match order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.profiles.iter().map(|p| p.name.as_str())
    }

    /// The profile whose process patterns match this process (comm = /proc/PID/comm, cmdline =
    /// args joined by spaces). None if no agent profile matches. The generic profile never
    /// matches, so ordinary shells (bash, zsh, sh, fish, dash) do not.
    pub fn match_process(&self, comm: &str, cmdline: &str) -> Option<&Profile> {
        self.profiles
            .iter()
            .filter(|p| p.name != GENERIC)
            .find(|p| p.matches_process(comm, cmdline))
    }

    /// The generic fallback profile ("shell"). A set without one (an operator file read on its
    /// own) falls back to a profile that classifies everything as `None`.
    pub fn generic(&self) -> &Profile {
        static EMPTY: LazyLock<Profile> = LazyLock::new(|| Profile::empty(GENERIC));
        self.get(GENERIC).unwrap_or(&EMPTY)
    }

    /// The `version = N` top-level key of the TOML.
    pub fn version(&self) -> u32 {
        self.version
    }
}

// === impl Profile ===

/// One agent's patterns, compiled.
#[derive(Debug, Clone)]
pub struct Profile {
    /// The profile's name, the key under `[profiles]`.
    pub name: String,
    /// Free text for people (`description = "..."`).
    pub description: String,
    comm: Option<RegexSet>,
    cmdline: Option<RegexSet>,
    /// One rule per condition in [`Condition::PRECEDENCE`] order; conditions without patterns
    /// are left out.
    rules: Vec<Rule>,
    /// The largest window of any rule: how many bottom lines classification reads at all.
    max_lines: usize,
    submit_keys: Vec<String>,
}

/// The patterns of one condition.
#[derive(Debug, Clone)]
struct Rule {
    condition: Condition,
    /// Non-blank bottom lines this rule looks at.
    last_lines: usize,
    patterns: RegexSet,
    /// A match is void when a line below it matches one of these.
    cleared_by: Option<RegexSet>,
}

impl Profile {
    fn empty(name: &str) -> Profile {
        Profile {
            name: name.to_owned(),
            description: String::new(),
            comm: None,
            cmdline: None,
            rules: Vec::new(),
            max_lines: 0,
            submit_keys: vec!["Enter".to_owned()],
        }
    }

    /// Classify the last lines of a screen (plain text, lines separated by '\n', trailing blank
    /// lines possible). `now` = current Unix seconds, `utc_offset_secs` = local offset used to
    /// interpret wall-clock times like "resets 3pm".
    pub fn classify(&self, screen: &str, now: i64, utc_offset_secs: i32) -> Classification {
        let tail = tail_lines(screen, self.max_lines);
        for rule in &self.rules {
            let window = &tail[tail.len().saturating_sub(rule.last_lines)..];
            let below_start = tail.len() - window.len();
            let mut matched = (0..window.len()).rev().filter(|&i| {
                rule.patterns.is_match(window[i])
                    && !rule.cleared_by.as_ref().is_some_and(|clear| {
                        tail[below_start + i + 1..]
                            .iter()
                            .any(|line| clear.is_match(line))
                    })
            });
            let Some(last) = matched.next() else {
                continue;
            };
            let reset_at = if rule.condition == Condition::RateLimited {
                std::iter::once(last)
                    .chain(matched)
                    .find_map(|i| reset_near(window, i, now, utc_offset_secs))
            } else {
                None
            };
            return Classification {
                condition: rule.condition,
                reset_at,
            };
        }
        Classification::default()
    }

    /// Keys that submit a nudge after the text is typed, as tmux key names, e.g. ["Enter"].
    pub fn submit_keys(&self) -> &[String] {
        &self.submit_keys
    }

    fn matches_process(&self, comm: &str, cmdline: &str) -> bool {
        self.comm.as_ref().is_some_and(|s| s.is_match(comm))
            || self.cmdline.as_ref().is_some_and(|s| s.is_match(cmdline))
    }
}

/// The last `n` non-blank lines of `screen`, trailing whitespace trimmed, oldest first.
fn tail_lines(screen: &str, n: usize) -> Vec<&str> {
    let mut tail: Vec<&str> = screen
        .lines()
        .rev()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .take(n)
        .collect();
    tail.reverse();
    tail
}

/// The reset time named on line `i` of `window` or on the lines it wraps onto.
fn reset_near(window: &[&str], i: usize, now: i64, utc_offset_secs: i32) -> Option<i64> {
    let end = (i + 1 + RESET_CONTEXT_LINES).min(window.len());
    // Box borders would split a wrapped sentence ("… try │ │ again at 3pm"): drop them.
    let text = window[i..end]
        .iter()
        .map(|l| l.trim_matches(|c: char| c.is_whitespace() || "│┃║|".contains(c)))
        .collect::<Vec<_>>()
        .join(" ");
    parse_reset(&text, now, utc_offset_secs)
}

#[cfg(test)]
mod tests;
