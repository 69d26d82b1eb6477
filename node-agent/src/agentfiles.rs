//! Claude Code's own state files, read beside its screen: its per-process session file
//! (`<config>/sessions/<pid>.json`, which names the conversation a restart resumes) and the tail
//! of that conversation's transcript (`<config>/projects/<cwd>/<id>.jsonl`, where an API error
//! with status 429 says the agent is rate limited). `<config>` is `$CLAUDE_CONFIG_DIR`, else
//! `$HOME/.claude`, from the agent's own environment.
//!
//! Read only what is needed (small files, the transcript's last [`TAIL_BYTES`]), trust nothing
//! about their shape: any surprise (a missing file, another format, a file of an earlier process
//! with the same pid) means "nothing known", and the screen decides as before.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Largest session file read.
const SESSION_FILE_BYTES: u64 = 64 * 1024;
/// Bytes read from the end of a transcript: its last few entries.
const TAIL_BYTES: u64 = 64 * 1024;
/// Project directories looked through when the transcript is not where its cwd says.
const PROJECT_DIRS: usize = 4096;

/// What Claude Code's files say about one of its processes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaudeState {
    /// The conversation's id (`claude --resume <id>` continues it).
    pub session_id: String,
    /// The newest entry of the transcript is an API error with status 429: when (Unix ms).
    pub rate_limited_at_ms: Option<i64>,
}

/// Reads what Claude Code's files say about process `pid`, which started at `start_time`
/// (clock ticks after boot, field 22 of `/proc/PID/stat`). `None` when nothing is known.
pub fn claude(pid: u32, start_time: u64) -> Option<ClaudeState> {
    let dir = config_dir(&environ(pid)?)?;
    read_claude(&dir, pid, start_time)
}

/// [`claude`] with the configuration directory given (for tests).
pub fn read_claude(dir: &Path, pid: u32, start_time: u64) -> Option<ClaudeState> {
    let (session_id, cwd) = session_file(dir, pid, start_time)?;
    let rate_limited_at_ms = transcript(dir, &cwd, &session_id).and_then(|t| last_limit(&t));
    Some(ClaudeState {
        session_id,
        rate_limited_at_ms,
    })
}

/// The process's environment, as (name, value) pairs.
fn environ(pid: u32) -> Option<Vec<(String, String)>> {
    let bytes = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    Some(
        bytes
            .split(|b| *b == 0)
            .filter_map(|kv| {
                let kv = std::str::from_utf8(kv).ok()?;
                let (k, v) = kv.split_once('=')?;
                Some((k.to_owned(), v.to_owned()))
            })
            .collect(),
    )
}

/// `$CLAUDE_CONFIG_DIR`, else `$HOME/.claude`.
fn config_dir(env: &[(String, String)]) -> Option<PathBuf> {
    let get = |name: &str| {
        env.iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| PathBuf::from(v))
    };
    get("CLAUDE_CONFIG_DIR").or_else(|| get("HOME").map(|h| h.join(".claude")))
}

/// The session file of `pid`: its conversation id and cwd, if it belongs to this very process.
/// The file records the process's start time (`procStart`, as `/proc/PID/stat` gives it): a
/// file left behind by an earlier process with the same pid names another start time, and one
/// without a start time cannot be told apart, so neither counts.
fn session_file(dir: &Path, pid: u32, start_time: u64) -> Option<(String, String)> {
    let path = dir.join("sessions").join(format!("{pid}.json"));
    let v: Value = serde_json::from_slice(&read_head(&path, SESSION_FILE_BYTES)?).ok()?;
    if v.get("pid").and_then(Value::as_u64) != Some(u64::from(pid)) {
        return None;
    }
    let started = match v.get("procStart")? {
        Value::String(s) => s.trim().parse::<u64>().ok()?,
        Value::Number(n) => n.as_u64()?,
        _ => return None,
    };
    if started != start_time {
        return None;
    }
    let id = v.get("sessionId")?.as_str()?;
    let id_ok = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !id_ok {
        return None;
    }
    let cwd = v.get("cwd").and_then(Value::as_str).unwrap_or_default();
    Some((id.to_owned(), cwd.to_owned()))
}

/// The transcript of conversation `id`: under the project directory named after `cwd` (every
/// character but letters and digits made '-'), else in whichever project directory holds it.
fn transcript(dir: &Path, cwd: &str, id: &str) -> Option<PathBuf> {
    let projects = dir.join("projects");
    let file = format!("{id}.jsonl");
    let named: String = cwd
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let direct = projects.join(named).join(&file);
    if direct.is_file() {
        return Some(direct);
    }
    std::fs::read_dir(&projects)
        .ok()?
        .take(PROJECT_DIRS)
        .filter_map(Result::ok)
        .map(|e| e.path().join(&file))
        .find(|p| p.is_file())
}

/// When the newest conversation entry of the transcript is an API error with status 429 (or
/// Claude's own `rate_limit` error kind): its time (Unix ms). A newer user or assistant entry
/// means the conversation went on.
fn last_limit(path: &Path) -> Option<i64> {
    let tail = read_tail(path, TAIL_BYTES)?;
    let text = String::from_utf8_lossy(&tail);
    for line in text.lines().rev() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            // The first line of the tail is usually cut; a line being written is incomplete.
            continue;
        };
        let kind = v.get("type").and_then(Value::as_str).unwrap_or_default();
        if kind != "assistant" && kind != "user" {
            continue;
        }
        let api_error = v.get("isApiErrorMessage").and_then(Value::as_bool) == Some(true);
        let status = v.get("apiErrorStatus").and_then(Value::as_i64);
        let limit = v.get("error").and_then(Value::as_str) == Some("rate_limit");
        if !(api_error && (status == Some(429) || limit)) {
            return None;
        }
        let at = v.get("timestamp").and_then(Value::as_str)?;
        let at = humantime::parse_rfc3339_weak(at.trim_end_matches('Z')).ok()?;
        return at
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_millis() as i64);
    }
    None
}

fn read_head(path: &Path, limit: u64) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    File::open(path)
        .ok()?
        .take(limit + 1)
        .read_to_end(&mut buf)
        .ok()?;
    (buf.len() as u64 <= limit).then_some(buf)
}

fn read_tail(path: &Path, limit: u64) -> Option<Vec<u8>> {
    let mut f = File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(limit))).ok()?;
    let mut buf = Vec::new();
    f.take(limit).read_to_end(&mut buf).ok()?;
    Some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "2b246e8d-f2c5-4cc9-aa53-2c283548eb0d";
    const CWD: &str = "/tmp/work_1/repo";

    /// A session file as Claude Code 2.1.332 writes it (fields it added over time included).
    fn session(dir: &Path, pid: u32, proc_start: &str) {
        let sessions = dir.join("sessions");
        std::fs::create_dir_all(&sessions).expect("mkdir");
        let text = format!(
            r#"{{"pid":{pid},"sessionId":"{ID}","cwd":"{CWD}","startedAt":1796050000000,"procStart":"{proc_start}","version":"2.1.332","peerProtocol":1,"kind":"interactive","entrypoint":"cli","name":"repo","nameSource":"derived","nameSince":1796050000000}}"#
        );
        std::fs::write(sessions.join(format!("{pid}.json")), text).expect("write");
    }

    fn transcript_lines(dir: &Path, lines: &[&str]) {
        let project = dir.join("projects").join("-tmp-work-1-repo");
        std::fs::create_dir_all(&project).expect("mkdir");
        std::fs::write(project.join(format!("{ID}.jsonl")), lines.join("\n") + "\n")
            .expect("write");
    }

    const USER: &str = r#"{"parentUuid":null,"type":"user","message":{"role":"user","content":"go on"},"timestamp":"2026-11-30T15:05:20.368Z","sessionId":"2b246e8d-f2c5-4cc9-aa53-2c283548eb0d"}"#;
    const LIMIT: &str = r#"{"type":"assistant","isApiErrorMessage":true,"apiErrorStatus":429,"error":"rate_limit","message":{"role":"assistant","content":[{"type":"text","text":"API Error: Request rejected (429)"}]},"timestamp":"2026-11-30T15:06:00.000Z"}"#;
    const ANSWER: &str = r#"{"type":"assistant","message":{"role":"assistant","content":[{"type":"text","text":"Done."}]},"timestamp":"2026-11-30T15:09:00.000Z"}"#;
    const META: &str = r#"{"type":"file-history-snapshot","messageId":"x","snapshot":{}}"#;

    #[test]
    fn the_session_file_names_the_conversation_of_this_very_process() {
        let dir = tempfile::tempdir().expect("tmp");
        session(dir.path(), 4242, "987654");
        let s = read_claude(dir.path(), 4242, 987_654).expect("known");
        assert_eq!(s.session_id, ID);
        assert_eq!(
            s.rate_limited_at_ms, None,
            "no transcript: nothing known of limits"
        );
        // The same pid, another process (the file of an earlier one left behind): nothing.
        assert_eq!(read_claude(dir.path(), 4242, 987_655), None);
        // Another pid's file, or none.
        assert_eq!(read_claude(dir.path(), 4243, 987_654), None);
    }

    #[test]
    fn surprises_mean_nothing_known() {
        let dir = tempfile::tempdir().expect("tmp");
        let sessions = dir.path().join("sessions");
        std::fs::create_dir_all(&sessions).expect("mkdir");
        for (pid, text) in [
            (1, "not json"),
            (2, r#"{"pid":2,"sessionId":"abc"}"#),
            (3, r#"{"pid":3,"sessionId":"abc","procStart":"x"}"#),
            (4, r#"{"pid":4,"sessionId":"../../etc","procStart":"5"}"#),
            (5, r#"[1,2,3]"#),
        ] {
            std::fs::write(sessions.join(format!("{pid}.json")), text).expect("write");
            assert_eq!(read_claude(dir.path(), pid, 5), None, "{text}");
        }
        // A numeric start time is taken too.
        std::fs::write(
            sessions.join("6.json"),
            r#"{"pid":6,"sessionId":"abc","procStart":5}"#,
        )
        .expect("write");
        assert_eq!(
            read_claude(dir.path(), 6, 5).map(|s| s.session_id),
            Some("abc".to_owned())
        );
    }

    #[test]
    fn a_429_as_the_newest_entry_is_a_rate_limit() {
        let dir = tempfile::tempdir().expect("tmp");
        session(dir.path(), 7, "100");
        transcript_lines(dir.path(), &[USER, LIMIT, META, "{\"type\":\"assist"]);
        let s = read_claude(dir.path(), 7, 100).expect("known");
        assert_eq!(s.rate_limited_at_ms, Some(1_796_051_160_000));
        // The conversation went on after it: no limit.
        transcript_lines(dir.path(), &[USER, LIMIT, ANSWER]);
        assert_eq!(
            read_claude(dir.path(), 7, 100).and_then(|s| s.rate_limited_at_ms),
            None
        );
        // Another error is no limit.
        let overloaded = LIMIT
            .replace("429", "529")
            .replace("rate_limit", "server_error");
        transcript_lines(dir.path(), &[USER, &overloaded]);
        assert_eq!(
            read_claude(dir.path(), 7, 100).and_then(|s| s.rate_limited_at_ms),
            None
        );
    }

    #[test]
    fn the_config_dir_comes_from_the_agent_s_environment() {
        let env = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            config_dir(&env(&[("HOME", "/home/a"), ("CLAUDE_CONFIG_DIR", "/cfg")])),
            Some(PathBuf::from("/cfg"))
        );
        assert_eq!(
            config_dir(&env(&[("HOME", "/home/a")])),
            Some(PathBuf::from("/home/a/.claude"))
        );
        assert_eq!(config_dir(&env(&[])), None);
        // This process's own environment reads.
        assert!(environ(std::process::id()).is_some_and(|e| !e.is_empty()));
    }
}
