//! Commands the controller sends to node agents, validated once at the edge.
//!
//! The same rules apply wherever a command enters: the admin API checks them before anything is
//! sent, and the node agent checks them again before it touches tmux.

use argus_proto::v1 as pb;

/// Longest nudge text accepted, in bytes.
pub const MAX_NUDGE_BYTES: usize = 4096;
/// Most lines a capture may ask for.
pub const MAX_CAPTURE_LINES: u32 = 2000;
/// Lines captured when the request says 0.
pub const DEFAULT_CAPTURE_LINES: u32 = 30;
/// Default time between SIGTERM and SIGKILL.
pub const DEFAULT_KILL_GRACE_MS: u32 = 2000;
/// Longest grace accepted.
pub const MAX_KILL_GRACE_MS: u32 = 60_000;
/// Longest restart command accepted, in bytes.
pub const MAX_RESTART_COMMAND_BYTES: usize = 4096;
/// Longest gate command accepted, in bytes.
pub const MAX_GATE_COMMAND_BYTES: usize = 4096;
/// A gate's time limit when the command says 0.
pub const DEFAULT_GATE_TIMEOUT_MS: u32 = 600_000;
/// Longest gate time limit accepted.
pub const MAX_GATE_TIMEOUT_MS: u32 = 3_600_000;

/// Why a command was refused before it was sent or executed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommandError {
    /// The nudge text was empty.
    #[error("nudge text is empty")]
    EmptyNudge,
    /// The nudge text was too long.
    #[error("nudge text is {len} bytes, at most {MAX_NUDGE_BYTES} allowed")]
    NudgeTooLong { len: usize },
    /// The nudge text held a control character or an invisible formatting character (a bidi
    /// override, a line separator, a zero-width or tag character): what a person reads would not
    /// be what the agent gets.
    #[error(
        "nudge text contains {} at byte {at}; only printable, visible text is sent",
        describe_refused(*code)
    )]
    ControlChar { code: u32, at: usize },
    /// The capture asked for too many lines.
    #[error("capture of {lines} lines asked, at most {MAX_CAPTURE_LINES} allowed")]
    TooManyLines { lines: u32 },
    /// The kill grace was too long.
    #[error("kill grace of {grace_ms} ms asked, at most {MAX_KILL_GRACE_MS} allowed")]
    GraceTooLong { grace_ms: u32 },
    /// The restart command was unusable.
    #[error(
        "restart command is {len} bytes or holds a control or invisible formatting character (bidi override, line separator, zero-width or tag character); at most {MAX_RESTART_COMMAND_BYTES} printable bytes allowed"
    )]
    BadRestartCommand { len: usize },
    /// The command named no action.
    #[error("command has no action")]
    NoAction,
    /// The gate command was empty, too long or held a refused character, or its time limit was
    /// too long.
    #[error(
        "gate command is empty, longer than {MAX_GATE_COMMAND_BYTES} bytes or holds a control or invisible formatting character, or its time limit is over {MAX_GATE_TIMEOUT_MS} ms"
    )]
    BadGate,
}

/// What a command does, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Type `text` literally, then the submit key.
    Nudge { text: String },
    /// Ctrl-C.
    Interrupt,
    /// SIGTERM the tree, wait `grace_ms`, SIGKILL, kill the session.
    Kill { grace_ms: u32 },
    /// Start the agent again; `command` empty means the session's own. A session created anew
    /// gets `cwd` and `labels` (`@argus-*` options).
    Restart {
        command: String,
        cwd: String,
        labels: std::collections::BTreeMap<String, String>,
        /// The pane process this restart replaces (0: no check): refused when the pane was
        /// started again since.
        replaces_pane_pid: u32,
    },
    /// Return the last `lines` lines.
    Capture { lines: u32 },
    /// Run the quality gate `command` (`sh -c`) in the session's working directory, stopped
    /// after `timeout_ms`; the result carries its exit status and the end of its output.
    Gate { command: String, timeout_ms: u32 },
    /// Take a checkpoint now (screen, labels, git state, the uncommitted work saved in git),
    /// changing nothing.
    Checkpoint,
}

impl Action {
    /// Short lower-case name for logs and the audit log.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Nudge { .. } => "nudge",
            Self::Interrupt => "interrupt",
            Self::Kill { .. } => "kill",
            Self::Restart { .. } => "restart",
            Self::Capture { .. } => "capture",
            Self::Gate { .. } => "gate",
            Self::Checkpoint => "checkpoint",
        }
    }

    /// True for actions that end or replace the agent.
    pub fn is_destructive(&self) -> bool {
        matches!(self, Self::Kill { .. } | Self::Restart { .. })
    }

    /// A validated nudge.
    pub fn nudge(text: &str) -> Result<Self, CommandError> {
        validate_nudge(text)?;
        Ok(Self::Nudge {
            text: text.to_owned(),
        })
    }

    /// A validated capture (0 lines means the default).
    pub fn capture(lines: u32) -> Result<Self, CommandError> {
        if lines > MAX_CAPTURE_LINES {
            return Err(CommandError::TooManyLines { lines });
        }
        let lines = if lines == 0 {
            DEFAULT_CAPTURE_LINES
        } else {
            lines
        };
        Ok(Self::Capture { lines })
    }

    /// A validated kill (0 ms grace means the default).
    pub fn kill(grace_ms: u32) -> Result<Self, CommandError> {
        if grace_ms > MAX_KILL_GRACE_MS {
            return Err(CommandError::GraceTooLong { grace_ms });
        }
        let grace_ms = if grace_ms == 0 {
            DEFAULT_KILL_GRACE_MS
        } else {
            grace_ms
        };
        Ok(Self::Kill { grace_ms })
    }

    /// A validated gate (0 ms means the default time limit).
    pub fn gate(command: &str, timeout_ms: u32) -> Result<Self, CommandError> {
        if command.trim().is_empty()
            || command.len() > MAX_GATE_COMMAND_BYTES
            || command.chars().any(is_refused)
            || timeout_ms > MAX_GATE_TIMEOUT_MS
        {
            return Err(CommandError::BadGate);
        }
        let timeout_ms = if timeout_ms == 0 {
            DEFAULT_GATE_TIMEOUT_MS
        } else {
            timeout_ms
        };
        Ok(Self::Gate {
            command: command.to_owned(),
            timeout_ms,
        })
    }

    /// A validated restart.
    pub fn restart(command: &str, cwd: &str) -> Result<Self, CommandError> {
        for s in [command, cwd] {
            if s.len() > MAX_RESTART_COMMAND_BYTES || s.chars().any(is_refused) {
                return Err(CommandError::BadRestartCommand { len: s.len() });
            }
        }
        Ok(Self::Restart {
            command: command.to_owned(),
            cwd: cwd.to_owned(),
            labels: std::collections::BTreeMap::new(),
            replaces_pane_pid: 0,
        })
    }
}

/// Checks nudge text: non-empty, at most [`MAX_NUDGE_BYTES`], no control characters (a newline
/// or an escape sequence typed into an agent could do anything) and no invisible formatting
/// characters (see [`invisible`]).
pub fn validate_nudge(text: &str) -> Result<(), CommandError> {
    if text.is_empty() {
        return Err(CommandError::EmptyNudge);
    }
    if text.len() > MAX_NUDGE_BYTES {
        return Err(CommandError::NudgeTooLong { len: text.len() });
    }
    if let Some((at, c)) = text.char_indices().find(|(_, c)| is_refused(*c)) {
        return Err(CommandError::ControlChar { code: c as u32, at });
    }
    Ok(())
}

/// True for characters never typed into an agent: control characters and [`invisible`] ones.
pub fn is_refused(c: char) -> bool {
    c.is_control() || invisible(c).is_some()
}

/// What an invisible formatting character is, for the characters refused in typed text: they
/// change how text is shown, or hide text, so a person reviewing a nudge (or an audit row) would
/// not read what the agent reads ("Trojan Source" bidi reordering, instructions smuggled in tag
/// characters), and line or paragraph separators act as a newline in some TUIs.
///
/// The zero-width joiner and non-joiner (U+200C, U+200D) and the emoji variation selectors
/// (U+FE00-FE0F) are kept: emoji and several scripts need them, and they hide nothing.
pub fn invisible(c: char) -> Option<&'static str> {
    Some(match c {
        '\u{202A}'..='\u{202E}' => "a bidi embedding or override",
        '\u{2066}'..='\u{2069}' => "a bidi isolate",
        '\u{200E}' | '\u{200F}' | '\u{061C}' => "a bidi mark",
        '\u{2028}' => "a line separator",
        '\u{2029}' => "a paragraph separator",
        '\u{200B}' | '\u{2060}' | '\u{FEFF}' | '\u{180E}' => "a zero-width space or joiner",
        '\u{00AD}' => "a soft hyphen",
        '\u{2061}'..='\u{2064}' => "an invisible operator",
        '\u{206A}'..='\u{206F}' => "a deprecated format character",
        '\u{FFF9}'..='\u{FFFB}' => "an interlinear annotation character",
        '\u{E0000}'..='\u{E007F}' => "a tag character",
        '\u{E0100}'..='\u{E01EF}' => "a supplementary variation selector",
        _ => return None,
    })
}

/// "control character U+000A" or "U+202E (a bidi embedding or override)".
fn describe_refused(code: u32) -> String {
    match char::from_u32(code).and_then(invisible) {
        Some(what) => format!("U+{code:04X} ({what})"),
        None => format!("control character U+{code:04X}"),
    }
}

/// Splits a start command as tmux prints it (`#{pane_start_command}`: arguments separated by
/// spaces, quoted with `"` when needed, `\` escapes) back into argv.
pub fn split_tmux_command(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
                in_word = true;
            }
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            ' ' if !quoted => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

/// A pane start command as tmux prints it, as one line for `sh -c`: a single argument is already
/// a shell command; several are quoted for the shell and joined.
pub fn shell_command_from_tmux(start_command: &str) -> String {
    let argv = split_tmux_command(start_command);
    if argv.len() == 1 {
        return argv.into_iter().next().unwrap_or_default();
    }
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl TryFrom<pb::command::Action> for Action {
    type Error = CommandError;

    fn try_from(a: pb::command::Action) -> Result<Self, Self::Error> {
        match a {
            pb::command::Action::Nudge(n) => Self::nudge(&n.text),
            pb::command::Action::Interrupt(_) => Ok(Self::Interrupt),
            pb::command::Action::Kill(k) => Self::kill(k.grace_ms),
            pb::command::Action::Restart(r) => {
                let mut a = Self::restart(&r.command, &r.cwd)?;
                if let Self::Restart {
                    labels,
                    replaces_pane_pid,
                    ..
                } = &mut a
                {
                    *replaces_pane_pid = r.replaces_pane_pid;
                    *labels = r
                        .labels
                        .into_iter()
                        .filter(|(k, v)| {
                            k.len() <= 64
                                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                                && !v.chars().any(is_refused)
                        })
                        .collect();
                }
                Ok(a)
            }
            pb::command::Action::Capture(c) => Self::capture(c.lines),
            pb::command::Action::Gate(g) => Self::gate(&g.command, g.timeout_ms),
            pb::command::Action::Checkpoint(_) => Ok(Self::Checkpoint),
        }
    }
}

impl From<Action> for pb::command::Action {
    fn from(a: Action) -> Self {
        match a {
            Action::Nudge { text } => Self::Nudge(pb::Nudge { text }),
            Action::Interrupt => Self::Interrupt(pb::Interrupt {}),
            Action::Kill { grace_ms } => Self::Kill(pb::Kill { grace_ms }),
            Action::Restart {
                command,
                cwd,
                labels,
                replaces_pane_pid,
            } => Self::Restart(pb::Restart {
                command,
                cwd,
                labels: labels.into_iter().collect(),
                replaces_pane_pid,
            }),
            Action::Capture { lines } => Self::Capture(pb::Capture { lines }),
            Action::Gate {
                command,
                timeout_ms,
            } => Self::Gate(pb::Gate {
                command,
                timeout_ms,
            }),
            Action::Checkpoint => Self::Checkpoint(pb::TakeCheckpoint {}),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn nudge_rules() {
        assert!(validate_nudge("please continue").is_ok());
        assert_eq!(validate_nudge(""), Err(CommandError::EmptyNudge));
        assert_eq!(
            validate_nudge("a\nb"),
            Err(CommandError::ControlChar { code: 10, at: 1 })
        );
        assert_eq!(
            validate_nudge("\u{1b}[2J"),
            Err(CommandError::ControlChar { code: 27, at: 0 })
        );
        assert!(matches!(
            validate_nudge(&"x".repeat(MAX_NUDGE_BYTES + 1)),
            Err(CommandError::NudgeTooLong { .. })
        ));
    }

    #[test]
    fn invisible_formatting_is_refused() {
        // Bidi overrides and isolates: the text shown is not the text typed.
        for c in ['\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}'] {
            let text = format!("ok {c}txt.exe");
            assert_eq!(
                validate_nudge(&text),
                Err(CommandError::ControlChar {
                    code: c as u32,
                    at: 3
                }),
                "U+{:04X}",
                c as u32
            );
        }
        for c in ['\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}', '\u{200F}'] {
            assert!(
                validate_nudge(&format!("a{c}b")).is_err(),
                "U+{:04X}",
                c as u32
            );
        }
        // Line and paragraph separators act as newlines.
        assert_eq!(
            validate_nudge("continue\u{2028}rm -rf /"),
            Err(CommandError::ControlChar {
                code: 0x2028,
                at: 8
            })
        );
        assert!(validate_nudge("a\u{2029}b").is_err());
        // Hidden text: zero-width space, word joiner, BOM, tag characters.
        for c in ['\u{200B}', '\u{2060}', '\u{FEFF}', '\u{E0041}', '\u{E0100}'] {
            assert!(
                validate_nudge(&format!("a{c}b")).is_err(),
                "U+{:04X}",
                c as u32
            );
        }
        // The error says what was found and where.
        let e = validate_nudge("abc\u{202E}").expect_err("refused");
        assert_eq!(
            e.to_string(),
            "nudge text contains U+202E (a bidi embedding or override) at byte 3; only printable, \
             visible text is sent"
        );
        let e = validate_nudge("a\tb").expect_err("refused");
        assert!(e.to_string().contains("control character U+0009"), "{e}");
        // Visible Unicode, emoji with joiners and variation selectors, right-to-left scripts
        // without overrides: all fine.
        for ok in [
            "bitte weitermachen, danke",
            "продолжай",
            "继续",
            "המשך בבקשה",
            "استمر",
            "\u{2764}\u{FE0F} \u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467}",
        ] {
            assert_eq!(validate_nudge(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn restart_commands_refuse_invisible_formatting() {
        assert!(Action::restart("claude --continue", "/src/app").is_ok());
        assert!(matches!(
            Action::restart("claude \u{202E}eunitnoc--", ""),
            Err(CommandError::BadRestartCommand { .. })
        ));
        assert!(Action::restart("claude", "/src/\u{2028}x").is_err());
    }

    #[test]
    fn defaults_and_limits() {
        assert_eq!(Action::capture(0), Ok(Action::Capture { lines: 30 }));
        assert!(Action::capture(MAX_CAPTURE_LINES + 1).is_err());
        assert_eq!(Action::kill(0), Ok(Action::Kill { grace_ms: 2000 }));
        assert!(Action::kill(MAX_KILL_GRACE_MS + 1).is_err());
        assert!(Action::restart("claude\n", "").is_err());
        assert_eq!(
            Action::gate("cargo test", 0),
            Ok(Action::Gate {
                command: "cargo test".into(),
                timeout_ms: DEFAULT_GATE_TIMEOUT_MS
            })
        );
        assert!(Action::gate(" ", 0).is_err());
        assert!(Action::gate("make\u{202E}", 0).is_err());
        assert!(Action::gate("make", MAX_GATE_TIMEOUT_MS + 1).is_err());
    }

    #[test]
    fn tmux_start_commands() {
        assert_eq!(split_tmux_command("\"sleep 100\""), vec!["sleep 100"]);
        assert_eq!(
            split_tmux_command("claude --model \"x y\" a\\\"b"),
            vec!["claude", "--model", "x y", "a\"b"]
        );
        assert!(split_tmux_command("").is_empty());
        assert_eq!(shell_command_from_tmux("\"sleep 100\""), "sleep 100");
        assert_eq!(shell_command_from_tmux("claude \"x y\""), "claude 'x y'");
    }

    proptest! {
        #[test]
        fn accepted_nudges_have_no_control_chars(s in "\\PC*") {
            if validate_nudge(&s).is_ok() {
                prop_assert!(!s.chars().any(char::is_control));
            }
        }

        #[test]
        fn accepted_nudges_hold_nothing_refused(s in any::<String>()) {
            if validate_nudge(&s).is_ok() {
                prop_assert!(!s.chars().any(is_refused));
                prop_assert!(!s.is_empty() && s.len() <= MAX_NUDGE_BYTES);
            }
        }
    }
}
