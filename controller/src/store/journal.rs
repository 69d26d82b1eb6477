//! The recorder's spill file (`<db>.journal`, beside the database): writes the store could not
//! take yet, in order, one checksummed JSON line each. Appended (and fsync'd) a batch at a time
//! while the store fails, read back from the front as it recovers, emptied when all of it is
//! applied, and replayed at start-up before the controller serves.
//!
//! A line is `<16 hex digits of blake3(json)> <json>\n`; the JSON carries its format version.
//! A torn last line (a crash in the middle of an append) is cut off; a line whose checksum or
//! JSON is wrong is reported by line number and skipped, and the lines after it are kept.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{
    AlarmRow, CheckpointRow, CommandRow, HandoffRow, IncidentRow, RateLimitRow, SessionRef,
    TransitionRow, Write,
};

/// Why the journal could not be used.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Opening, reading, appending or truncating the file failed.
    #[error("journal {path}: {op} failed")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A write could not be encoded (never expected: every field is plain data).
    #[error("journal {path}: encoding a write failed")]
    Encode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// A line of the journal that was not taken back. Reported, never silent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JournalProblem {
    /// The last line has no end: a crash cut an append short. It was removed (it was never
    /// acknowledged as journaled).
    #[error(
        "journal {path}: the last line ({bytes} bytes) is torn (cut short by a crash); removed"
    )]
    Torn { path: String, bytes: u64 },
    /// A line's checksum or content is wrong; the line is skipped, the rest kept.
    #[error("journal {path}: line {line} is damaged ({why}); skipped, the other lines are kept")]
    Damaged {
        path: String,
        line: usize,
        why: String,
    },
}

/// The journal file and how much of it is still to apply.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    /// Byte offset of the first line not yet applied to the store.
    read_at: u64,
    /// 1-based number of the line at `read_at` (for messages).
    line_at: usize,
    /// Lines not yet applied (damaged lines are not counted).
    pending: usize,
    /// Length of the file (everything appended).
    len: u64,
}

/// The journal beside a store URL: `sqlite://PATH` gives `PATH.journal`; other stores have none.
pub fn path_for(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let path = rest.split('?').next().unwrap_or(rest);
    if path.is_empty() || path == ":memory:" {
        return None;
    }
    Some(PathBuf::from(format!("{path}.journal")))
}

impl Journal {
    /// Opens (creating when missing) the journal at `path` and checks every line: returns the
    /// journal and what could not be taken back.
    pub fn open(path: &Path) -> Result<(Self, Vec<JournalProblem>), JournalError> {
        let io = |op| {
            let path = path.to_owned();
            move |source| JournalError::Io { op, path, source }
        };
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io("open"))?;
        let mut j = Self {
            path: path.to_owned(),
            file,
            read_at: 0,
            line_at: 1,
            pending: 0,
            len: 0,
        };
        let mut problems = Vec::new();
        let mut reader = BufReader::new(File::open(path).map_err(io("read"))?);
        let (mut offset, mut line_no) = (0u64, 0usize);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let n = reader.read_until(b'\n', &mut buf).map_err(io("read"))? as u64;
            if n == 0 {
                break;
            }
            line_no += 1;
            if buf.last() != Some(&b'\n') {
                problems.push(JournalProblem::Torn {
                    path: path.display().to_string(),
                    bytes: n,
                });
                j.file.set_len(offset).map_err(io("cut the torn line"))?;
                j.file.sync_data().map_err(io("fsync"))?;
                break;
            }
            match decode(&buf) {
                Ok(_) => j.pending += 1,
                Err(why) => problems.push(JournalProblem::Damaged {
                    path: path.display().to_string(),
                    line: line_no,
                    why,
                }),
            }
            offset += n;
        }
        j.len = offset;
        if j.pending == 0 && j.len > 0 {
            // Only damaged lines (already reported): nothing to replay.
            j.clear()?;
        }
        Ok((j, problems))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes not yet applied to the store.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Appends `writes` after everything journaled before and syncs them to disk. On failure
    /// (a full disk) the file is cut back to where it was: the batch is either wholly journaled
    /// or not at all.
    pub fn append(&mut self, writes: &[Write]) -> Result<(), JournalError> {
        let mut text = Vec::with_capacity(writes.len() * 256);
        for w in writes {
            let json =
                serde_json::to_vec(&Entry::from(w)).map_err(|source| JournalError::Encode {
                    path: self.path.clone(),
                    source,
                })?;
            text.extend_from_slice(checksum(&json).as_bytes());
            text.push(b' ');
            text.extend_from_slice(&json);
            text.push(b'\n');
        }
        let written = self
            .file
            .write_all(&text)
            .and_then(|()| self.file.sync_data());
        if let Err(source) = written {
            // Best effort: a cut that fails too leaves a torn line that the next open removes.
            let _ = self.file.set_len(self.len);
            return Err(self.io("append", source));
        }
        self.len += text.len() as u64;
        self.pending += writes.len();
        Ok(())
    }

    /// Up to `max` writes from the front (oldest first), without consuming them; damaged lines
    /// are skipped. Returns them with the position to pass to [`Journal::consume`].
    pub fn peek(&mut self, max: usize) -> Result<(Vec<Write>, Position), JournalError> {
        let mut file = File::open(&self.path).map_err(|e| self.io("read", e))?;
        file.seek(SeekFrom::Start(self.read_at))
            .map_err(|e| self.io("seek", e))?;
        let mut reader = BufReader::new(file);
        let mut out = Vec::new();
        let mut pos = Position {
            offset: self.read_at,
            line: self.line_at,
            writes: 0,
        };
        let mut buf = Vec::new();
        while out.len() < max && pos.offset < self.len {
            buf.clear();
            let n = reader
                .read_until(b'\n', &mut buf)
                .map_err(|e| self.io("read", e))? as u64;
            if n == 0 || buf.last() != Some(&b'\n') {
                break;
            }
            pos.offset += n;
            pos.line += 1;
            if let Ok(entry) = decode(&buf) {
                out.push(entry.into());
                pos.writes += 1;
            }
        }
        Ok((out, pos))
    }

    /// Marks everything before `pos` (from [`Journal::peek`]) as applied; an emptied journal is
    /// truncated.
    pub fn consume(&mut self, pos: Position) -> Result<(), JournalError> {
        self.read_at = pos.offset;
        self.line_at = pos.line;
        self.pending = self.pending.saturating_sub(pos.writes);
        if self.pending == 0 {
            self.clear()?;
        }
        Ok(())
    }

    fn clear(&mut self) -> Result<(), JournalError> {
        self.file.set_len(0).map_err(|e| self.io("truncate", e))?;
        self.file.sync_data().map_err(|e| self.io("fsync", e))?;
        self.read_at = 0;
        self.line_at = 1;
        self.pending = 0;
        self.len = 0;
        Ok(())
    }

    fn io(&self, op: &'static str, source: std::io::Error) -> JournalError {
        JournalError::Io {
            op,
            path: self.path.clone(),
            source,
        }
    }
}

/// Where a [`Journal::peek`] ended.
#[derive(Debug, Clone, Copy)]
pub struct Position {
    offset: u64,
    line: usize,
    writes: usize,
}

fn checksum(json: &[u8]) -> String {
    blake3::hash(json).to_hex()[..16].to_owned()
}

fn decode(line: &[u8]) -> Result<Entry, String> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let (sum, json) = match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => return Err("no checksum".into()),
    };
    if sum != checksum(json).as_bytes() {
        return Err("checksum mismatch".into());
    }
    serde_json::from_slice(json).map_err(|e| format!("unreadable: {e}"))
}

// === the journal's own serialized form (versioned, independent of the in-memory types) ===

#[derive(Serialize, Deserialize)]
#[serde(tag = "v")]
enum Entry {
    #[serde(rename = "1")]
    V1(EntryV1),
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "write", rename_all = "snake_case")]
enum EntryV1 {
    Transition {
        node: String,
        socket: String,
        session: String,
        at_ms: i64,
        from: String,
        to: String,
        reason: String,
    },
    CommandIssued {
        command_id: String,
        node: String,
        socket: String,
        session: String,
        epoch: u64,
        action: String,
        origin: String,
        reason: String,
        issued_at_ms: i64,
        status: String,
        result_message: String,
        finished_at_ms: i64,
    },
    CommandFinished {
        command_id: String,
        status: String,
        message: String,
        at_ms: i64,
    },
    CommandLate {
        command_id: String,
        node: String,
        status: String,
        message: String,
        at_ms: i64,
    },
    Durable {
        node: String,
        socket: String,
        session: String,
        data: String,
        at_ms: i64,
    },
    Incident {
        id: String,
        kind: String,
        scope: String,
        opened_ms: i64,
        closed_ms: i64,
        acked_ms: i64,
        acked_by: String,
        summary: String,
        sessions: u32,
        until_ms: i64,
    },
    AlarmScheduled {
        id: String,
        node: String,
        socket: String,
        session: String,
        note: String,
        origin: String,
        created_ms: i64,
        due_ms: i64,
        state: String,
        closed_ms: i64,
        command_id: String,
        message: String,
    },
    AlarmClosed {
        id: String,
        state: String,
        at_ms: i64,
        command_id: String,
        message: String,
    },
    Checkpoint {
        id: String,
        node: String,
        socket: String,
        session: String,
        taken_ms: i64,
        trigger: String,
        command_id: String,
        reason: String,
        /// The protobuf-encoded checkpoint, in hex.
        data_hex: String,
    },
    Handoff {
        id: String,
        node: String,
        socket: String,
        session: String,
        reason: String,
        detail: String,
        checkpoint_id: String,
        restart_command_id: String,
        from_pid: u32,
        from_start: u64,
        to_pid: u32,
        to_start: u64,
        state: String,
        started_ms: i64,
        resumed_ms: i64,
        ended_ms: i64,
        restarts: u32,
        resume_attempts: u32,
        resume_command_id: String,
        message: String,
    },
    RateLimit {
        node: String,
        socket: String,
        session: String,
        scope: String,
        at_ms: i64,
        until_ms: i64,
    },
    RateLimitOver {
        node: String,
        socket: String,
        session: String,
    },
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of a hex string; a damaged one gives what decodes (the checksum guards the line).
fn unhex(s: &str) -> Vec<u8> {
    s.as_bytes()
        .chunks(2)
        .filter_map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect()
}

fn sref(node: String, socket: String, session: String) -> SessionRef {
    SessionRef {
        node_id: node,
        tmux_socket: socket,
        session_name: session,
    }
}

impl From<&Write> for Entry {
    fn from(w: &Write) -> Self {
        Self::V1(match w.clone() {
            Write::Transition(t) => EntryV1::Transition {
                node: t.session.node_id,
                socket: t.session.tmux_socket,
                session: t.session.session_name,
                at_ms: t.at_ms,
                from: t.from,
                to: t.to,
                reason: t.reason,
            },
            Write::CommandIssued(c) => EntryV1::CommandIssued {
                command_id: c.command_id,
                node: c.session.node_id,
                socket: c.session.tmux_socket,
                session: c.session.session_name,
                epoch: c.epoch,
                action: c.action,
                origin: c.origin,
                reason: c.reason,
                issued_at_ms: c.issued_at_ms,
                status: c.status,
                result_message: c.result_message,
                finished_at_ms: c.finished_at_ms,
            },
            Write::CommandFinished {
                command_id,
                status,
                message,
                at_ms,
            } => EntryV1::CommandFinished {
                command_id,
                status,
                message,
                at_ms,
            },
            Write::CommandLate {
                command_id,
                node_id,
                status,
                message,
                at_ms,
            } => EntryV1::CommandLate {
                command_id,
                node: node_id,
                status,
                message,
                at_ms,
            },
            Write::Durable {
                session,
                data,
                at_ms,
            } => EntryV1::Durable {
                node: session.node_id,
                socket: session.tmux_socket,
                session: session.session_name,
                data,
                at_ms,
            },
            Write::Incident(i) => EntryV1::Incident {
                id: i.id,
                kind: i.kind,
                scope: i.scope,
                opened_ms: i.opened_ms,
                closed_ms: i.closed_ms,
                acked_ms: i.acked_ms,
                acked_by: i.acked_by,
                summary: i.summary,
                sessions: i.sessions,
                until_ms: i.until_ms,
            },
            Write::AlarmScheduled(a) => EntryV1::AlarmScheduled {
                id: a.id,
                node: a.session.node_id,
                socket: a.session.tmux_socket,
                session: a.session.session_name,
                note: a.note,
                origin: a.origin,
                created_ms: a.created_ms,
                due_ms: a.due_ms,
                state: a.state,
                closed_ms: a.closed_ms,
                command_id: a.command_id,
                message: a.message,
            },
            Write::AlarmClosed {
                id,
                state,
                at_ms,
                command_id,
                message,
            } => EntryV1::AlarmClosed {
                id,
                state,
                at_ms,
                command_id,
                message,
            },
            Write::Checkpoint(c) => EntryV1::Checkpoint {
                id: c.id,
                node: c.session.node_id,
                socket: c.session.tmux_socket,
                session: c.session.session_name,
                taken_ms: c.taken_ms,
                trigger: c.trigger,
                command_id: c.command_id,
                reason: c.reason,
                data_hex: hex(&c.data),
            },
            Write::Handoff(h) => EntryV1::Handoff {
                id: h.id,
                node: h.session.node_id,
                socket: h.session.tmux_socket,
                session: h.session.session_name,
                reason: h.reason,
                detail: h.detail,
                checkpoint_id: h.checkpoint_id,
                restart_command_id: h.restart_command_id,
                from_pid: h.from_pid,
                from_start: h.from_start,
                to_pid: h.to_pid,
                to_start: h.to_start,
                state: h.state,
                started_ms: h.started_ms,
                resumed_ms: h.resumed_ms,
                ended_ms: h.ended_ms,
                restarts: h.restarts,
                resume_attempts: h.resume_attempts,
                resume_command_id: h.resume_command_id,
                message: h.message,
            },
            Write::RateLimit(r) => EntryV1::RateLimit {
                node: r.session.node_id,
                socket: r.session.tmux_socket,
                session: r.session.session_name,
                scope: r.scope,
                at_ms: r.at_ms,
                until_ms: r.until_ms,
            },
            Write::RateLimitOver { session } => EntryV1::RateLimitOver {
                node: session.node_id,
                socket: session.tmux_socket,
                session: session.session_name,
            },
        })
    }
}

impl From<Entry> for Write {
    fn from(e: Entry) -> Self {
        let Entry::V1(e) = e;
        match e {
            EntryV1::Transition {
                node,
                socket,
                session,
                at_ms,
                from,
                to,
                reason,
            } => Write::Transition(TransitionRow {
                session: sref(node, socket, session),
                at_ms,
                from,
                to,
                reason,
            }),
            EntryV1::CommandIssued {
                command_id,
                node,
                socket,
                session,
                epoch,
                action,
                origin,
                reason,
                issued_at_ms,
                status,
                result_message,
                finished_at_ms,
            } => Write::CommandIssued(CommandRow {
                command_id,
                session: sref(node, socket, session),
                epoch,
                action,
                origin,
                reason,
                issued_at_ms,
                status,
                result_message,
                finished_at_ms,
            }),
            EntryV1::CommandFinished {
                command_id,
                status,
                message,
                at_ms,
            } => Write::CommandFinished {
                command_id,
                status,
                message,
                at_ms,
            },
            EntryV1::CommandLate {
                command_id,
                node,
                status,
                message,
                at_ms,
            } => Write::CommandLate {
                command_id,
                node_id: node,
                status,
                message,
                at_ms,
            },
            EntryV1::Durable {
                node,
                socket,
                session,
                data,
                at_ms,
            } => Write::Durable {
                session: sref(node, socket, session),
                data,
                at_ms,
            },
            EntryV1::Incident {
                id,
                kind,
                scope,
                opened_ms,
                closed_ms,
                acked_ms,
                acked_by,
                summary,
                sessions,
                until_ms,
            } => Write::Incident(IncidentRow {
                id,
                kind,
                scope,
                opened_ms,
                closed_ms,
                acked_ms,
                acked_by,
                summary,
                sessions,
                until_ms,
            }),
            EntryV1::AlarmScheduled {
                id,
                node,
                socket,
                session,
                note,
                origin,
                created_ms,
                due_ms,
                state,
                closed_ms,
                command_id,
                message,
            } => Write::AlarmScheduled(AlarmRow {
                id,
                session: sref(node, socket, session),
                note,
                origin,
                created_ms,
                due_ms,
                state,
                closed_ms,
                command_id,
                message,
            }),
            EntryV1::AlarmClosed {
                id,
                state,
                at_ms,
                command_id,
                message,
            } => Write::AlarmClosed {
                id,
                state,
                at_ms,
                command_id,
                message,
            },
            EntryV1::Checkpoint {
                id,
                node,
                socket,
                session,
                taken_ms,
                trigger,
                command_id,
                reason,
                data_hex,
            } => Write::Checkpoint(CheckpointRow {
                id,
                session: sref(node, socket, session),
                taken_ms,
                trigger,
                command_id,
                reason,
                data: unhex(&data_hex),
            }),
            EntryV1::Handoff {
                id,
                node,
                socket,
                session,
                reason,
                detail,
                checkpoint_id,
                restart_command_id,
                from_pid,
                from_start,
                to_pid,
                to_start,
                state,
                started_ms,
                resumed_ms,
                ended_ms,
                restarts,
                resume_attempts,
                resume_command_id,
                message,
            } => Write::Handoff(HandoffRow {
                id,
                session: sref(node, socket, session),
                reason,
                detail,
                checkpoint_id,
                restart_command_id,
                from_pid,
                from_start,
                to_pid,
                to_start,
                state,
                started_ms,
                resumed_ms,
                ended_ms,
                restarts,
                resume_attempts,
                resume_command_id,
                message,
            }),
            EntryV1::RateLimit {
                node,
                socket,
                session,
                scope,
                at_ms,
                until_ms,
            } => Write::RateLimit(RateLimitRow {
                session: sref(node, socket, session),
                scope,
                at_ms,
                until_ms,
            }),
            EntryV1::RateLimitOver {
                node,
                socket,
                session,
            } => Write::RateLimitOver {
                session: sref(node, socket, session),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transition(i: i64) -> Write {
        Write::Transition(TransitionRow {
            session: sref("n1".into(), "/s".into(), format!("w{i}")),
            at_ms: i,
            from: "idle".into(),
            to: "working".into(),
            reason: "a reason with spaces and \"quotes\"\nand a newline".into(),
        })
    }

    fn at(i: &Write) -> i64 {
        match i {
            Write::Transition(t) => t.at_ms,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn every_kind() -> Vec<Write> {
        let s = sref("n1".into(), "/s".into(), "w".into());
        vec![
            transition(1),
            Write::CommandIssued(CommandRow {
                command_id: "c1".into(),
                session: s.clone(),
                epoch: 3,
                action: "kill".into(),
                origin: "policy".into(),
                reason: "r".into(),
                issued_at_ms: 5,
                status: "COMMAND_STATUS_UNSPECIFIED".into(),
                result_message: String::new(),
                finished_at_ms: 0,
            }),
            Write::CommandFinished {
                command_id: "c1".into(),
                status: "COMMAND_STATUS_OK".into(),
                message: "done".into(),
                at_ms: 6,
            },
            Write::CommandLate {
                command_id: "c1".into(),
                node_id: "n1".into(),
                status: "COMMAND_STATUS_OK".into(),
                message: "late".into(),
                at_ms: 7,
            },
            Write::Durable {
                session: s,
                data: "{\"x\":1}".into(),
                at_ms: 7,
            },
            Write::Incident(IncidentRow {
                id: "i1".into(),
                kind: "store_failing".into(),
                scope: "controller".into(),
                opened_ms: 8,
                closed_ms: 0,
                acked_ms: 0,
                acked_by: String::new(),
                summary: "s".into(),
                sessions: 2,
                until_ms: 0,
            }),
            Write::AlarmScheduled(AlarmRow {
                id: "al-1".into(),
                session: sref("n1".into(), "/s".into(), "w".into()),
                note: "check the CI run".into(),
                origin: "self".into(),
                created_ms: 9,
                due_ms: 10,
                state: "pending".into(),
                closed_ms: 0,
                command_id: String::new(),
                message: String::new(),
            }),
            Write::AlarmClosed {
                id: "al-1".into(),
                state: "delivered".into(),
                at_ms: 11,
                command_id: "c2".into(),
                message: "delivered".into(),
            },
            Write::Checkpoint(CheckpointRow {
                id: "ck-1-00".into(),
                session: sref("n1".into(), "/s".into(), "w".into()),
                taken_ms: 9,
                trigger: "restart".into(),
                command_id: "c2".into(),
                reason: "restart: agent died".into(),
                data: vec![0, 1, 0xfe, 0xff, 10, 13],
            }),
            Write::Handoff(HandoffRow {
                id: "ho-1".into(),
                session: sref("n1".into(), "/s".into(), "w".into()),
                reason: "crash".into(),
                detail: "restart: agent died".into(),
                checkpoint_id: "ck-1-00".into(),
                restart_command_id: "c2".into(),
                from_pid: 7,
                from_start: 8,
                to_pid: 9,
                to_start: 10,
                state: "resumed".into(),
                started_ms: 11,
                resumed_ms: 12,
                ended_ms: 0,
                restarts: 2,
                resume_attempts: 1,
                resume_command_id: "c3".into(),
                message: "sent".into(),
            }),
            Write::RateLimit(RateLimitRow {
                session: sref("n1".into(), "/s".into(), "w".into()),
                scope: "anthropic/team".into(),
                at_ms: 13,
                until_ms: 900_000,
            }),
            Write::RateLimitOver {
                session: sref("n1".into(), "/s".into(), "w".into()),
            },
        ]
    }

    #[test]
    fn every_kind_of_write_comes_back_as_written_and_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.db.journal");
        let (mut j, problems) = Journal::open(&path).expect("open");
        assert!(problems.is_empty());
        let writes = every_kind();
        j.append(&writes[..2]).expect("append");
        j.append(&writes[2..]).expect("append");
        drop(j);
        let (mut j, problems) = Journal::open(&path).expect("reopen");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(j.pending(), writes.len());
        let (first, pos) = j.peek(3).expect("peek");
        assert_eq!(format!("{first:?}"), format!("{:?}", &writes[..3]));
        j.consume(pos).expect("consume");
        assert_eq!(j.pending(), writes.len() - 3);
        let (rest, pos) = j.peek(100).expect("peek");
        assert_eq!(format!("{rest:?}"), format!("{:?}", &writes[3..]));
        j.consume(pos).expect("consume");
        // Everything applied: the file is emptied.
        assert_eq!(j.pending(), 0);
        assert_eq!(std::fs::metadata(&path).expect("meta").len(), 0);
    }

    #[test]
    fn a_torn_last_line_is_cut_off_and_the_rest_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.db.journal");
        let (mut j, _) = Journal::open(&path).expect("open");
        j.append(&[transition(1), transition(2)]).expect("append");
        drop(j);
        // A crash in the middle of the third line's append.
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(b"0123456789abcdef {\"v\":\"1\",\"kind\":\"trans")
            .expect("write");
        drop(f);
        let (mut j, problems) = Journal::open(&path).expect("reopen");
        assert!(
            matches!(&problems[..], [JournalProblem::Torn { bytes: 39, .. }]),
            "{problems:?}"
        );
        assert!(problems[0].to_string().contains("torn"), "{}", problems[0]);
        assert_eq!(j.pending(), 2);
        // Appends after the cut are whole lines again.
        j.append(&[transition(3)]).expect("append");
        let (back, _) = j.peek(10).expect("peek");
        assert_eq!(back.iter().map(at).collect::<Vec<_>>(), vec![1, 2, 3]);
    }

    #[test]
    fn a_damaged_line_is_reported_by_number_and_the_others_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.db.journal");
        let (mut j, _) = Journal::open(&path).expect("open");
        j.append(&[transition(1), transition(2), transition(3)])
            .expect("append");
        drop(j);
        // Flip one byte of the second line's JSON: its checksum no longer matches.
        let mut text = std::fs::read(&path).expect("read");
        let second = text.iter().position(|&b| b == b'\n').expect("line") + 1;
        let at_ms = second
            + text[second..]
                .windows(7)
                .position(|w| w == b"\"at_ms\"")
                .expect("field");
        text[at_ms + 8] = b'9';
        std::fs::write(&path, &text).expect("write");
        let (mut j, problems) = Journal::open(&path).expect("reopen");
        assert_eq!(problems.len(), 1, "{problems:?}");
        let message = problems[0].to_string();
        assert!(
            message.contains("line 2") && message.contains("checksum mismatch"),
            "{message}"
        );
        assert_eq!(j.pending(), 2);
        let (back, pos) = j.peek(10).expect("peek");
        assert_eq!(back.iter().map(at).collect::<Vec<_>>(), vec![1, 3]);
        j.consume(pos).expect("consume");
        assert_eq!(j.pending(), 0);
    }

    #[test]
    fn the_journal_sits_beside_a_sqlite_database_only() {
        assert_eq!(
            path_for("sqlite:///var/lib/argus/argus.db"),
            Some(PathBuf::from("/var/lib/argus/argus.db.journal"))
        );
        assert_eq!(
            path_for("sqlite://argus.db?mode=rwc"),
            Some(PathBuf::from("argus.db.journal"))
        );
        assert_eq!(path_for("memory://"), None);
        assert_eq!(path_for("sqlite::memory:"), None);
    }
}
