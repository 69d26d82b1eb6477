//! `argusctl hooks install`: merges Argus's hook entries into a CLI's own settings file without
//! losing anything that is there.
//!
//! - Claude Code: `~/.claude/settings.json`, one entry per event under `hooks`.
//! - Gemini CLI: `~/.gemini/settings.json`, the same shape, each entry named `argus`.
//! - Codex: `~/.codex/config.toml`, its single `notify` program. A `notify` already set is left
//!   alone (Codex runs one program) and the caller is told what to add by hand.
//!
//! An entry is recognised by its command (`... self event --from CLI`), so a second install
//! changes nothing. Before a file is changed it is copied to `FILE.argus-backup`, and the new
//! text replaces it atomically (a temporary file renamed over it). `--dry-run` computes the same
//! change and writes nothing.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use super::Cli;

/// The events Argus listens to, per CLI, with their matcher.
const CLAUDE_EVENTS: [(&str, &str); 7] = [
    ("Notification", ""),
    ("PermissionRequest", ""),
    ("Stop", ""),
    ("StopFailure", ""),
    ("UserPromptSubmit", ""),
    ("PreToolUse", "*"),
    ("PostToolUse", "*"),
];
const GEMINI_EVENTS: [(&str, &str); 6] = [
    ("Notification", "*"),
    ("AfterAgent", "*"),
    ("BeforeAgent", "*"),
    ("BeforeModel", "*"),
    ("BeforeTool", "*"),
    ("AfterTool", "*"),
];

/// Why an install did not happen.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path} is not valid {format} ({detail}); fix it or point --settings elsewhere, nothing was changed"
    )]
    Invalid {
        path: String,
        format: &'static str,
        detail: String,
    },
    #[error(
        "aider has no settings file for hooks: start it with --notifications --notifications-command \"{command}\""
    )]
    Aider { command: String },
    #[error("no home directory: give --settings PATH")]
    NoHome,
}

/// What an install did (or, dry, would do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub path: PathBuf,
    /// The events given an Argus entry (empty: already installed).
    pub added: Vec<String>,
    /// The file's text after the change.
    pub text: String,
    /// Something the caller must do by hand (Codex's notify already set).
    pub note: Option<String>,
    /// Where the old file was copied (None when nothing was written).
    pub backup: Option<PathBuf>,
}

/// The CLI's user settings file.
pub fn default_path(cli: Cli) -> Result<PathBuf, InstallError> {
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .ok_or(InstallError::NoHome)?;
    Ok(match cli {
        Cli::Claude => home.join(".claude/settings.json"),
        Cli::Gemini => home.join(".gemini/settings.json"),
        Cli::Codex | Cli::Aider => home.join(".codex/config.toml"),
    })
}

/// The command a hook runs: `ARGUSCTL self event --from CLI`.
pub fn hook_command(argusctl: &str, cli: Cli) -> String {
    format!(
        "{} self event --from {}",
        shell_word(argusctl),
        cli.as_str()
    )
}

/// Installs (or, with `dry_run`, plans) the hooks of `cli` in `path`.
pub fn install(cli: Cli, path: &Path, argusctl: &str, dry_run: bool) -> Result<Plan, InstallError> {
    let command = hook_command(argusctl, cli);
    let old = match std::fs::read_to_string(path) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(InstallError::Read {
                path: path.display().to_string(),
                source,
            });
        }
    };
    let (text, added, note) = match cli {
        // Claude Code counts a hook's timeout in seconds, Gemini CLI in milliseconds.
        Cli::Claude => merge_json(path, old.as_deref(), &CLAUDE_EVENTS, &command, None, 5)?,
        Cli::Gemini => merge_json(
            path,
            old.as_deref(),
            &GEMINI_EVENTS,
            &command,
            Some("argus"),
            5_000,
        )?,
        Cli::Codex => merge_codex(path, old.as_deref(), argusctl)?,
        Cli::Aider => return Err(InstallError::Aider { command }),
    };
    let mut plan = Plan {
        path: path.to_owned(),
        added,
        text,
        note,
        backup: None,
    };
    if dry_run || plan.added.is_empty() {
        return Ok(plan);
    }
    let write = |source| InstallError::Write {
        path: path.display().to_string(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(write)?;
    }
    if old.is_some() {
        let backup = PathBuf::from(format!("{}.argus-backup", path.display()));
        std::fs::copy(path, &backup).map_err(write)?;
        plan.backup = Some(backup);
    }
    let tmp = PathBuf::from(format!("{}.argus-tmp", path.display()));
    std::fs::write(&tmp, &plan.text).map_err(write)?;
    std::fs::rename(&tmp, path).map_err(write)?;
    Ok(plan)
}

/// Claude Code's and Gemini CLI's shape: `{"hooks": {EVENT: [{"matcher": M, "hooks": [{"type":
/// "command", "command": C}]}]}}`.
fn merge_json(
    path: &Path,
    old: Option<&str>,
    events: &[(&str, &str)],
    command: &str,
    name: Option<&str>,
    timeout: u64,
) -> Result<(String, Vec<String>, Option<String>), InstallError> {
    let invalid = |detail: String| InstallError::Invalid {
        path: path.display().to_string(),
        format: "JSON",
        detail,
    };
    let mut root: Value = match old.filter(|t| !t.trim().is_empty()) {
        Some(t) => serde_json::from_str(t).map_err(|e| invalid(e.to_string()))?,
        None => Value::Object(Map::new()),
    };
    let obj = root
        .as_object_mut()
        .ok_or_else(|| invalid("the top level is not an object".into()))?;
    let hooks = obj
        .entry("hooks")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .ok_or_else(|| invalid("\"hooks\" is not an object".into()))?;
    let mut added = Vec::new();
    for (event, matcher) in events {
        let list = hooks
            .entry(*event)
            .or_insert_with(|| Value::Array(Vec::new()))
            .as_array_mut()
            .ok_or_else(|| invalid(format!("\"hooks.{event}\" is not a list")))?;
        let present = list.iter().any(|group| {
            group
                .get("hooks")
                .and_then(Value::as_array)
                .is_some_and(|hs| {
                    hs.iter().any(|h| {
                        h.get("command")
                            .and_then(Value::as_str)
                            .is_some_and(|c| is_ours(c, command))
                    })
                })
        });
        if present {
            continue;
        }
        let mut hook = json!({"type": "command", "command": command, "timeout": timeout});
        if let Some(n) = name {
            hook["name"] = json!(n);
        }
        list.push(json!({"matcher": matcher, "hooks": [hook]}));
        added.push((*event).to_owned());
    }
    let mut text = serde_json::to_string_pretty(&root).map_err(|e| invalid(e.to_string()))?;
    text.push('\n');
    if added.is_empty() {
        text = old.unwrap_or_default().to_owned();
    }
    Ok((text, added, None))
}

/// Codex's `config.toml`: a top-level `notify = [PROGRAM, ARGS...]`, written as a line before
/// the first table so that the rest of the file stays as it is, byte for byte.
fn merge_codex(
    path: &Path,
    old: Option<&str>,
    argusctl: &str,
) -> Result<(String, Vec<String>, Option<String>), InstallError> {
    let old = old.unwrap_or_default();
    let parsed: toml::Table = toml::from_str(old).map_err(|e| InstallError::Invalid {
        path: path.display().to_string(),
        format: "TOML",
        detail: e.to_string(),
    })?;
    let ours = [argusctl, "self", "event", "--from", "codex"];
    let line = format!(
        "notify = [{}]\n",
        ours.iter()
            .map(|w| toml::Value::String((*w).to_owned()).to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(existing) = parsed.get("notify") {
        let words: Vec<&str> = existing
            .as_array()
            .map(|a| a.iter().filter_map(toml::Value::as_str).collect())
            .unwrap_or_default();
        if is_ours(&words.join(" "), "self event --from codex") {
            return Ok((old.to_owned(), Vec::new(), None));
        }
        let note = format!(
            "{} already sets notify = {existing}; Codex runs one notify program, so it is left as \
             it is: have that program also run `{}` with the same JSON argument",
            path.display(),
            hook_command(argusctl, Cli::Codex)
        );
        return Ok((old.to_owned(), Vec::new(), Some(note)));
    }
    // Top-level keys must come before the first table header.
    let at = old
        .lines()
        .scan(0usize, |pos, l| {
            let start = *pos;
            *pos += l.len() + 1;
            Some((start, l))
        })
        .find(|(_, l)| l.trim_start().starts_with('['))
        .map_or(old.len(), |(start, _)| start);
    let mut text = String::with_capacity(old.len() + line.len() + 1);
    text.push_str(&old[..at]);
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&line);
    if at < old.len() {
        text.push('\n');
    }
    text.push_str(&old[at..]);
    Ok((text, vec!["notify".to_owned()], None))
}

/// Whether a configured hook command is Argus's own for this CLI (whatever argusctl path).
fn is_ours(configured: &str, command: &str) -> bool {
    let tail = command
        .find("self event --from")
        .map_or(command, |i| &command[i..]);
    configured.contains(tail)
}

/// `word` quoted for a POSIX shell when it needs it.
fn shell_word(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:@%".contains(c))
    {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXISTING: &str = r#"{
  "model": "opus",
  "hooks": {
    "Stop": [
      {"matcher": "", "hooks": [{"type": "command", "command": "notify-send done"}]}
    ],
    "PostToolUse": [
      {"matcher": "Edit|Write", "hooks": [{"type": "command", "command": "cargo fmt"}]}
    ]
  },
  "permissions": {"allow": ["Bash(ls:*)"]}
}
"#;

    fn commands(v: &Value, event: &str) -> Vec<String> {
        v["hooks"][event]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["hooks"].as_array().cloned().unwrap_or_default())
            .filter_map(|h| h["command"].as_str().map(str::to_owned))
            .collect()
    }

    #[test]
    fn claude_hooks_keep_what_is_there_and_install_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("settings.json");
        std::fs::write(&path, EXISTING).expect("write");

        let dry = install(Cli::Claude, &path, "/usr/bin/argusctl", true).expect("dry run");
        assert_eq!(dry.added.len(), CLAUDE_EVENTS.len());
        assert_eq!(std::fs::read_to_string(&path).expect("read"), EXISTING);
        assert!(dry.backup.is_none());

        let done = install(Cli::Claude, &path, "/usr/bin/argusctl", false).expect("install");
        assert_eq!(done.text, dry.text);
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("read"))
            .expect("valid JSON");
        assert_eq!(v["model"], "opus");
        assert_eq!(v["permissions"]["allow"][0], "Bash(ls:*)");
        let ours = "/usr/bin/argusctl self event --from claude";
        assert_eq!(commands(&v, "Stop"), ["notify-send done", ours]);
        assert_eq!(commands(&v, "PostToolUse"), ["cargo fmt", ours]);
        assert_eq!(commands(&v, "Notification"), [ours]);
        let backup = done.backup.expect("a backup");
        assert_eq!(std::fs::read_to_string(backup).expect("backup"), EXISTING);

        // Twice: nothing more, even from another argusctl path.
        let after = std::fs::read_to_string(&path).expect("read");
        let again = install(Cli::Claude, &path, "/opt/argusctl", false).expect("again");
        assert!(again.added.is_empty());
        assert_eq!(std::fs::read_to_string(&path).expect("read"), after);
    }

    #[test]
    fn gemini_hooks_are_named_and_a_missing_file_is_created() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(".gemini/settings.json");
        let plan = install(Cli::Gemini, &path, "argusctl", false).expect("install");
        assert_eq!(plan.added.len(), GEMINI_EVENTS.len());
        assert!(plan.backup.is_none());
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("read"))
            .expect("valid JSON");
        assert_eq!(v["hooks"]["AfterAgent"][0]["hooks"][0]["name"], "argus");
        // Gemini CLI's hook timeout is in milliseconds.
        assert_eq!(v["hooks"]["AfterAgent"][0]["hooks"][0]["timeout"], 5_000);
    }

    #[test]
    fn a_broken_settings_file_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("settings.json");
        std::fs::write(&path, "{ not json").expect("write");
        let e = install(Cli::Claude, &path, "argusctl", false).expect_err("refused");
        assert!(e.to_string().contains("not valid JSON"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "{ not json");
    }

    #[test]
    fn codex_notify_goes_before_the_first_table_and_never_replaces_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        let old = "model = \"gpt-5\" # mine\n\n[projects.\"/w\"]\ntrust_level = \"trusted\"\n";
        std::fs::write(&path, old).expect("write");
        let plan = install(Cli::Codex, &path, "/bin/argusctl", false).expect("install");
        assert_eq!(plan.added, ["notify"]);
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.starts_with("model = \"gpt-5\" # mine\n"), "{text}");
        assert!(
            text.ends_with("[projects.\"/w\"]\ntrust_level = \"trusted\"\n"),
            "{text}"
        );
        let v: toml::Table = toml::from_str(&text).expect("valid TOML");
        assert_eq!(
            v["notify"].as_array().map(Vec::len),
            Some(5),
            "notify at the top level: {text}"
        );
        assert_eq!(v["projects"]["/w"]["trust_level"].as_str(), Some("trusted"));
        let again = install(Cli::Codex, &path, "/bin/argusctl", false).expect("again");
        assert!(again.added.is_empty() && again.note.is_none());

        std::fs::write(&path, "notify = [\"my-notifier\"]\n").expect("write");
        let theirs = install(Cli::Codex, &path, "/bin/argusctl", false).expect("theirs");
        assert!(theirs.added.is_empty());
        assert!(theirs.note.expect("a note").contains("my-notifier"));
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "notify = [\"my-notifier\"]\n"
        );
    }
}
