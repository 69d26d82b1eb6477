//! Agent profiles: which process is which agent, and what its screen shows, as versioned data.
//!
//! The patterns live in `shared/profiles/agents.toml` (compiled in) and in an optional operator
//! file layered on top; this module is the generic engine that reads them. A profile names regexes
//! per [`Condition`]; [`Profile::classify`] looks for them in the last non-blank lines of a screen
//! by the screen's structure: the newest thing on screen wins. A dialog or permission question
//! holds the screen; otherwise the newest of a limit, a busy or retry line and an error wins; the
//! prompt counts only when none of them is live. A match is history when a newer turn starts
//! below it (`new_turn`, or the condition's own `cleared_by`), and each condition looks only at
//! its own window of bottom lines.

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

/// Pause between a nudge's text and its submit keys when the profile names none: the four real
/// CLIs all submitted with 50 to 200 ms (an Enter right behind the text is read as part of a
/// paste by some of them).
pub const DEFAULT_SUBMIT_DELAY_MS: u64 = 200;

/// The CLI's "press again to exit" window when the profile names none: the longest of the four
/// real CLIs (Gemini CLI, 3 s).
pub const DEFAULT_INTERRUPT_WINDOW_MS: u64 = 3_000;

/// Characters of a nudge's text looked for in the input box to tell whether it was submitted.
const DRAFT_PROBE_CHARS: usize = 16;

/// What a masked part of the screen is replaced with.
const MASK: &str = "\u{2026}";

/// Lines after a rate-limit match that are read for its reset time (the message may wrap).
const RESET_CONTEXT_LINES: usize = 2;

static BUILTIN: LazyLock<Result<Profiles, ProfileError>> =
    LazyLock::new(|| Profiles::from_toml(include_str!("../profiles/agents.toml")));

/// The built-in profile `name` (for the decision core, which reads no operator file).
pub fn builtin_profile(name: &str) -> Option<&'static Profile> {
    BUILTIN.as_ref().ok()?.get(name)
}

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
    /// A login, trust or first-run dialog: a person must answer, and it is no prompt to nudge.
    Dialog,
    /// The agent reports a rate limit or usage limit.
    RateLimited,
    /// The agent shows an error banner.
    Error,
}

impl Condition {
    /// Every condition a profile can match, strongest first. `None` is what is left.
    pub const PRECEDENCE: [Condition; 6] = [
        Condition::Dialog,
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
            Self::Dialog => "dialog",
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
            "dialog" => Self::Dialog,
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
            Self::Dialog => "dialog",
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
    /// matches, so ordinary shells (bash, zsh, sh, fish, dash) do not; nor does tmux itself (its
    /// server, a client, or a pane's process before tmux exec'd the pane's command, which still
    /// carries the command line of the `tmux new-session` that started the server).
    pub fn match_process(&self, comm: &str, cmdline: &str) -> Option<&Profile> {
        if is_tmux(comm, cmdline) {
            return None;
        }
        self.profiles
            .iter()
            .filter(|p| p.name != GENERIC)
            .find(|p| p.matches_process(comm, cmdline))
    }

    /// The profile whose process patterns match the program a shell command starts (`claude
    /// --continue`, `env A=1 /opt/codex resume`, `node …/gemini.js`), as [`Self::match_process`]
    /// would match that program once it runs.
    pub fn match_command(&self, command: &str) -> Option<&Profile> {
        let words = words_at(command);
        let mut i = 0;
        let mut env = false;
        while let Some((_, w)) = words.get(i)
            && (*w == "env"
                || (env && w.starts_with('-'))
                || (w.contains('=') && !w.starts_with('-')))
        {
            env |= *w == "env";
            i += 1;
        }
        let (at, program) = *words.get(i)?;
        let comm: String = program
            .rsplit('/')
            .next()
            .unwrap_or(program)
            .chars()
            .take(15)
            .collect();
        self.match_process(&comm, &command[at..])
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
    /// Lines that open a newer turn (the user's echoed input, a new block of agent output): a
    /// dialog, permission question, limit or error above one of them is history.
    new_turn: Option<RegexSet>,
    /// Where the agent's output starts and where a finished turn ends: output below the last
    /// end of a turn is still streaming, even without a status line.
    output: Option<RegexSet>,
    turn_done: Option<RegexSet>,
    submit_keys: Vec<String>,
    submit_delay_ms: u64,
    interrupt_keys: Vec<String>,
    interrupt_window_ms: u64,
    resume: Option<Resume>,
    /// Volatile parts of the screen (spinner glyphs, timers, token counters): replaced before
    /// the progress hash, so that an animation alone is no progress.
    mask: Vec<regex::Regex>,
    /// What the pane title says, strongest first.
    title: Vec<(Condition, RegexSet)>,
}

/// How a restart resumes the agent's last conversation: the arguments added to its start
/// command (`claude` + `--continue`), unless the command already has one of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// Inserted right after the program (`["resume", "--last"]` for `codex resume --last`).
    pub args: Vec<String>,
    /// The command already resumes when it contains one of these words.
    pub present_if: Vec<String>,
    /// Words that open an interactive picker (which waits for a person) when no value follows
    /// them (`claude --resume`, `codex resume`): a restart replaces such a word with `args`.
    pub picker: Vec<String>,
    /// The arguments that resume one conversation by its id, the id after them
    /// (`["--resume"]`: `claude --resume <id>`); empty when the CLI reports no id.
    pub by_id: Vec<String>,
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

/// A numbered menu entry behind a selection marker (`› 1. Yes`, `❯ 2. No`): never an input
/// prompt, whatever marker the CLI uses for both.
static MENU_ITEM: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(r"^\s*[│┃]?\s*[›❯>▌●]\s*\d+[.)](?:\s|$)").unwrap_or_else(|_| unreachable!())
});

/// Conditions that hold the screen until a person answers: the newest of them wins over any
/// status line, since a CLI keeps its busy footer while it asks.
const MODAL: [Condition; 2] = [Condition::Dialog, Condition::WaitingPermission];

impl Profile {
    fn empty(name: &str) -> Profile {
        Profile {
            name: name.to_owned(),
            description: String::new(),
            comm: None,
            cmdline: None,
            rules: Vec::new(),
            max_lines: 0,
            new_turn: None,
            output: None,
            turn_done: None,
            submit_keys: vec!["Enter".to_owned()],
            submit_delay_ms: DEFAULT_SUBMIT_DELAY_MS,
            interrupt_keys: vec!["C-c".to_owned()],
            interrupt_window_ms: DEFAULT_INTERRUPT_WINDOW_MS,
            resume: None,
            mask: Vec::new(),
            title: Vec::new(),
        }
    }

    /// Classify the last lines of a screen (plain text, lines separated by '\n', trailing blank
    /// lines possible). `now` = current Unix seconds, `utc_offset_secs` = local offset used to
    /// interpret wall-clock times like "resets 3pm".
    ///
    /// The rules are structural: each condition's newest live match counts (a match is history
    /// when a newer turn starts below it); a dialog or permission question wins outright; among
    /// a limit, a busy/retry line and an error, the newest wins; the prompt counts only when none
    /// of them is live, and a numbered menu entry is never a prompt.
    pub fn classify(&self, screen: &str, now: i64, utc_offset_secs: i32) -> Classification {
        let tail = tail_lines(screen, self.max_lines);
        // A busy line whose turn has ended makes everything above it history too.
        let ended = self
            .rules
            .iter()
            .find(|r| r.condition == Condition::Thinking)
            .and_then(|r| {
                (0..tail.len())
                    .rev()
                    .find(|&i| r.patterns.is_match(tail[i]) && !self.live_match(r, &tail, i, None))
            });
        let newest: Vec<(&Rule, usize)> = self
            .rules
            .iter()
            .filter_map(|rule| self.newest_match(rule, &tail, ended).map(|i| (rule, i)))
            .collect();
        let pick = newest
            .iter()
            .find(|(r, _)| MODAL.contains(&r.condition))
            .or_else(|| {
                // Equal lines keep precedence order (max_by_key keeps the last maximum).
                newest
                    .iter()
                    .filter(|(r, _)| {
                        matches!(
                            r.condition,
                            Condition::RateLimited | Condition::Thinking | Condition::Error
                        )
                    })
                    .rev()
                    .max_by_key(|(_, i)| *i)
            })
            .or_else(|| {
                newest
                    .iter()
                    .find(|(r, _)| r.condition == Condition::AtPrompt)
            });
        let Some(&(rule, line)) = pick else {
            return self.streaming(&tail, false).unwrap_or_default();
        };
        if rule.condition == Condition::AtPrompt
            && let Some(streaming) = self.streaming(&tail, true)
        {
            return streaming;
        }
        let reset_at = if rule.condition == Condition::RateLimited {
            self.reset_at(rule, &tail, line, now, utc_offset_secs)
        } else {
            None
        };
        Classification {
            condition: rule.condition,
            reset_at,
        }
    }

    /// Index in `tail` of the newest line of `rule`'s window that matches and is still live.
    fn newest_match(&self, rule: &Rule, tail: &[&str], ended: Option<usize>) -> Option<usize> {
        let start = tail.len().saturating_sub(rule.last_lines);
        (start..tail.len())
            .rev()
            .find(|&i| self.live_match(rule, tail, i, ended))
    }

    /// Whether line `i` matches `rule` and is still live: not cleared by a line below it, not
    /// above a newer turn, not above `ended` (a busy line whose turn is over).
    fn live_match(&self, rule: &Rule, tail: &[&str], i: usize, ended: Option<usize>) -> bool {
        if !rule.patterns.is_match(tail[i]) {
            return false;
        }
        let history = ended.is_some_and(|e| i < e) && rule.condition != Condition::AtPrompt;
        if history {
            return false;
        }
        let below = &tail[i + 1..];
        if let Some(clear) = &rule.cleared_by
            && below.iter().any(|l| clear.is_match(l))
        {
            return false;
        }
        match rule.condition {
            Condition::AtPrompt => !MENU_ITEM.is_match(tail[i]),
            // A busy or retry line above the end of a turn is over, and so is one above a
            // prompt on the very last line: that prompt handed control back (aider's "> " after
            // an interrupted request; box prompts always have lines below them).
            Condition::Thinking => {
                let done = self
                    .turn_done
                    .as_ref()
                    .is_some_and(|done| below.iter().any(|l| done.is_match(l)));
                let prompt_last = below.last().is_some_and(|last| {
                    self.rules.iter().any(|r| {
                        r.condition == Condition::AtPrompt
                            && r.patterns.is_match(last)
                            && !MENU_ITEM.is_match(last)
                    })
                });
                !done && !prompt_last
            }
            Condition::None => true,
            Condition::Dialog
            | Condition::WaitingPermission
            | Condition::RateLimited
            | Condition::Error => !self
                .new_turn
                .as_ref()
                .is_some_and(|turn| below.iter().any(|l| turn.is_match(l))),
        }
    }

    /// Thinking when the current turn has agent output but no end-of-turn line yet. The current
    /// turn starts below the user's last echoed input: a prompt line above the input box (the
    /// bottom-most prompt line, when it is within the prompt's window). Where a CLI puts its end
    /// line (before or after the final message) then does not matter. `at_prompt`: the screen
    /// ends in a prompt; a prompt on the very last line hands control back (aider's "> "), one
    /// with lines below it is an input box that is always there (Codex's composer and footer).
    fn streaming(&self, tail: &[&str], at_prompt: bool) -> Option<Classification> {
        let (output, done) = (self.output.as_ref()?, self.turn_done.as_ref()?);
        let prompt = self
            .rules
            .iter()
            .find(|r| r.condition == Condition::AtPrompt)?;
        let mut prompts = (0..tail.len())
            .rev()
            .filter(|&i| prompt.patterns.is_match(tail[i]) && !MENU_ITEM.is_match(tail[i]));
        let newest = prompts.next();
        let in_box = newest.filter(|&i| i + prompt.last_lines >= tail.len());
        if at_prompt && in_box.is_none_or(|i| i + 1 == tail.len()) {
            return None;
        }
        let echo = if in_box.is_some() {
            prompts.next()
        } else {
            newest
        };
        let turn = &tail[echo.map_or(0, |i| i + 1)..in_box.unwrap_or(tail.len())];
        let open =
            turn.iter().any(|l| output.is_match(l)) && !turn.iter().any(|l| done.is_match(l));
        open.then_some(Classification {
            condition: Condition::Thinking,
            reset_at: None,
        })
    }

    /// The reset time of the newest limit message that names one. Only the provider's message
    /// counts: the lines it wraps onto are read up to the CLI's own next line (a retry line is a
    /// Thinking match, and its back-off is not a reset time).
    fn reset_at(&self, rule: &Rule, tail: &[&str], line: usize, now: i64, off: i32) -> Option<i64> {
        let thinking = self
            .rules
            .iter()
            .find(|r| r.condition == Condition::Thinking);
        let start = tail.len().saturating_sub(rule.last_lines);
        (start..=line)
            .rev()
            .filter(|&i| self.live_match(rule, tail, i, None))
            .find_map(|i| {
                let end = (i + 1 + RESET_CONTEXT_LINES).min(tail.len());
                let stop = (i + 1..end)
                    .find(|&j| {
                        thinking.is_some_and(|t| t.patterns.is_match(tail[j]))
                            || rule.patterns.is_match(tail[j])
                    })
                    .unwrap_or(end);
                reset_near(&tail[i..stop], now, off)
            })
    }

    /// Keys that submit a nudge after the text is typed, as tmux key names, e.g. ["Enter"].
    pub fn submit_keys(&self) -> &[String] {
        &self.submit_keys
    }

    /// Pause between typing a nudge's text and sending [`Profile::submit_keys`]: TUIs that read
    /// a paste and an Enter in one go take the Enter as part of the paste.
    pub fn submit_delay(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.submit_delay_ms)
    }

    /// Keys that stop the agent's current turn without ending it, as tmux key names: C-c for
    /// most; Codex answers C-c with a menu (cancel / background / exit) and stops on Escape.
    pub fn interrupt_keys(&self) -> &[String] {
        &self.interrupt_keys
    }

    /// The CLI's "press again to exit" window: a second interrupt within it could end the CLI
    /// (or, for Escape, open a menu), so none is sent within it.
    pub fn interrupt_window(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.interrupt_window_ms)
    }

    /// Whether `text`, typed as a nudge, still sits in the input box of `screen`: `Some(true)`
    /// when the box (the newest prompt line within the prompt's window) holds its start,
    /// `Some(false)` when the box shows without it (the text was submitted and the box
    /// cleared), `None` when no box shows (the screen moved on to output, or the profile has no
    /// prompt to look for).
    pub fn draft_in_box(&self, screen: &str, text: &str) -> Option<bool> {
        let prompt = self
            .rules
            .iter()
            .find(|r| r.condition == Condition::AtPrompt)?;
        let probe: String = text.trim().chars().take(DRAFT_PROBE_CHARS).collect();
        let tail = tail_lines(screen, prompt.last_lines);
        let line = tail
            .iter()
            .rev()
            .find(|l| prompt.patterns.is_match(l) && !MENU_ITEM.is_match(l))?;
        Some(!probe.is_empty() && line.contains(probe.as_str()))
    }

    /// `screen` with its volatile parts replaced by a placeholder, line by line: the spinner
    /// glyphs, elapsed-time and token counters the profile's `mask` names. Two frames of the
    /// same animation mask to the same text; a new output line does not.
    pub fn masked(&self, screen: &str) -> String {
        let mut out = String::with_capacity(screen.len());
        for (i, line) in screen.lines().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            let mut line = std::borrow::Cow::Borrowed(line.trim_end());
            for re in &self.mask {
                if let std::borrow::Cow::Owned(o) = re.replace_all(&line, MASK) {
                    line = std::borrow::Cow::Owned(o);
                }
            }
            out.push_str(&line);
        }
        out
    }

    /// The hash of the screen's last [`crate::screen::DEFAULT_LINES`] non-blank lines with its
    /// animation masked: it moves only when the agent shows something new. Non-blank lines, not
    /// bottom rows: Claude Code 2.1 pins its input box to the bottom of a tall pane with blank
    /// rows above it, and the rows at the bottom never show its new output lines.
    pub fn progress_hash(&self, screen: &str) -> String {
        let lines: Vec<&str> = screen.lines().filter(|l| !l.trim().is_empty()).collect();
        let start = lines.len().saturating_sub(crate::screen::DEFAULT_LINES);
        crate::screen::hash(&self.masked(&lines[start..].join("\n")))
    }

    /// What the pane title (`#{pane_title}`) says, by the profile's `title` rules: a question
    /// first, then busy, then the prompt; `None` when no rule matches.
    pub fn title_condition(&self, title: &str) -> Condition {
        let title = title.trim();
        if title.is_empty() {
            return Condition::None;
        }
        self.title
            .iter()
            .find(|(_, set)| set.is_match(title))
            .map_or(Condition::None, |(c, _)| *c)
    }

    /// How a restart resumes this agent's conversation, when the CLI has a way.
    pub fn resume(&self) -> Option<&Resume> {
        self.resume.as_ref()
    }

    /// `command` (a start command, shell words) in its resuming form: the resume arguments
    /// inserted right after the program (after `env VAR=x`, and after the script of an
    /// interpreter: `node …/codex.js`, `python -m aider`), unless the command already has them
    /// or a word of `present_if`. A word that would open a picker (`claude --resume` with no
    /// session after it) is replaced by the resume arguments: a restart must never wait for a
    /// person to pick. The rest of the command is kept byte for byte.
    pub fn resume_command(&self, command: &str) -> String {
        let Some(resume) = &self.resume else {
            return command.to_owned();
        };
        let picked = self.without_picker(command);
        let command = picked.as_str();
        let words = words_at(command);
        let present = words.iter().any(|(_, w)| {
            // `--resume=abc` is `--resume abc`
            let w = w.split('=').next().unwrap_or(w);
            resume.present_if.iter().any(|p| p == w) || resume.args.iter().any(|a| a == w)
        });
        let Some(end) = program_end(&words).filter(|_| !present) else {
            return command.to_owned();
        };
        format!(
            "{} {}{}",
            &command[..end],
            resume.args.join(" "),
            &command[end..]
        )
    }

    /// `command` resuming exactly the conversation `id` the agent reported: its resume words
    /// (`--continue`, `--resume <old id>`) replaced by `by_id` and the id, right after the
    /// program. `None` when the profile resumes by no id or `id` is not a plain id.
    pub fn resume_with_id(&self, command: &str, id: &str) -> Option<String> {
        let resume = self.resume.as_ref().filter(|r| !r.by_id.is_empty())?;
        if !plain_id(id) {
            return None;
        }
        let words = words_at(command);
        let end = program_end(&words)?;
        let is_resume = |w: &str| {
            let w = w.split('=').next().unwrap_or(w);
            resume.present_if.iter().any(|p| p == w)
                || resume.args.iter().any(|a| a == w)
                || resume.by_id.iter().any(|a| a == w)
        };
        let mut rest = Vec::new();
        let mut skip_value = false;
        for (at, w) in words.iter().filter(|(at, _)| *at >= end) {
            if skip_value && !w.starts_with('-') {
                skip_value = false;
                continue;
            }
            skip_value = false;
            if is_resume(w) {
                // A picker word takes an optional value: the old id goes with it.
                skip_value = !w.contains('=') && resume.picker.iter().any(|p| p == w);
                continue;
            }
            rest.push(&command[*at..*at + w.len()]);
        }
        let mut out = format!(
            "{} {} {id}",
            command[..end].trim_end(),
            resume.by_id.join(" ")
        );
        for w in rest {
            out.push(' ');
            out.push_str(w);
        }
        Some(out)
    }

    /// `command` without the words that would open the CLI's interactive session picker (a
    /// `resume.picker` word with no value after it); unchanged when it has none. An operator's
    /// restart command in a picker form is made non-interactive with this.
    pub fn without_picker(&self, command: &str) -> String {
        let Some(resume) = &self.resume else {
            return command.to_owned();
        };
        let words = words_at(command);
        let start = program_end(&words).map_or(0, |end| {
            words.iter().take_while(|(at, _)| *at < end).count()
        });
        let picker = (start..words.len()).find(|&i| {
            resume.picker.iter().any(|p| p == words[i].1)
                && words.get(i + 1).is_none_or(|(_, next)| {
                    next.starts_with('-') && !resume.args.iter().any(|a| a == next)
                })
        });
        let Some(i) = picker else {
            return command.to_owned();
        };
        let (at, word) = words[i];
        let rest = command[at + word.len()..].trim_start();
        let head = command[..at].trim_end();
        if rest.is_empty() {
            head.to_owned()
        } else {
            format!("{head} {rest}")
        }
    }

    fn matches_process(&self, comm: &str, cmdline: &str) -> bool {
        self.comm.as_ref().is_some_and(|s| s.is_match(comm))
            || self.cmdline.as_ref().is_some_and(|s| s.is_match(cmdline))
    }
}

/// True for tmux's own processes: `tmux: server`, `tmux: client` (comm), `tmux …`, `/usr/bin/tmux …`.
pub fn is_tmux(comm: &str, cmdline: &str) -> bool {
    let program = cmdline.split(' ').next().unwrap_or("");
    comm == "tmux"
        || comm.starts_with("tmux:")
        || program.rsplit('/').next().is_some_and(|p| p == "tmux")
}

/// The words of a shell command with their byte offsets.
fn words_at(command: &str) -> Vec<(usize, &str)> {
    command
        .split_whitespace()
        .map(|w| (w.as_ptr() as usize - command.as_ptr() as usize, w))
        .collect()
}

/// Byte offset just past the program word of a start command's `words` (offset, word).
fn program_end(words: &[(usize, &str)]) -> Option<usize> {
    let base = |w: &str| w.rsplit('/').next().unwrap_or(w).to_owned();
    let mut i = 0;
    let mut env = false;
    // `env -i A=1 B=2 prog`, `A=1 prog`
    while let Some((_, w)) = words.get(i)
        && (*w == "env" || (env && w.starts_with('-')) || (w.contains('=') && !w.starts_with('-')))
    {
        env |= *w == "env";
        i += 1;
    }
    let interpreter = words.get(i).is_some_and(|(_, w)| {
        let b = base(w);
        ["node", "nodejs", "bun", "deno"].contains(&b.as_str()) || b.starts_with("python")
    });
    if interpreter {
        i += 1;
        while let Some((_, w)) = words.get(i)
            && w.starts_with('-')
        {
            i += 1;
            if *w == "-m" {
                break;
            }
        }
    }
    words.get(i).map(|(at, w)| at + w.len())
}

/// The last `n` non-blank lines of `screen`, trailing whitespace trimmed, oldest first. A line
/// of nothing but a box's side borders (`│      │`, the inside of a tall dialog) is blank too.
fn tail_lines(screen: &str, n: usize) -> Vec<&str> {
    let mut tail: Vec<&str> = screen
        .lines()
        .rev()
        .map(str::trim_end)
        .filter(|l| !l.chars().all(|c| c.is_whitespace() || "│┃║".contains(c)))
        .take(n)
        .collect();
    tail.reverse();
    tail
}

/// The reset time named in `lines` (a limit message and the lines it wraps onto).
fn reset_near(lines: &[&str], now: i64, utc_offset_secs: i32) -> Option<i64> {
    // Box borders would split a wrapped sentence ("… try │ │ again at 3pm"): drop them.
    let text = lines
        .iter()
        .map(|l| l.trim_matches(|c: char| c.is_whitespace() || "│┃║|".contains(c)))
        .collect::<Vec<_>>()
        .join(" ");
    parse_reset(&text, now, utc_offset_secs)
}

#[cfg(test)]
mod tests;

/// Whether `id` is a plain conversation id, one a resume form may carry: letters, digits, `-`
/// and `_`, at most 128 of them.
pub fn plain_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}
