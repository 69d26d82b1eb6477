//! Uncommitted work, the node agent's half: for every session whose working directory is in a
//! git work tree, how old its uncommitted work is. `git status` runs when a work tree is first
//! seen and then every [`EVERY`]; when the answer changes (dirty since T, or clean) each session
//! in that work tree gets an `EVENT_KIND_WORK_TREE` event. The controller decides about
//! reminders. The age is the oldest modification time among the changed files (at most
//! [`MAX_FILES`] looked at; a deleted file counts as changed now).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use argus_proto::v1 as pb;
use argus_shared::time::now_ms;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::events::EventBuffer;
use crate::probe::{SessionKey, Snapshot};

/// How often a known work tree is looked at again.
pub const EVERY: Duration = Duration::from_secs(30);
/// Changed files whose modification time is read, per work tree.
const MAX_FILES: usize = 256;
const GIT_TIMEOUT: Duration = Duration::from_secs(5);

/// One work tree: its sessions, and what was last reported.
#[derive(Default)]
struct Tree {
    sessions: BTreeSet<SessionKey>,
    /// Dirty since (Unix ms), 0 when clean; `None` before the first look.
    reported: Option<i64>,
}

/// Watches the sessions' work trees until `shutdown`.
pub async fn run(
    mut snapshot: watch::Receiver<Arc<Snapshot>>,
    events: Arc<EventBuffer>,
    shutdown: CancellationToken,
) {
    let mut trees: HashMap<PathBuf, Tree> = HashMap::new();
    let mut roots: HashMap<String, Option<PathBuf>> = HashMap::new();
    let mut every = tokio::time::interval(EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let all = tokio::select! {
            () = shutdown.cancelled() => return,
            r = snapshot.changed() => {
                if r.is_err() {
                    return;
                }
                false
            }
            _ = every.tick() => true,
        };
        let snap = snapshot.borrow_and_update().clone();
        let mut seen: HashMap<PathBuf, BTreeSet<SessionKey>> = HashMap::new();
        for (key, s) in &snap.sessions {
            if s.cwd.is_empty() {
                continue;
            }
            if !roots.contains_key(&s.cwd) {
                if roots.len() > 4096 {
                    roots.clear();
                }
                let root = toplevel(Path::new(&s.cwd)).await;
                roots.insert(s.cwd.clone(), root);
            }
            if let Some(Some(root)) = roots.get(&s.cwd) {
                seen.entry(root.clone()).or_default().insert(key.clone());
            }
        }
        trees.retain(|root, _| seen.contains_key(root));
        for (root, sessions) in seen {
            let tree = trees.entry(root.clone()).or_default();
            let fresh = tree.reported.is_none() || tree.sessions != sessions;
            tree.sessions = sessions;
            if !(all || fresh) {
                continue;
            }
            let Some(since) = dirty_since(&root).await else {
                continue;
            };
            if tree.reported == Some(since) && !fresh {
                continue;
            }
            tree.reported = Some(since);
            let detail = if since == 0 {
                format!("work tree {} is clean", root.display())
            } else {
                format!(
                    "work tree {} has uncommitted work since {} s ago",
                    root.display(),
                    (now_ms() - since).max(0) / 1000
                )
            };
            for (socket, name) in &tree.sessions {
                events.push(pb::Event {
                    kind: pb::EventKind::WorkTree as i32,
                    tmux_socket: socket.clone(),
                    session_name: name.clone(),
                    at_ms: now_ms(),
                    detail: detail.clone(),
                    dirty_since_ms: since,
                    ..Default::default()
                });
            }
        }
    }
}

/// Runs `git -C DIR <args>` without taking optional locks (the index is left as it is), in its
/// own process group, which is killed with everything it started when the run times out or is
/// dropped (a hung git, or a git wrapper, never outlives the scan).
async fn git(dir: &Path, args: &[&str]) -> Option<Vec<u8>> {
    let child = tokio::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_OPTIONAL_LOCKS", "0")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .process_group(0)
        .spawn()
        .ok()?;
    let mut group = crate::checkpoint::GroupKill(child.id());
    let out = tokio::time::timeout(GIT_TIMEOUT, child.wait_with_output()).await;
    // Exited by itself: its pid may be reused from now on, so the group is not signalled.
    let out = out.ok()?.ok()?;
    group.0 = None;
    out.status.success().then_some(out.stdout)
}

async fn toplevel(cwd: &Path) -> Option<PathBuf> {
    let out = git(cwd, &["rev-parse", "--show-toplevel"]).await?;
    let root = PathBuf::from(String::from_utf8(out).ok()?.trim_end_matches('\n'));
    root.is_absolute().then_some(root)
}

/// Since when the work tree at `root` has had uncommitted work (Unix ms), 0 when clean; `None`
/// when git did not answer.
async fn dirty_since(root: &Path) -> Option<i64> {
    let out = git(
        root,
        &["status", "--porcelain=v1", "-z", "--untracked-files=normal"],
    )
    .await?;
    let paths: Vec<PathBuf> = out
        .split(|b| *b == 0)
        .filter(|e| e.len() > 3)
        .map(|e| root.join(String::from_utf8_lossy(&e[3..]).as_ref()))
        .take(MAX_FILES)
        .collect();
    if paths.is_empty() {
        return Some(0);
    }
    let now = now_ms();
    let oldest = tokio::task::spawn_blocking(move || {
        paths
            .iter()
            .map(|p| {
                std::fs::symlink_metadata(p)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or(now, |d| d.as_millis() as i64)
            })
            .min()
            .unwrap_or(now)
    })
    .await
    .unwrap_or(now);
    Some(oldest.max(1))
}
