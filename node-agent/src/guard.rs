//! Guarded files: files an agent must not change (a rules file with an `IRON_LAW` line), from
//! the policy's `[[guards]]` as the controller sends them (`Guards`, after every Welcome and on
//! every policy reload). For every session the file is looked for in its work tree (the git top
//! level of its working directory, else the directory itself); its directory is watched with
//! inotify, so a change is seen at once, not by polling.
//!
//! The first time a session's guarded file is seen, its content is taken as the good copy when
//! it holds the marker; otherwise git HEAD's version is, if that holds the marker (and the file
//! is restored to it at once); otherwise the file is not guarded (logged). When the file later
//! differs from the good copy (changed, marker gone, deleted, replaced) it is written back
//! (atomically: a temporary file renamed over it), unless it now equals HEAD's version with the
//! marker (a `git checkout` or pull is accepted as the new good copy). The replaced content is
//! never thrown away: it is kept under `STATE_DIR/guards/`. Each restore is reported to the
//! controller (`EVENT_KIND_GUARD_RESTORED`), which records it and warns the agent.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use argus_proto::v1 as pb;
use argus_shared::time::now_ms;
use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::events::EventBuffer;
use crate::probe::{SessionKey, Snapshot};

/// A git call that takes longer than this is given up (the directory is then no work tree).
const GIT_TIMEOUT: Duration = Duration::from_secs(3);

/// One guarded file on this host.
struct Guarded {
    /// Path relative to the work tree (as in the policy).
    rel: String,
    root: PathBuf,
    marker: String,
    /// The good copy.
    good: Vec<u8>,
    /// Where the good copy came from, for people.
    source: &'static str,
    /// The sessions whose work tree holds it.
    sessions: BTreeSet<SessionKey>,
}

/// Watches the guarded files of every session until `shutdown`.
pub async fn run(
    mut config: watch::Receiver<Arc<Vec<pb::Guard>>>,
    mut snapshot: watch::Receiver<Arc<Snapshot>>,
    events: Arc<EventBuffer>,
    state_dir: PathBuf,
    shutdown: CancellationToken,
) {
    let (tx, mut changed) = mpsc::channel::<PathBuf>(1024);
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(e) = res {
            for p in e.paths {
                // Full: a check of that file is already queued or one will run soon.
                let _ = tx.try_send(p);
            }
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "inotify unavailable: guarded files are not watched");
            return;
        }
    };
    let mut g = Guards {
        files: HashMap::new(),
        dirs: HashSet::new(),
        roots: HashMap::new(),
        events,
        keep_dir: state_dir.join("guards"),
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            r = config.changed() => {
                if r.is_err() {
                    return;
                }
            }
            r = snapshot.changed() => {
                if r.is_err() {
                    return;
                }
            }
            Some(path) = changed.recv() => {
                g.check(&path).await;
                continue;
            }
        }
        let guards = config.borrow_and_update().clone();
        let snap = snapshot.borrow_and_update().clone();
        g.reconcile(&guards, &snap, &mut watcher).await;
    }
}

struct Guards {
    files: HashMap<PathBuf, Guarded>,
    dirs: HashSet<PathBuf>,
    /// Work tree of each working directory seen.
    roots: HashMap<String, PathBuf>,
    events: Arc<EventBuffer>,
    keep_dir: PathBuf,
}

impl Guards {
    /// Brings the watched set in line with the guards and the sessions now on the host.
    async fn reconcile(
        &mut self,
        guards: &[pb::Guard],
        snap: &Snapshot,
        watcher: &mut impl Watcher,
    ) {
        let mut want: HashMap<PathBuf, (String, PathBuf, String, BTreeSet<SessionKey>)> =
            HashMap::new();
        if !guards.is_empty() {
            for (key, s) in &snap.sessions {
                if s.cwd.is_empty() {
                    continue;
                }
                let group = s
                    .labels
                    .get(argus_shared::labels::GROUP)
                    .map(String::as_str);
                let own: Vec<&pb::Guard> = guards
                    .iter()
                    .filter(|g| group.is_some_and(|n| !n.is_empty() && g.group == n))
                    .collect();
                let set = if own.is_empty() {
                    guards.iter().filter(|g| g.group.is_empty()).collect()
                } else {
                    own
                };
                if set.is_empty() {
                    continue;
                }
                let root = self.root(&s.cwd).await;
                for g in set {
                    let file = root.join(&g.path);
                    want.entry(file)
                        .or_insert_with(|| {
                            (
                                g.path.clone(),
                                root.clone(),
                                g.marker.clone(),
                                BTreeSet::new(),
                            )
                        })
                        .3
                        .insert(key.clone());
                }
            }
        }
        self.files.retain(|f, _| want.contains_key(f));
        for (file, (rel, root, marker, sessions)) in want {
            if let Some(known) = self.files.get_mut(&file) {
                known.sessions = sessions;
                continue;
            }
            let Some(guarded) = first_sight(&file, rel, root, marker, sessions).await else {
                continue;
            };
            if let Some(dir) = file.parent()
                && self.dirs.insert(dir.to_owned())
                && let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive)
            {
                tracing::warn!(dir = %dir.display(), error = %e, "guarded file's directory not watched");
                self.dirs.remove(dir);
            }
            tracing::info!(file = %file.display(), source = guarded.source, "guarding file");
            self.files.insert(file.clone(), guarded);
            // It may already lack its marker (the good copy is HEAD's then).
            self.check(&file).await;
        }
        let used: HashSet<PathBuf> = self
            .files
            .keys()
            .filter_map(|f| f.parent().map(Path::to_owned))
            .collect();
        for dir in self.dirs.iter().filter(|d| !used.contains(*d)) {
            let _ = watcher.unwatch(dir);
        }
        self.dirs.retain(|d| used.contains(d));
    }

    /// The work tree of `cwd`: its git top level, else `cwd`.
    async fn root(&mut self, cwd: &str) -> PathBuf {
        if let Some(r) = self.roots.get(cwd) {
            return r.clone();
        }
        let root = git(Path::new(cwd), &["rev-parse", "--show-toplevel"])
            .await
            .and_then(|out| String::from_utf8(out).ok())
            .map(|s| PathBuf::from(s.trim_end_matches('\n')))
            .filter(|p| p.is_absolute())
            .unwrap_or_else(|| PathBuf::from(cwd));
        if self.roots.len() > 4096 {
            self.roots.clear();
        }
        self.roots.insert(cwd.to_owned(), root.clone());
        root
    }

    /// Looks at `path` after a change: restores it when it is a guarded file that no longer
    /// is its good copy.
    async fn check(&mut self, path: &Path) {
        let Some(g) = self.files.get_mut(path) else {
            return;
        };
        if tokio::fs::read(path).await.ok().as_deref() == Some(&g.good[..]) {
            return;
        }
        // A writer truncates before it writes: judge the file only once it holds still, so a
        // half-written file is neither restored over nor kept as the agent's version.
        let now = settled(path).await;
        if now.as_deref() == Some(&g.good[..]) {
            return;
        }
        if let Some(now) = &now
            && contains(now, &g.marker)
            && head(&g.root, &g.rel).await.as_deref() == Some(&now[..])
        {
            // Back to HEAD's version (a checkout, a pull): the new good copy.
            g.good = now.clone();
            g.source = "git HEAD";
            return;
        }
        let what = match &now {
            None => "was deleted".to_owned(),
            Some(n) if !contains(n, &g.marker) => format!("lost its marker {:?}", g.marker),
            Some(_) => "was changed".to_owned(),
        };
        let kept = match &now {
            Some(n) => keep(&self.keep_dir, &g.rel, n).await,
            None => None,
        };
        if let Err(e) = write_atomically(path, &g.good).await {
            tracing::error!(file = %path.display(), error = %e, "guarded file not restored");
            return;
        }
        let detail = format!(
            "guarded file {} {what}: restored from {}{}",
            g.rel,
            g.source,
            kept.map(|k| format!("; the changed copy is kept in {}", k.display()))
                .unwrap_or_default()
        );
        tracing::warn!(file = %path.display(), %detail, "guarded file restored");
        for (socket, name) in &g.sessions {
            self.events.push(pb::Event {
                kind: pb::EventKind::GuardRestored as i32,
                tmux_socket: socket.clone(),
                session_name: name.clone(),
                process: None,
                at_ms: now_ms(),
                detail: detail.clone(),
                path: g.rel.clone(),
                ..Default::default()
            });
        }
    }
}

/// The good copy of a file seen for the first time, or `None` when neither it nor HEAD's
/// version holds the marker (nothing good to restore).
async fn first_sight(
    file: &Path,
    rel: String,
    root: PathBuf,
    marker: String,
    sessions: BTreeSet<SessionKey>,
) -> Option<Guarded> {
    let (good, source) = match tokio::fs::read(file).await {
        Ok(c) if contains(&c, &marker) => (c, "the copy taken when the session was first seen"),
        _ => match head(&root, &rel).await {
            Some(c) if contains(&c, &marker) => (c, "git HEAD"),
            _ => {
                tracing::warn!(file = %file.display(), %marker, "guarded file not guarded: neither it nor git HEAD holds the marker");
                return None;
            }
        },
    };
    Some(Guarded {
        rel,
        root,
        marker,
        good,
        source,
        sessions,
    })
}

fn contains(haystack: &[u8], marker: &str) -> bool {
    let m = marker.as_bytes();
    !m.is_empty() && haystack.windows(m.len()).any(|w| w == m)
}

/// `git show HEAD:REL` in `root`.
async fn head(root: &Path, rel: &str) -> Option<Vec<u8>> {
    git(root, &["show", &format!("HEAD:{rel}")]).await
}

/// Runs git in `dir`; its stdout when it succeeded within [`GIT_TIMEOUT`].
async fn git(dir: &Path, args: &[&str]) -> Option<Vec<u8>> {
    let run = tokio::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(GIT_TIMEOUT, run).await {
        Ok(Ok(out)) if out.status.success() => Some(out.stdout),
        _ => None,
    }
}

/// How long a changed file must hold still before it is judged, and the most time spent waiting.
const SETTLE: Duration = Duration::from_millis(25);
const SETTLE_MAX: Duration = Duration::from_millis(500);

/// The content of `path` once two reads `SETTLE` apart agree (or after `SETTLE_MAX`, the last
/// read); `None` when it does not exist.
async fn settled(path: &Path) -> Option<Vec<u8>> {
    let started = tokio::time::Instant::now();
    let mut last = tokio::fs::read(path).await.ok();
    loop {
        tokio::time::sleep(SETTLE).await;
        let now = tokio::fs::read(path).await.ok();
        if now == last || started.elapsed() >= SETTLE_MAX {
            return now;
        }
        last = now;
    }
}

/// Writes `data` to a temporary file beside `path` and renames it over `path`.
async fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.argus-restore"));
    tokio::fs::write(&tmp, data).await?;
    tokio::fs::rename(&tmp, path).await
}

/// Keeps a replaced version under `dir`; its path, or `None` when it could not be written.
async fn keep(dir: &Path, rel: &str, data: &[u8]) -> Option<PathBuf> {
    tokio::fs::create_dir_all(dir).await.ok()?;
    let name: String = rel
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let path = dir.join(format!("{}-{name}", now_ms()));
    tokio::fs::write(&path, data).await.ok()?;
    Some(path)
}
