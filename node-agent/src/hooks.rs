//! The agents' own events: what a CLI's hooks (or notify program) say about its state, the most
//! trusted signal there is while it is fresh.
//!
//! A hook runs `argusctl self event --from claude|codex|gemini|aider`, which maps the CLI's
//! payload ([`from_payload`]) to a [`Condition`] and sends it over the local socket; the local
//! server notes it on the [`Board`] for the caller's session (found by its peer credentials, never
//! by what it says) and wakes the probe, so the controller hears it within a probe round instead
//! of a screen change later. The probe reads the board beside the title, the agent's files and the
//! screen; a hook that stopped firing is forgotten after its window ([`Board::fresh_ms`]), so it
//! never pins a state. `argusctl hooks install` writes the hook settings ([`install`]).

pub mod install;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use argus_shared::profile::Condition;

use crate::probe::SessionKey;

/// The longest time a "working" report from a hook counts: a CLI thinking for minutes fires no
/// hook, so the screen takes over again after this.
const WORKING_FRESH_MS: i64 = 2 * 60 * 1000;

/// What a session's hooks said last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heard {
    pub condition: Condition,
    /// When the hooks' condition last changed (Unix ms).
    pub since_ms: i64,
    /// When a hook last fired (Unix ms).
    pub heard_ms: i64,
    /// Which CLI event it was (`claude:Notification/permission_prompt`).
    pub what: String,
    /// The conversation the CLI named in its payload (empty: none yet), for a restart that
    /// resumes exactly it.
    pub session_id: String,
}

/// The newest hook report per session, shared by the local server (writer) and the probe
/// (reader). Bounded by the sessions the probe sees: it drops the others each round.
#[derive(Debug, Clone)]
pub struct Board {
    inner: Arc<Mutex<HashMap<SessionKey, Heard>>>,
    fresh_ms: i64,
}

impl Board {
    /// A board whose reports count for `fresh` (a "working" report for at most 2 minutes).
    pub fn new(fresh: std::time::Duration) -> Self {
        Self {
            inner: Arc::default(),
            fresh_ms: i64::try_from(fresh.as_millis()).unwrap_or(i64::MAX),
        }
    }

    /// Notes a hook's report for `key` at `now`; true when it changes the session's condition
    /// (only then is the probe worth waking: tool hooks fire many times a turn).
    pub fn record(
        &self,
        key: SessionKey,
        condition: Condition,
        what: String,
        session_id: String,
        now: i64,
    ) -> bool {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let new = !map.contains_key(&key);
        let e = map.entry(key).or_insert(Heard {
            condition,
            since_ms: now,
            heard_ms: now,
            what: String::new(),
            session_id: String::new(),
        });
        if !session_id.is_empty() {
            e.session_id = session_id;
        }
        let changed = new || e.condition != condition;
        if e.condition != condition {
            e.condition = condition;
            e.since_ms = now;
        }
        e.heard_ms = now;
        e.what = what;
        changed
    }

    /// The last report for `key`.
    pub fn get(&self, key: &SessionKey) -> Option<Heard> {
        let map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        map.get(key).cloned()
    }

    /// Forgets the sessions `keep` says no to.
    pub fn retain(&self, keep: impl Fn(&SessionKey) -> bool) {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|k, _| keep(k));
    }

    /// How long a report of `condition` counts after its hook fired.
    pub fn fresh_ms(&self, condition: Condition) -> i64 {
        match condition {
            Condition::Thinking => self.fresh_ms.min(WORKING_FRESH_MS),
            _ => self.fresh_ms,
        }
    }
}

/// The CLIs whose hooks Argus understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Cli {
    Claude,
    Codex,
    Gemini,
    Aider,
}

impl Cli {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Claude => "claude",
            Self::Codex => "codex",
            Self::Gemini => "gemini",
            Self::Aider => "aider",
        }
    }
}

/// What a CLI's hook payload says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub condition: Condition,
    /// A label naming the event (`claude:Stop`).
    pub what: String,
    /// The conversation id the payload names (Claude Code's and Gemini CLI's `session_id`), when
    /// it is a plain id; else empty.
    pub session_id: String,
}

pub use argus_shared::profile::plain_id;

/// What a CLI's hook payload says: the condition, a label naming the event and the conversation
/// id; `None` for events that say nothing about the agent's state (session start, compaction).
///
/// - Claude Code (JSON on stdin, `hook_event_name`): `Notification` with `notification_type`
///   `permission_prompt` (or a message about permission) is waiting for permission, `idle_prompt`
///   is at the prompt; `PermissionRequest` waits for permission; `Stop` is at the prompt;
///   `StopFailure` is rate limited when its error is a rate limit, else an error;
///   `UserPromptSubmit`, `PreToolUse`, `PostToolUse` are working.
/// - Codex `notify` (JSON as the last argument, `type`): `agent-turn-complete` is at the prompt;
///   its hooks, where enabled, have Claude's event names.
/// - Gemini CLI (JSON on stdin, `hook_event_name`): `Notification` (tool permission) waits for
///   permission, `AfterAgent` is at the prompt, `BeforeAgent`, `BeforeModel`, `BeforeTool`,
///   `AfterTool` are working.
/// - Aider `--notifications-command`: it runs when Aider waits for input: at the prompt.
pub fn from_payload(cli: Cli, payload: &str) -> Option<Report> {
    if cli == Cli::Aider {
        return Some(Report {
            condition: Condition::AtPrompt,
            what: "aider:notification".to_owned(),
            session_id: String::new(),
        });
    }
    let v: serde_json::Value = serde_json::from_str(payload.trim()).ok()?;
    let field = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or_default();
    let label = |what: &str| format!("{}:{what}", cli.as_str());
    // Codex's `thread-id` is left out: `codex resume` does not find a conversation by it.
    let session_id = Some(field("session_id"))
        .filter(|id| plain_id(id))
        .unwrap_or_default()
        .to_owned();
    if cli == Cli::Codex && !field("type").is_empty() {
        let kind = field("type");
        return (kind == "agent-turn-complete").then(|| Report {
            condition: Condition::AtPrompt,
            what: label(kind),
            session_id,
        });
    }
    let event = field("hook_event_name");
    let condition = match (cli, event) {
        (_, "Notification") => {
            let kind = field("notification_type");
            let message = field("message").to_ascii_lowercase();
            if kind == "idle_prompt" || message.contains("waiting for your input") {
                Condition::AtPrompt
            } else if kind == "permission_prompt"
                || kind == "ToolPermission"
                || message.contains("permission")
                || cli == Cli::Gemini
            {
                Condition::WaitingPermission
            } else {
                return None;
            }
        }
        (_, "PermissionRequest") => Condition::WaitingPermission,
        (Cli::Claude | Cli::Codex, "Stop") | (Cli::Gemini, "AfterAgent") => Condition::AtPrompt,
        (_, "StopFailure") => {
            let error = v
                .get("error")
                .map(|e| e.to_string().to_ascii_lowercase())
                .unwrap_or_default();
            if error.contains("rate_limit") || error.contains("rate limit") || error.contains("429")
            {
                Condition::RateLimited
            } else {
                Condition::Error
            }
        }
        (
            _,
            "UserPromptSubmit" | "PreToolUse" | "PostToolUse" | "BeforeAgent" | "BeforeModel"
            | "BeforeTool" | "AfterTool",
        ) => Condition::Thinking,
        _ => return None,
    };
    let detail = match field("notification_type") {
        "" => event.to_owned(),
        kind => format!("{event}/{kind}"),
    };
    Some(Report {
        condition,
        what: label(&detail),
        session_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cli_payload_maps_to_its_state() {
        let cases = [
            (
                Cli::Claude,
                r#"{"hook_event_name":"Notification","notification_type":"permission_prompt","message":"Claude needs your permission to use Bash"}"#,
                Some(Condition::WaitingPermission),
            ),
            (
                Cli::Claude,
                r#"{"hook_event_name":"Notification","notification_type":"idle_prompt","message":"Claude is waiting for your input"}"#,
                Some(Condition::AtPrompt),
            ),
            (
                Cli::Claude,
                r#"{"hook_event_name":"Stop"}"#,
                Some(Condition::AtPrompt),
            ),
            (
                Cli::Claude,
                r#"{"hook_event_name":"StopFailure","error":"rate_limit"}"#,
                Some(Condition::RateLimited),
            ),
            (
                Cli::Claude,
                r#"{"hook_event_name":"StopFailure","error":"server_error"}"#,
                Some(Condition::Error),
            ),
            (
                Cli::Claude,
                r#"{"hook_event_name":"PreToolUse","tool_name":"Bash"}"#,
                Some(Condition::Thinking),
            ),
            (Cli::Claude, r#"{"hook_event_name":"SessionStart"}"#, None),
            (
                Cli::Codex,
                r#"{"type":"agent-turn-complete","thread-id":"t"}"#,
                Some(Condition::AtPrompt),
            ),
            (Cli::Codex, r#"{"type":"something-new"}"#, None),
            (
                Cli::Gemini,
                r#"{"hook_event_name":"Notification","notification_type":"ToolPermission"}"#,
                Some(Condition::WaitingPermission),
            ),
            (
                Cli::Gemini,
                r#"{"hook_event_name":"AfterAgent"}"#,
                Some(Condition::AtPrompt),
            ),
            (
                Cli::Gemini,
                r#"{"hook_event_name":"BeforeTool"}"#,
                Some(Condition::Thinking),
            ),
            (Cli::Aider, "", Some(Condition::AtPrompt)),
            (Cli::Claude, "not json", None),
        ];
        for (cli, payload, want) in cases {
            assert_eq!(
                from_payload(cli, payload).map(|r| r.condition),
                want,
                "{cli:?} {payload}"
            );
        }
        let claude =
            r#"{"hook_event_name":"Stop","session_id":"2b246e8d-f2c5-4cc9-aa53-2c283548eb0d"}"#;
        assert_eq!(
            from_payload(Cli::Claude, claude)
                .map(|r| r.session_id)
                .as_deref(),
            Some("2b246e8d-f2c5-4cc9-aa53-2c283548eb0d")
        );
        let odd = r#"{"hook_event_name":"Stop","session_id":"$(rm -rf ~)"}"#;
        assert_eq!(
            from_payload(Cli::Claude, odd)
                .map(|r| r.session_id)
                .as_deref(),
            Some(""),
            "not a plain id: dropped"
        );
    }

    #[test]
    fn a_report_keeps_its_since_until_the_condition_changes() {
        let b = Board::new(std::time::Duration::from_secs(600));
        let k = ("s".to_owned(), "a".to_owned());
        assert!(b.record(k.clone(), Condition::Thinking, "x".into(), "c1".into(), 10));
        let again = b.record(
            k.clone(),
            Condition::Thinking,
            "y".into(),
            String::new(),
            20,
        );
        assert!(!again, "the same condition again wakes nothing");
        let h = b.get(&k).expect("heard");
        assert_eq!((h.since_ms, h.heard_ms), (10, 20));
        assert_eq!(b.get(&k).expect("heard").session_id, "c1", "kept");
        assert!(b.record(
            k.clone(),
            Condition::AtPrompt,
            "z".into(),
            String::new(),
            30,
        ));
        let h = b.get(&k).expect("heard");
        assert_eq!((h.condition, h.since_ms), (Condition::AtPrompt, 30));
        assert_eq!(b.fresh_ms(Condition::Thinking), WORKING_FRESH_MS);
        assert_eq!(b.fresh_ms(Condition::AtPrompt), 600_000);
    }
}
