//! The agents this node agent watched, kept in `STATE_DIR/agents.json` so that what one node
//! agent process saw outlives it. An agent that started and died around a node agent restart
//! (seen by the old process, gone before the new one looked) would otherwise leave no trace:
//! its exit happened while no node agent watched, and its session may have closed with it.
//! At start the new process reports the exit of every agent in the file that no longer runs
//! (`AgentExited` with its incarnation): the running ones, and those gone within the last
//! [`RECENT_MS`] (whose exit the old process may have seen but not passed on). The controller
//! takes an exit of an agent it already knows to be gone as no news, so reporting one twice is
//! harmless.
//!
//! The file changes only when an agent is first seen or its entry expires, not every round.

use std::collections::BTreeMap;
use std::path::PathBuf;

use argus_proto::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::events::RECENT_MS;
use argus_shared::ids::Incarnation;

/// The file in the state dir.
pub const SEEN_FILE: &str = "agents.json";
/// Most agents remembered (the oldest gone ones are dropped first).
const MAX_SEEN: usize = 4096;

/// One watched agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    pid: u32,
    start_time: u64,
    socket: String,
    session: String,
    /// When it was last seen running (Unix ms).
    seen_ms: i64,
}

/// The agents watched lately, by incarnation.
#[derive(Debug, Default)]
pub struct Seen {
    path: Option<PathBuf>,
    agents: BTreeMap<(u32, u64), Entry>,
    changed: bool,
}

impl Seen {
    /// The memory at `path` (none without a path), and the exits to report now: every agent it
    /// lists that no longer runs.
    pub fn load(path: Option<PathBuf>, now_ms: i64) -> (Self, Vec<pb::Event>) {
        let listed: Vec<Entry> = path
            .as_deref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        let mut seen = Self {
            path,
            ..Self::default()
        };
        let mut exits = Vec::new();
        for e in listed {
            if crate::procs::alive(e.pid, e.start_time) {
                seen.agents.insert(
                    (e.pid, e.start_time),
                    Entry {
                        seen_ms: now_ms,
                        ..e
                    },
                );
            } else {
                // Kept for the rest of its minute: if this process dies too before a controller
                // hears of the exit, the next one reports it again.
                if now_ms - e.seen_ms <= RECENT_MS {
                    seen.agents.insert((e.pid, e.start_time), e.clone());
                }
                exits.push(pb::Event {
                    kind: pb::EventKind::AgentExited as i32,
                    tmux_socket: e.socket.clone(),
                    session_name: e.session.clone(),
                    process: Some(pb::Incarnation {
                        pid: e.pid,
                        start_time: e.start_time,
                    }),
                    at_ms: now_ms,
                    detail: format!(
                        "agent process exited (pid {}) while no node agent watched it",
                        e.pid
                    ),
                    ..Default::default()
                });
            }
        }
        seen.changed = true;
        (seen, exits)
    }

    /// An agent seen running now.
    pub fn saw(&mut self, inc: Incarnation, socket: &str, session: &str, now_ms: i64) {
        let entry = self
            .agents
            .entry((inc.pid, inc.start_time))
            .or_insert_with(|| {
                self.changed = true;
                Entry {
                    pid: inc.pid,
                    start_time: inc.start_time,
                    socket: socket.to_owned(),
                    session: session.to_owned(),
                    seen_ms: now_ms,
                }
            });
        entry.seen_ms = now_ms;
    }

    /// Forgets the agents not seen for [`RECENT_MS`], then writes the file if the set of agents
    /// changed (atomically: a new file renamed over the old one). A failed write is logged
    /// and tried again next time.
    pub fn save(&mut self, now_ms: i64) {
        let before = self.agents.len();
        self.agents.retain(|_, e| now_ms - e.seen_ms <= RECENT_MS);
        if self.agents.len() > MAX_SEEN {
            let mut by_age: Vec<(i64, (u32, u64))> =
                self.agents.iter().map(|(k, e)| (e.seen_ms, *k)).collect();
            by_age.sort();
            for (_, k) in by_age.into_iter().take(self.agents.len() - MAX_SEEN) {
                self.agents.remove(&k);
            }
        }
        self.changed |= self.agents.len() != before;
        let Some(path) = &self.path else {
            return;
        };
        if !self.changed {
            return;
        }
        let list: Vec<&Entry> = self.agents.values().collect();
        let written = serde_json::to_vec(&list)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                let tmp = path.with_extension("json.tmp");
                std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path))
            });
        match written {
            Ok(()) => self.changed = false,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "could not keep the watched agents");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_seen_by_a_dead_node_agent_are_reported_gone_by_the_next() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(SEEN_FILE);
        let me = Incarnation {
            pid: std::process::id(),
            start_time: crate::procs::stat(std::process::id())
                .expect("own stat")
                .start_time,
        };
        let gone = Incarnation {
            pid: me.pid,
            start_time: me.start_time + 1,
        };
        let now = 1_000_000;
        let (mut seen, exits) = Seen::load(Some(path.clone()), now);
        assert!(exits.is_empty());
        seen.saw(me, "/s", "alive", now);
        seen.saw(gone, "/s", "dead", now);
        seen.save(now);
        // The next process: this test's process still runs, the other incarnation does not.
        let (mut next, exits) = Seen::load(Some(path.clone()), now + 5_000);
        assert_eq!(exits.len(), 1, "{exits:?}");
        assert_eq!(exits[0].session_name, "dead");
        assert_eq!(
            exits[0].process,
            Some(pb::Incarnation {
                pid: gone.pid,
                start_time: gone.start_time
            })
        );
        // That process dies too before a controller heard: the next one reports it again. The
        // running agent is reported by nobody.
        next.save(now + 5_000);
        let (mut third, exits) = Seen::load(Some(path.clone()), now + 6_000);
        assert_eq!(exits.len(), 1, "{exits:?}");
        // A gone agent's entry lasts a minute after it was last seen running, then goes.
        third.save(now + RECENT_MS + 1);
        let (_, exits) = Seen::load(Some(path), now + RECENT_MS + 2);
        assert!(exits.is_empty(), "forgotten: {exits:?}");
    }
}
