//! Handoffs, the pure part: why a restart happened ([`HandoffReason`]), the `[handoff]` table of
//! the policy, and the one resume message a new agent gets once it shows its prompt, rendered from
//! the checkpoint taken before the restart ([`ResumeFacts`]) with a template that is configurable
//! per agent profile and per group. Everything put into the message is sanitised (no control or
//! invisible characters, runs of white space folded) and bounded.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

/// Why a session was restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandoffReason {
    /// The agent died (process exited, pane died, session closed).
    Crash,
    /// The agent stalled: the escalation ladder (or triage) restarted it.
    Stall,
    /// The rate limit was renewed too often.
    RateLimit,
    /// A person restarted it (admin API, argusctl).
    Operator,
    /// A quality gate failed and the session was restarted for it.
    QualityGate,
    /// Anything else.
    Other,
}

impl HandoffReason {
    /// The name stored and shown: `crash`, `stall`, `rate_limit`, `operator`, `quality_gate`,
    /// `other`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Crash => "crash",
            Self::Stall => "stall",
            Self::RateLimit => "rate_limit",
            Self::Operator => "operator",
            Self::QualityGate => "quality_gate",
            Self::Other => "other",
        }
    }

    /// The reason of a restart command, from who sent it (`admin` or `policy`) and the reason
    /// written in its audit row (`restart: <why>`, as [`crate::detect`] writes it).
    pub fn classify(origin: &str, reason: &str) -> Self {
        if origin == "admin" {
            return Self::Operator;
        }
        let why = reason.strip_prefix("restart: ").unwrap_or(reason);
        let has = |s: &str| why.contains(s);
        if has("gate") {
            Self::QualityGate
        } else if has("rate limit") {
            Self::RateLimit
        } else if has("escalation") || has("idle") || has("stall") || has("triage") {
            Self::Stall
        } else if has("died") || has("exited") || has("gone") || has("closed") {
            Self::Crash
        } else {
            Self::Other
        }
    }
}

/// How restarts hand the work over: `[handoff]` in the policy (a group's `[groups.NAME.handoff]`
/// replaces the whole table for its sessions).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HandoffPolicy {
    /// Send the new agent a resume message once it shows its prompt.
    pub resume: bool,
    /// The resume message; `{reason}`, `{task}`, `{branch}`, `{commit}`, `{files}`, `{saved}`,
    /// `{screen}`, `{checkpoint}`, `{session}`, `{agent}` and `{cwd}` are filled in.
    pub template: String,
    /// Templates by agent profile (`claude = "..."`), used instead of `template`.
    pub templates: BTreeMap<String, String>,
    /// Screen lines quoted in `{screen}` (the last ones that are not blank).
    pub screen_lines: usize,
    /// Files named in `{files}` (then "and N more").
    pub max_files: usize,
    /// The longest message, in bytes (at most 4096); a longer one is cut.
    pub max_bytes: usize,
    /// A new agent not at its prompt this long after the restart: the handoff is announced
    /// stuck (`handoff_stuck`; it stays listed by `argusctl handoffs`).
    #[serde(with = "humantime_serde")]
    pub ready_timeout: Duration,
    /// No activity this long after the resume message: announced stuck likewise.
    #[serde(with = "humantime_serde")]
    pub activity_timeout: Duration,
    /// Resume messages sent at most (one not delivered is sent again); then the handoff fails.
    pub resume_attempts: u32,
}

/// The default resume message.
pub const DEFAULT_TEMPLATE: &str = "[argus] This session was restarted ({reason}); your work on \
disk is kept. Task: {task}. Branch: {branch}, last commit {commit}. Files in progress: {files}. \
Uncommitted work also saved as {saved}. Last screen lines before the restart: {screen}. Check \
git status, then continue where you left off.";

impl Default for HandoffPolicy {
    fn default() -> Self {
        Self {
            resume: true,
            template: DEFAULT_TEMPLATE.to_owned(),
            templates: BTreeMap::new(),
            screen_lines: 6,
            max_files: 8,
            max_bytes: 1500,
            ready_timeout: Duration::from_secs(600),
            activity_timeout: Duration::from_secs(600),
            resume_attempts: 3,
        }
    }
}

/// The placeholders a template may use.
pub const PLACEHOLDERS: [&str; 11] = [
    "reason",
    "task",
    "branch",
    "commit",
    "files",
    "saved",
    "screen",
    "checkpoint",
    "session",
    "agent",
    "cwd",
];

/// What a resume message is made of: the checkpoint taken before the restart, as plain data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResumeFacts {
    pub reason: String,
    pub session: String,
    pub agent: String,
    pub cwd: String,
    pub task: Option<String>,
    /// No checkpoint could be taken, or its directory is not in a git work tree.
    pub git: bool,
    pub branch: String,
    pub head: String,
    pub subject: String,
    /// (path, short status) of the files in progress.
    pub files: Vec<(String, String)>,
    pub files_total: usize,
    pub saved_ref: String,
    pub checkpoint: String,
    pub screen: Vec<String>,
}

impl HandoffPolicy {
    /// The template for an agent of `profile`.
    pub fn template_for(&self, profile: &str) -> &str {
        self.templates
            .get(profile)
            .map_or(self.template.as_str(), String::as_str)
    }

    /// Checks the table; the error names the key (`handoff.…`) and why.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, why: String| Err((format!("handoff.{key}"), why));
        if !(64..=argus_shared::command::MAX_NUDGE_BYTES).contains(&self.max_bytes) {
            return bad(
                "max_bytes",
                format!(
                    "must be between 64 and {}",
                    argus_shared::command::MAX_NUDGE_BYTES
                ),
            );
        }
        if self.resume_attempts == 0 {
            return bad("resume_attempts", "must be at least 1".into());
        }
        if self.ready_timeout.is_zero() || self.activity_timeout.is_zero() {
            return bad("ready_timeout", "timeouts must be positive".into());
        }
        let templates = std::iter::once(("template".to_owned(), &self.template)).chain(
            self.templates
                .iter()
                .map(|(p, t)| (format!("templates.{p}"), t)),
        );
        for (key, t) in templates {
            if let Some(name) = placeholders(t).find(|n| !PLACEHOLDERS.contains(n)) {
                return bad(
                    &key,
                    format!(
                        "unknown placeholder {{{name}}}; known: {}",
                        PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(", ")
                    ),
                );
            }
            if let Err(e) = argus_shared::command::validate_nudge(t) {
                return bad(&key, e.to_string());
            }
        }
        Ok(())
    }

    /// The resume message for `facts` with the template of `profile`: sanitised, bounded by
    /// `max_bytes`, always valid nudge text.
    pub fn render(&self, profile: &str, facts: &ResumeFacts) -> String {
        let template = self.template_for(profile);
        let mut out = String::with_capacity(template.len() + 512);
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            match after.find('}') {
                Some(close) if PLACEHOLDERS.contains(&&after[..close]) => {
                    out.push_str(&clean(&self.value(&after[..close], facts)));
                    rest = &after[close + 1..];
                }
                _ => {
                    out.push('{');
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        let out = clean(&out);
        let out = cut(
            &out,
            self.max_bytes.min(argus_shared::command::MAX_NUDGE_BYTES),
        );
        if out.is_empty() {
            "[argus] This session was restarted; continue where you left off.".to_owned()
        } else {
            out.to_owned()
        }
    }

    fn value(&self, name: &str, f: &ResumeFacts) -> String {
        let or = |s: &str, none: &str| {
            if s.trim().is_empty() {
                none.to_owned()
            } else {
                s.to_owned()
            }
        };
        match name {
            "reason" => or(&f.reason, "unknown reason"),
            "session" => f.session.clone(),
            "agent" => or(&f.agent, "the agent"),
            "cwd" => or(&f.cwd, "unknown"),
            "checkpoint" => or(&f.checkpoint, "none"),
            "task" => f.task.as_deref().map_or("not labelled".to_owned(), |t| {
                or(&cut_chars(t, 200), "not labelled")
            }),
            "branch" if !f.git => "none (no git work tree)".to_owned(),
            "branch" => or(&f.branch, "detached HEAD"),
            "commit" if !f.git => "none".to_owned(),
            "commit" if f.head.is_empty() => "none yet".to_owned(),
            "commit" => {
                let short: String = f.head.chars().take(10).collect();
                if f.subject.is_empty() {
                    short
                } else {
                    format!("{short} \"{}\"", cut_chars(&f.subject, 120))
                }
            }
            "files" if f.files.is_empty() => {
                if f.git {
                    "none (clean work tree)".to_owned()
                } else {
                    "unknown".to_owned()
                }
            }
            "files" => {
                let shown: Vec<String> = f
                    .files
                    .iter()
                    .take(self.max_files)
                    .map(|(p, s)| format!("{} ({})", cut_chars(p, 160), status_word(s)))
                    .collect();
                let more = f.files_total.max(f.files.len()) - shown.len();
                if more > 0 {
                    format!("{} and {more} more", shown.join(", "))
                } else {
                    shown.join(", ")
                }
            }
            "saved" => or(&f.saved_ref, "nothing (no uncommitted work, or not saved)"),
            "screen" => {
                let lines: Vec<String> = f
                    .screen
                    .iter()
                    .map(|l| clean(l))
                    .filter(|l| !l.is_empty())
                    .collect();
                let skip = lines.len().saturating_sub(self.screen_lines);
                let quoted: Vec<String> = lines[skip..].iter().map(|l| cut_chars(l, 160)).collect();
                if quoted.is_empty() {
                    "(none)".to_owned()
                } else {
                    quoted.join(" | ")
                }
            }
            _ => String::new(),
        }
    }
}

/// A short status code in words.
fn status_word(code: &str) -> &str {
    match code {
        "??" => "new",
        "M" => "modified",
        "A" => "added",
        "D" => "deleted",
        "R" => "renamed",
        "U" => "conflict",
        other => other,
    }
}

/// The `{name}` placeholders of a template (names of lower-case letters and `_`).
fn placeholders(t: &str) -> impl Iterator<Item = &str> {
    t.split('{').skip(1).filter_map(|part| {
        let name = &part[..part.find('}')?];
        (!name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            .then_some(name)
    })
}

/// Text made safe to type: control and invisible formatting characters become spaces, runs of
/// white space one space, and the ends are trimmed.
pub fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut space = false;
    for c in s.chars() {
        if c.is_whitespace() || argus_shared::command::is_refused(c) {
            space = !out.is_empty();
        } else {
            if space {
                out.push(' ');
                space = false;
            }
            out.push(c);
        }
    }
    out
}

/// `s` cut to at most `max` bytes at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `s` cut to at most `max` characters, "…" marking the cut.
fn cut_chars(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> ResumeFacts {
        ResumeFacts {
            reason: "stall".into(),
            session: "agent-1".into(),
            agent: "claude".into(),
            cwd: "/src/app".into(),
            task: Some("T-42 add the parser".into()),
            git: true,
            branch: "feature/parser".into(),
            head: "0123456789abcdef0123".into(),
            subject: "parser: first cut".into(),
            files: vec![
                ("src/parse.rs".into(), "M".into()),
                ("notes/todo.md".into(), "??".into()),
            ],
            files_total: 2,
            saved_ref: "refs/argus/checkpoints/agent-1/ck-1-00".into(),
            checkpoint: "ck-1-00".into(),
            screen: vec![
                "⏺ Editing src/parse.rs".into(),
                String::new(),
                "\u{1b}[31mred\u{1b}[0m tests: 3 failed".into(),
            ],
        }
    }

    #[test]
    fn the_default_message_carries_the_checkpoint() {
        let p = HandoffPolicy::default();
        p.validate().expect("default valid");
        let m = p.render("claude", &facts());
        argus_shared::command::validate_nudge(&m).expect("typeable");
        for part in [
            "restarted (stall)",
            "Task: T-42 add the parser",
            "Branch: feature/parser, last commit 0123456789 \"parser: first cut\"",
            "src/parse.rs (modified), notes/todo.md (new)",
            "refs/argus/checkpoints/agent-1/ck-1-00",
            "⏺ Editing src/parse.rs | [31mred [0m tests: 3 failed",
        ] {
            assert!(m.contains(part), "{part:?} not in {m:?}");
        }
    }

    #[test]
    fn missing_parts_read_well_and_the_message_is_bounded() {
        let p = HandoffPolicy {
            max_bytes: 120,
            ..HandoffPolicy::default()
        };
        let m = p.render("", &ResumeFacts::default());
        assert!(m.len() <= 120, "{m}");
        assert!(
            m.contains("unknown reason") && m.contains("not labelled"),
            "{m}"
        );
        let p = HandoffPolicy::default();
        let mut f = facts();
        f.files = (0..50).map(|i| (format!("f{i}.rs"), "M".into())).collect();
        f.files_total = 60;
        f.screen = vec!["x".repeat(5000); 3];
        let m = p.render("", &f);
        assert!(m.contains("and 52 more"), "{m}");
        assert!(m.len() <= p.max_bytes);
        argus_shared::command::validate_nudge(&m).expect("typeable");
    }

    #[test]
    fn templates_per_profile_and_their_checks() {
        let mut p = HandoffPolicy::default();
        p.templates
            .insert("codex".into(), "Resume {task} on {branch}.".into());
        assert_eq!(
            p.render("codex", &facts()),
            "Resume T-42 add the parser on feature/parser."
        );
        assert!(p.render("claude", &facts()).starts_with("[argus]"));
        p.templates.insert("aider".into(), "Go {nope}".into());
        let (key, why) = p.validate().expect_err("unknown placeholder");
        assert_eq!(key, "handoff.templates.aider");
        assert!(why.contains("{nope}"), "{why}");
        let p = HandoffPolicy {
            template: "a\nb".into(),
            ..HandoffPolicy::default()
        };
        assert_eq!(p.validate().expect_err("newline").0, "handoff.template");
        // Braces that are not placeholders stay as they are.
        let p = HandoffPolicy {
            template: "fn main() { {task} }".into(),
            ..HandoffPolicy::default()
        };
        assert_eq!(p.render("", &facts()), "fn main() { T-42 add the parser }");
    }

    #[test]
    fn the_policy_file_sets_it_per_group() {
        let p = std::sync::Arc::new(
            crate::policy::Policy::from_toml(
                "[handoff]\nmax_files = 3\n[handoff.templates]\ncodex = \"go on: {task}\"\n\
                 [groups.night.handoff]\nresume = false\n",
            )
            .expect("parses"),
        );
        assert_eq!(p.handoff.max_files, 3);
        assert_eq!(p.handoff.template_for("codex"), "go on: {task}");
        let night = p.for_group(Some("night"));
        assert!(!night.handoff.resume);
        let e =
            crate::policy::Policy::from_toml("[handoff]\ntemplate = \"{taks}\"").expect_err("typo");
        assert!(e.to_string().contains("handoff.template"), "{e}");
        let e = crate::policy::Policy::from_toml("[handoff]\nresum = true").expect_err("key");
        assert!(e.to_string().contains("resum"), "{e}");
    }

    #[test]
    fn cleaning_removes_what_cannot_be_typed() {
        assert_eq!(clean("  a\tb\n\u{202E}c\u{1b}  "), "a b c");
        assert_eq!(clean(""), "");
    }

    #[test]
    fn restart_reasons_are_classified() {
        use HandoffReason as R;
        let cases = [
            (
                "admin",
                "restart requested through the admin API",
                R::Operator,
            ),
            ("policy", "restart: agent died", R::Crash),
            ("policy", "restart: pane died", R::Crash),
            ("policy", "restart: agent exited", R::Crash),
            ("policy", "restart: session closed", R::Crash),
            ("policy", "restart: agent gone", R::Crash),
            (
                "policy",
                "restart: escalation (confirmed still idle)",
                R::Stall,
            ),
            (
                "policy",
                "restart: rate limit renewed too often",
                R::RateLimit,
            ),
            (
                "policy",
                "restart: quality gate failed 3 times",
                R::QualityGate,
            ),
            ("policy", "something else", R::Other),
        ];
        for (origin, reason, want) in cases {
            assert_eq!(HandoffReason::classify(origin, reason), want, "{reason}");
        }
    }
}
