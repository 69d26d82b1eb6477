//! Checkpoints on the controller: a node agent sends the checkpoint it took before a kill or a
//! restart (or on demand) in the command's result; it is bounded again here (a node agent is not
//! trusted to), stored, announced (`checkpoint` event), and a successful restart becomes a
//! handoff (see [`crate::handoff`]).

use std::sync::Arc;

use argus_proto::v1 as pb;
use argus_shared::time::UnixMs;
use prost::Message;

use crate::dispatch::Finished;
use crate::store::{CheckpointRow, SessionRef, Write};
use crate::supervisor::Supervisor;

/// Most screen lines stored per checkpoint.
const MAX_SCREEN_LINES: usize = 200;
/// Longest screen line, path or other text field stored, in bytes.
const MAX_LINE_BYTES: usize = 1024;
/// Most files listed per checkpoint.
const MAX_FILES: usize = 1000;
/// Most labels and problems kept.
const MAX_LABELS: usize = 64;
const MAX_PROBLEMS: usize = 32;

impl Supervisor {
    /// A command's result arrived from `node_id`: recorded and handed to whoever waits (see
    /// [`crate::dispatch::Dispatcher::complete`]); its checkpoint stored; a restart done becomes a
    /// handoff, a kill ends the session's open handoff.
    pub async fn command_result(
        self: &Arc<Self>,
        node_id: &str,
        result: pb::CommandResult,
        now: UnixMs,
    ) {
        let checkpoint = result.checkpoint.clone();
        let ok = result.status == pb::CommandStatus::Ok as i32;
        // A restart the node agent did not carry out, for sure: the policy may send it again.
        let not_done = matches!(
            pb::CommandStatus::try_from(result.status),
            Ok(pb::CommandStatus::NoSuchSession
                | pb::CommandStatus::Failed
                | pb::CommandStatus::Expired)
        );
        let command_id = result.command_id.clone();
        let mut finished = self.dispatch.complete(node_id, result).await;
        if finished.is_none()
            && ok
            && let Some(c) = &checkpoint
        {
            // A late answer (the checkpoint and the kill or restart outlasted the command's
            // deadline): what the command was is in the audit.
            finished = self.audited(node_id, &command_id, c).await;
        }
        let checkpoint = checkpoint
            .and_then(|c| self.store_checkpoint(node_id, &command_id, finished.as_ref(), c, now));
        let Some(done) = finished else {
            return;
        };
        match done.action.as_str() {
            "restart" if ok => self.handoff_restarted(&done, checkpoint, now),
            "restart" if not_done && done.origin == "policy" => {
                let input = argus_decide::detect::Input::RestartNotDone {
                    sent_ms: done.issued_ms,
                };
                self.apply(&done.session, input, now).await;
            }
            "kill" if ok => self.handoff_ended_by_kill(&done.session, now),
            _ => {}
        }
    }

    /// Command `id` of the session `c` was taken of, as the audit recorded it; `None` when the
    /// audit already has its OK answer: this one is a repeat (a node agent sends again what a
    /// broken stream may have lost), and its restart or kill was handled the first time.
    async fn audited(&self, node_id: &str, id: &str, c: &pb::Checkpoint) -> Option<Finished> {
        argus_shared::ids::SessionName::new(&c.session_name).ok()?;
        let session = SessionRef {
            node_id: node_id.to_owned(),
            tmux_socket: c.tmux_socket.clone(),
            session_name: c.session_name.clone(),
        };
        let history = self.store.history(&session, 200).await.ok()?;
        let row = history.commands.into_iter().find(|k| k.command_id == id)?;
        if row.status == pb::CommandStatus::Ok.as_str_name() {
            return None;
        }
        Some(Finished {
            command_id: row.command_id,
            session: row.session,
            action: row.action,
            origin: row.origin,
            reason: row.reason,
            issued_ms: row.issued_at_ms,
        })
    }

    /// Bounds, stores and announces a checkpoint; returns it as stored (`None` when it is
    /// unusable: no id).
    fn store_checkpoint(
        &self,
        node_id: &str,
        command_id: &str,
        done: Option<&Finished>,
        mut c: pb::Checkpoint,
        now: UnixMs,
    ) -> Option<pb::Checkpoint> {
        bound(&mut c);
        if c.id.is_empty()
            || !c
                .id
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-')
        {
            tracing::warn!(node = %node_id, id = %c.id, "checkpoint without a usable id ignored");
            return None;
        }
        // The command's target is authoritative; a late result names its session itself.
        if done.is_none() && argus_shared::ids::SessionName::new(&c.session_name).is_err() {
            tracing::warn!(node = %node_id, id = %c.id, "checkpoint of an invalid session name ignored");
            return None;
        }
        let session = done.map_or_else(
            || SessionRef {
                node_id: node_id.to_owned(),
                tmux_socket: c.tmux_socket.clone(),
                session_name: c.session_name.clone(),
            },
            |d| d.session.clone(),
        );
        if c.taken_at_ms <= 0 {
            c.taken_at_ms = now;
        }
        let summary = argus_node_agent::checkpoint::summary(&c);
        self.recorder.record(Write::Checkpoint(CheckpointRow {
            id: c.id.clone(),
            session: session.clone(),
            taken_ms: c.taken_at_ms,
            trigger: c.trigger.clone(),
            command_id: command_id.to_owned(),
            reason: done.map(|d| d.reason.clone()).unwrap_or_default(),
            data: c.encode_to_vec(),
        }));
        self.events.publish(
            &session.node_id,
            &session.session_name,
            "checkpoint",
            format!("before {}: {summary}", c.trigger),
            None,
        );
        Some(c)
    }
}

/// The stored form back as the API's record; `whole` keeps the screen lines and the file list.
pub fn record_pb(row: CheckpointRow, whole: bool) -> pb::CheckpointRecord {
    let mut c = pb::Checkpoint::decode(row.data.as_slice()).unwrap_or_else(|e| {
        tracing::warn!(id = %row.id, error = %e, "stored checkpoint does not decode");
        pb::Checkpoint {
            problems: vec![format!("the stored checkpoint does not decode: {e}")],
            ..Default::default()
        }
    });
    c.id = row.id;
    c.tmux_socket = row.session.tmux_socket;
    c.session_name = row.session.session_name;
    c.taken_at_ms = row.taken_ms;
    c.trigger = row.trigger;
    if !whole {
        c.screen.clear();
        if let Some(g) = &mut c.git {
            g.files.clear();
        }
    }
    pb::CheckpointRecord {
        node_id: row.session.node_id,
        checkpoint: Some(c),
        command_id: row.command_id,
        reason: row.reason,
    }
}

/// A stored checkpoint decoded, if it decodes.
pub fn decode(row: &CheckpointRow) -> Option<pb::Checkpoint> {
    pb::Checkpoint::decode(row.data.as_slice()).ok()
}

/// Cuts what a node agent sent to the controller's bounds.
pub fn bound(c: &mut pb::Checkpoint) {
    let cut = |s: &mut String| {
        if s.len() > MAX_LINE_BYTES {
            let mut end = MAX_LINE_BYTES;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s.truncate(end);
        }
    };
    for s in [
        &mut c.id,
        &mut c.tmux_socket,
        &mut c.session_name,
        &mut c.trigger,
        &mut c.cwd,
        &mut c.agent_name,
        &mut c.profile,
    ] {
        cut(s);
    }
    c.id.truncate(c.id.len().min(64));
    let skip = c.screen.len().saturating_sub(MAX_SCREEN_LINES);
    c.screen.drain(..skip);
    c.screen.iter_mut().for_each(cut);
    c.problems.truncate(MAX_PROBLEMS);
    c.problems.iter_mut().for_each(cut);
    if c.labels.len() > MAX_LABELS {
        let keep: Vec<String> = c.labels.keys().take(MAX_LABELS).cloned().collect();
        c.labels.retain(|k, _| keep.contains(k));
    }
    for (_, v) in c.labels.iter_mut() {
        cut(v);
    }
    if let Some(g) = &mut c.git {
        for s in [
            &mut g.top_level,
            &mut g.branch,
            &mut g.head,
            &mut g.head_subject,
            &mut g.saved_commit,
            &mut g.saved_ref,
        ] {
            cut(s);
        }
        g.files.truncate(MAX_FILES);
        for f in &mut g.files {
            cut(&mut f.path);
            f.status.truncate(f.status.len().min(4));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_node_sends_is_bounded() {
        let mut c = pb::Checkpoint {
            id: "ck-1-ab".into(),
            screen: (0..500)
                .map(|i| format!("{i} {}", "é".repeat(700)))
                .collect(),
            labels: (0..100).map(|i| (format!("k{i:03}"), "v".into())).collect(),
            git: Some(pb::GitState {
                files: (0..5000)
                    .map(|i| pb::GitFile {
                        path: format!("f{i}"),
                        status: "MMMMMMMM".into(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        };
        bound(&mut c);
        assert_eq!(c.screen.len(), MAX_SCREEN_LINES);
        assert!(c.screen[0].starts_with("300 "), "the last lines are kept");
        assert!(c.screen.iter().all(|l| l.len() <= MAX_LINE_BYTES));
        assert_eq!(c.labels.len(), MAX_LABELS);
        let g = c.git.expect("git");
        assert_eq!(g.files.len(), MAX_FILES);
        assert_eq!(g.files[0].status, "MMMM");
    }

    #[test]
    fn lists_leave_out_screens_and_files() {
        let c = pb::Checkpoint {
            id: "ck-1".into(),
            screen: vec!["a".into()],
            git: Some(pb::GitState {
                files: vec![pb::GitFile::default()],
                files_total: 1,
                ..Default::default()
            }),
            ..Default::default()
        };
        let row = CheckpointRow {
            id: "ck-1".into(),
            session: SessionRef {
                node_id: "n1".into(),
                tmux_socket: "/s".into(),
                session_name: "w".into(),
            },
            taken_ms: 5,
            trigger: "kill".into(),
            command_id: "c".into(),
            reason: "r".into(),
            data: c.encode_to_vec(),
        };
        let listed = record_pb(row.clone(), false)
            .checkpoint
            .expect("checkpoint");
        assert!(listed.screen.is_empty());
        assert_eq!(
            listed.git.as_ref().map(|g| (g.files.len(), g.files_total)),
            Some((0, 1))
        );
        let whole = record_pb(row, true);
        assert_eq!(whole.node_id, "n1");
        let whole = whole.checkpoint.expect("checkpoint");
        assert_eq!((whole.screen.len(), whole.session_name.as_str()), (1, "w"));
    }
}
