//! The profile TOML schema (documented at the top of `shared/profiles/agents.toml`) and its
//! validation into compiled [`Profile`]s. Validation happens once, here; errors name the key.

use std::collections::BTreeMap;

use regex::{RegexSet, RegexSetBuilder};
use serde::Deserialize;

use super::{
    Condition, DEFAULT_LAST_LINES, GENERIC, Profile, ProfileError, Profiles, Resume, Rule,
};

/// Upper bound for `last_lines`: classification reads bottom lines, not whole scrollbacks.
const MAX_LAST_LINES: usize = 200;

/// Upper bound for `submit_delay_ms`: a nudge waits this long at most between text and Enter.
const MAX_SUBMIT_DELAY_MS: u64 = 5_000;

/// Upper bound for `interrupt_window_ms`.
const MAX_INTERRUPT_WINDOW_MS: u64 = 60_000;

/// Compiled size limit per pattern set, so an operator file cannot make the agent allocate
/// without bound.
const SET_SIZE_LIMIT: usize = 16 << 20;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    version: u32,
    #[serde(default)]
    profiles: BTreeMap<String, RawProfile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    #[serde(default)]
    description: String,
    last_lines: Option<usize>,
    submit_keys: Option<Vec<String>>,
    submit_delay_ms: Option<u64>,
    interrupt_keys: Option<Vec<String>>,
    interrupt_window_ms: Option<u64>,
    resume: Option<RawResume>,
    #[serde(default)]
    new_turn: Vec<String>,
    #[serde(default)]
    output: Vec<String>,
    #[serde(default)]
    turn_done: Vec<String>,
    #[serde(default)]
    mask: Vec<String>,
    #[serde(default)]
    title: RawTitle,
    #[serde(default)]
    process: RawProcess,
    #[serde(default)]
    dialog: RawRule,
    #[serde(default)]
    prompt: RawRule,
    #[serde(default)]
    thinking: RawRule,
    #[serde(default)]
    permission: RawRule,
    #[serde(default)]
    rate_limit: RawRule,
    #[serde(default)]
    error: RawRule,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResume {
    args: Vec<String>,
    #[serde(default)]
    present_if: Vec<String>,
    #[serde(default)]
    picker: Vec<String>,
    #[serde(default)]
    by_id: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProcess {
    #[serde(default)]
    comm: Vec<String>,
    #[serde(default)]
    cmdline: Vec<String>,
}

/// `[profiles.<name>.title]`: what the pane title (`#{pane_title}`) says, per condition.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTitle {
    #[serde(default)]
    thinking: Vec<String>,
    #[serde(default)]
    permission: Vec<String>,
    #[serde(default)]
    prompt: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    last_lines: Option<usize>,
    #[serde(default)]
    patterns: Vec<String>,
    #[serde(default)]
    cleared_by: Vec<String>,
}

impl RawProfile {
    fn rule(&self, condition: Condition) -> &RawRule {
        match condition {
            Condition::AtPrompt => &self.prompt,
            Condition::Thinking => &self.thinking,
            Condition::WaitingPermission => &self.permission,
            Condition::Dialog => &self.dialog,
            Condition::RateLimited => &self.rate_limit,
            Condition::Error | Condition::None => &self.error,
        }
    }
}

/// Parses and validates a profile document.
pub(super) fn parse(text: &str) -> Result<Profiles, ProfileError> {
    let doc: Document = toml::from_str(text)?;
    if doc.version == 0 {
        return Err(invalid("version", "must be 1 or more"));
    }
    let profiles = doc
        .profiles
        .into_iter()
        .map(|(name, raw)| compile_profile(name, raw))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Profiles {
        version: doc.version,
        profiles,
    })
}

fn compile_profile(name: String, raw: RawProfile) -> Result<Profile, ProfileError> {
    let base = format!("profiles.{name}");
    let name_ok = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.starts_with(|c: char| c.is_ascii_lowercase());
    if !name_ok {
        return Err(invalid(
            &base,
            "is not a profile name: use lower-case letters, digits, '-' and '_', starting with a letter",
        ));
    }
    if name == GENERIC && !(raw.process.comm.is_empty() && raw.process.cmdline.is_empty()) {
        return Err(invalid(
            &format!("{base}.process"),
            "must be empty: the generic profile never matches by process, so that ordinary shells are not taken for agents",
        ));
    }
    let default_lines =
        check_lines(&format!("{base}.last_lines"), raw.last_lines)?.unwrap_or(DEFAULT_LAST_LINES);

    let submit_keys = raw
        .submit_keys
        .clone()
        .unwrap_or_else(|| vec!["Enter".to_owned()]);
    for (i, key) in submit_keys.iter().enumerate() {
        if key.trim().is_empty() || key.chars().any(char::is_control) {
            return Err(invalid(
                &format!("{base}.submit_keys[{i}]"),
                "must be a tmux key name such as \"Enter\" or \"C-m\"",
            ));
        }
    }

    let interrupt_keys = raw
        .interrupt_keys
        .clone()
        .unwrap_or_else(|| vec!["C-c".to_owned()]);
    for (i, key) in interrupt_keys.iter().enumerate() {
        if key.trim().is_empty() || key.chars().any(char::is_control) {
            return Err(invalid(
                &format!("{base}.interrupt_keys[{i}]"),
                "must be a tmux key name such as \"C-c\" or \"Escape\"",
            ));
        }
    }
    let submit_delay_ms = raw
        .submit_delay_ms
        .unwrap_or(super::DEFAULT_SUBMIT_DELAY_MS);
    if submit_delay_ms > MAX_SUBMIT_DELAY_MS {
        return Err(invalid(
            &format!("{base}.submit_delay_ms"),
            &format!("must be at most {MAX_SUBMIT_DELAY_MS}, not {submit_delay_ms}"),
        ));
    }
    let interrupt_window_ms = raw
        .interrupt_window_ms
        .unwrap_or(super::DEFAULT_INTERRUPT_WINDOW_MS);
    if interrupt_window_ms > MAX_INTERRUPT_WINDOW_MS {
        return Err(invalid(
            &format!("{base}.interrupt_window_ms"),
            &format!("must be at most {MAX_INTERRUPT_WINDOW_MS}, not {interrupt_window_ms}"),
        ));
    }
    let resume = match &raw.resume {
        Some(r)
            if r.args.is_empty()
                || r.args
                    .iter()
                    .any(|a| a.trim().is_empty() || a.contains(char::is_whitespace)) =>
        {
            return Err(invalid(
                &format!("{base}.resume.args"),
                "must be one or more arguments without spaces",
            ));
        }
        Some(r) => Some(Resume {
            args: r.args.clone(),
            present_if: r.present_if.clone(),
            picker: r.picker.clone(),
            by_id: r.by_id.clone(),
        }),
        None => None,
    };
    let new_turn = pattern_set(&name, &format!("{base}.new_turn"), &raw.new_turn)?;
    let output = pattern_set(&name, &format!("{base}.output"), &raw.output)?;
    let turn_done = pattern_set(&name, &format!("{base}.turn_done"), &raw.turn_done)?;
    if output.is_some() != turn_done.is_some() {
        return Err(invalid(
            &format!("{base}.turn_done"),
            "and `output` go together: set both or neither",
        ));
    }

    // A pattern free to match anywhere in a command line matches other programs' arguments: a
    // session name in `tmux new -s aider`, a path in `vim ~/.codex/config.toml`.
    if let Some(i) = raw.process.cmdline.iter().position(|p| !p.starts_with('^')) {
        return Err(invalid(
            &format!("{base}.process.cmdline[{i}]"),
            "must start with '^': it matches the process's own program, not a word further on",
        ));
    }
    let comm = pattern_set(&name, &format!("{base}.process.comm"), &raw.process.comm)?;
    let cmdline = pattern_set(
        &name,
        &format!("{base}.process.cmdline"),
        &raw.process.cmdline,
    )?;

    let mut rules = Vec::new();
    for condition in Condition::PRECEDENCE {
        let key = format!("{base}.{}", condition.key());
        let rule = raw.rule(condition);
        let last_lines =
            check_lines(&format!("{key}.last_lines"), rule.last_lines)?.unwrap_or(default_lines);
        let patterns = pattern_set(&name, &format!("{key}.patterns"), &rule.patterns)?;
        let cleared_by = pattern_set(&name, &format!("{key}.cleared_by"), &rule.cleared_by)?;
        match patterns {
            Some(patterns) => rules.push(Rule {
                condition,
                last_lines,
                patterns,
                cleared_by,
            }),
            None if cleared_by.is_some() => {
                return Err(invalid(
                    &format!("{key}.cleared_by"),
                    "is set but the condition has no patterns",
                ));
            }
            None => {}
        }
    }
    let max_lines = rules.iter().map(|r| r.last_lines).max().unwrap_or(0);
    let mask = mask_rules(&name, &format!("{base}.mask"), &raw.mask)?;
    let title = title_rules(&name, &format!("{base}.title"), &raw.title)?;

    Ok(Profile {
        name,
        description: raw.description,
        comm,
        cmdline,
        rules,
        max_lines,
        new_turn,
        output,
        turn_done,
        submit_keys,
        submit_delay_ms,
        interrupt_keys,
        interrupt_window_ms,
        resume,
        mask,
        title,
    })
}

/// Compiles the `mask` regexes one by one: each match is replaced, not just detected.
fn mask_rules(
    profile: &str,
    key: &str,
    patterns: &[String],
) -> Result<Vec<regex::Regex>, ProfileError> {
    // Validates (index in the error, no empty pattern) before compiling each on its own.
    pattern_set(profile, key, patterns)?;
    patterns
        .iter()
        .enumerate()
        .map(|(i, p)| {
            regex::RegexBuilder::new(p)
                .size_limit(SET_SIZE_LIMIT)
                .build()
                .map_err(|source| ProfileError::Pattern {
                    profile: profile.to_owned(),
                    key: format!("{key}[{i}]"),
                    source,
                })
        })
        .collect()
}

/// Compiles the title rules, strongest first (a question over a busy title over the prompt).
fn title_rules(
    profile: &str,
    key: &str,
    raw: &RawTitle,
) -> Result<Vec<(Condition, RegexSet)>, ProfileError> {
    let mut rules = Vec::new();
    for (condition, sub, patterns) in [
        (Condition::WaitingPermission, "permission", &raw.permission),
        (Condition::Thinking, "thinking", &raw.thinking),
        (Condition::AtPrompt, "prompt", &raw.prompt),
    ] {
        if let Some(set) = pattern_set(profile, &format!("{key}.{sub}"), patterns)? {
            rules.push((condition, set));
        }
    }
    Ok(rules)
}

fn check_lines(key: &str, lines: Option<usize>) -> Result<Option<usize>, ProfileError> {
    match lines {
        Some(n) if n == 0 || n > MAX_LAST_LINES => Err(invalid(
            key,
            &format!("must be between 1 and {MAX_LAST_LINES}, not {n}"),
        )),
        other => Ok(other),
    }
}

/// Compiles `patterns` into one set; `None` when there are none. Each pattern is compiled on its
/// own first so that an error can name its index.
fn pattern_set(
    profile: &str,
    key: &str,
    patterns: &[String],
) -> Result<Option<RegexSet>, ProfileError> {
    if patterns.is_empty() {
        return Ok(None);
    }
    for (i, p) in patterns.iter().enumerate() {
        if let Err(source) = regex::RegexBuilder::new(p)
            .size_limit(SET_SIZE_LIMIT)
            .build()
        {
            return Err(ProfileError::Pattern {
                profile: profile.to_owned(),
                key: format!("{key}[{i}]"),
                source,
            });
        }
        if p.is_empty() {
            return Err(invalid(
                &format!("{key}[{i}]"),
                "is empty and would match every line",
            ));
        }
    }
    RegexSetBuilder::new(patterns)
        .size_limit(SET_SIZE_LIMIT)
        .build()
        .map(Some)
        .map_err(|source| ProfileError::Pattern {
            profile: profile.to_owned(),
            key: key.to_owned(),
            source,
        })
}

fn invalid(key: &str, reason: &str) -> ProfileError {
    ProfileError::Invalid {
        key: key.to_owned(),
        reason: reason.to_owned(),
    }
}
