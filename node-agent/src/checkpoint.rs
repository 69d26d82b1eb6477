//! Checkpoints: what a session was doing, taken right before the node agent kills or restarts it
//! (and on demand), so that an agent killed mid-edit loses nothing that was on disk.
//!
//! A checkpoint holds the last screen lines, the working directory, the agent's name, profile and
//! labels (`@argus-task` too), and, when the working directory is in a git work tree: the branch,
//! the HEAD commit, the files that differ from HEAD or are untracked with a diffstat, and the
//! uncommitted work itself, saved as a commit under `refs/argus/checkpoints/<session>/<id>`
//! without touching the work tree or the index:
//!
//! 1. `git status --porcelain=v2 -z` (with `GIT_OPTIONAL_LOCKS=0`, so that it does not refresh the
//!    index) lists the changed and untracked files;
//! 2. the index is copied to a temporary file, and `GIT_INDEX_FILE=<copy> git update-index --add
//!    --remove -z --stdin` takes exactly those files into the copy (untracked ones too, unlike
//!    `git stash create`; untracked files over `max_untracked_bytes` are left out and named);
//! 3. `write-tree` on the copy, `commit-tree` with HEAD as parent, `update-ref` to keep it, and
//!    `diff-tree --numstat` of that commit for the diffstat.
//!
//! Bounded in time: everything shares one deadline (`timeout`, 5 s by default). Every git runs in
//! its own process group, which is killed when the deadline passes, so a hung or slow git (or a
//! hook, or a wrapper script's children) never delays the kill by more than the limit; what was not
//! taken by then is named in the checkpoint's `problems`. Bounded in size: screen lines, line
//! length, the file list and the output read from git all have limits.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use argus_proto::v1 as pb;
use argus_shared::time::now_ms;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::tmux::Tmux;

/// Longest screen line kept, in bytes.
const MAX_LINE_BYTES: usize = 512;
/// Most screen lines a checkpoint may keep.
pub const MAX_SCREEN_LINES: u32 = 200;
/// Most bytes read from one git's standard output (a status of a very large work tree is cut, and
/// its git then blocks and is killed at the deadline).
const MAX_GIT_OUTPUT: u64 = 32 << 20;
/// Most bytes of a git's standard error kept for a message.
const MAX_GIT_STDERR: u64 = 4096;
/// How long the pruning of old checkpoint refs may take (after the kill; it delays nothing).
const PRUNE_TIMEOUT: Duration = Duration::from_secs(10);

/// How checkpoints are taken: the node agent's `[checkpoint]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Take a checkpoint before every kill and restart (a `checkpoint` command takes one in any
    /// case).
    pub enabled: bool,
    /// The most a checkpoint may take: a slow or missing git never delays a kill or a restart by
    /// more than this.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Screen lines kept (at most 200).
    pub screen_lines: u32,
    /// Files listed (the count of all of them is kept too).
    pub max_files: usize,
    /// Untracked files larger than this are not saved (they are listed, marked skipped).
    pub max_untracked_bytes: u64,
    /// Untracked files saved at most; the rest are listed as skipped.
    pub max_untracked_files: usize,
    /// The git program (a name looked up in PATH, or a path).
    pub git: PathBuf,
    /// Checkpoint refs kept per session in a repository; older ones are deleted.
    pub keep: usize,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            timeout: Duration::from_secs(5),
            screen_lines: 40,
            max_files: 200,
            max_untracked_bytes: 4 << 20,
            max_untracked_files: 2000,
            git: PathBuf::from("git"),
            keep: 20,
        }
    }
}

impl CheckpointConfig {
    /// Checks the values; the error names the key (under `checkpoint.`).
    pub fn validate(&self) -> Result<(), crate::config::ConfigError> {
        use crate::config::ConfigError;
        crate::config::positive("checkpoint.timeout", self.timeout)?;
        if self.timeout > Duration::from_secs(60) {
            return Err(ConfigError::invalid(
                "checkpoint.timeout",
                "must be at most 60s: it delays every kill and restart by up to this much",
            ));
        }
        if self.screen_lines > MAX_SCREEN_LINES {
            return Err(ConfigError::invalid(
                "checkpoint.screen_lines",
                format!("must be at most {MAX_SCREEN_LINES}"),
            ));
        }
        if self.git.as_os_str().is_empty() {
            return Err(ConfigError::invalid(
                "checkpoint.git",
                "must name the git program",
            ));
        }
        if self.keep == 0 {
            return Err(ConfigError::invalid(
                "checkpoint.keep",
                "must be at least 1: the newest checkpoint ref must stay",
            ));
        }
        Ok(())
    }
}

/// What a checkpoint is taken of.
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub tmux_socket: String,
    pub session_name: String,
    /// The session's tmux id (`$3`), to read labels the probe does not read (`@argus-task`);
    /// empty for a session that is gone.
    pub session_id: String,
    /// The pane to read the screen of; empty for a session that is gone.
    pub pane_id: String,
    pub cwd: String,
    pub agent_name: String,
    pub profile: String,
    pub labels: BTreeMap<String, String>,
    pub agent: Option<pb::Incarnation>,
    /// "kill", "restart" or "manual".
    pub trigger: &'static str,
}

impl Target {
    /// The target of an observed session.
    pub fn observed(s: &pb::SessionObservation, trigger: &'static str) -> Self {
        Self {
            tmux_socket: s.tmux_socket.clone(),
            session_name: s.session_name.clone(),
            session_id: s.session_id.clone(),
            pane_id: s.pane_id.clone(),
            cwd: s.cwd.clone(),
            agent_name: s.agent_name.clone(),
            profile: s.profile.clone(),
            labels: s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            agent: s.agent,
            trigger,
        }
    }
}

/// A new checkpoint id: `ck-<unix ms>-<8 hex digits>`, sortable by time.
pub fn new_id(now: i64) -> String {
    format!("ck-{now}-{:08x}", rand::random::<u32>())
}

/// One path component of a ref made from a session name: anything but `[A-Za-z0-9_-]` becomes
/// `_` (dots too, so that no component starts with one or ends in `.lock`).
pub fn ref_component(name: &str) -> String {
    let s: String = name
        .chars()
        .take(100)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() { "_".to_owned() } else { s }
}

/// The ref that keeps checkpoint `id` of session `name`.
pub fn ref_name(session: &str, id: &str) -> String {
    format!("refs/argus/checkpoints/{}/{id}", ref_component(session))
}

/// Takes a checkpoint of `t` within `cfg.timeout`; never fails: what could not be taken is named
/// in `problems`. `tmux` is the server the session lives on (for its screen).
pub async fn take(tmux: Option<&Tmux>, t: &Target, cfg: &CheckpointConfig) -> pb::Checkpoint {
    let started = Instant::now();
    let deadline = started + cfg.timeout;
    let now = now_ms();
    let id = new_id(now);
    let mut labels = t.labels.clone();
    let mut problems = Vec::new();
    let mut screen = Vec::new();
    if let Some(tmux) = tmux {
        read_tmux(
            tmux,
            t,
            cfg,
            deadline,
            &mut screen,
            &mut labels,
            &mut problems,
        )
        .await;
    }
    let git = if t.cwd.is_empty() {
        None
    } else {
        let mut state = pb::GitState::default();
        let git = Git::new(&cfg.git, Path::new(&t.cwd), deadline);
        match git_state(&git, &mut state, &mut problems, t, &id, cfg).await {
            Ok(true) => Some(state),
            Ok(false) => None,
            Err(e) => {
                problems.push(e.to_string());
                // What was found before the failure is kept (a branch and HEAD are worth having).
                (!state.top_level.is_empty()).then_some(state)
            }
        }
    };
    let took = started.elapsed();
    pb::Checkpoint {
        id,
        tmux_socket: t.tmux_socket.clone(),
        session_name: t.session_name.clone(),
        taken_at_ms: now,
        took_ms: took.as_millis().min(u128::from(u32::MAX)) as u32,
        trigger: t.trigger.to_owned(),
        cwd: t.cwd.clone(),
        agent_name: t.agent_name.clone(),
        profile: t.profile.clone(),
        labels: labels.into_iter().collect(),
        agent: t.agent,
        screen,
        git,
        problems,
    }
}

/// One line for people: the checkpoint's id and what it saved.
pub fn summary(c: &pb::Checkpoint) -> String {
    let mut s = format!("checkpoint {} ({} ms", c.id, c.took_ms);
    match &c.git {
        Some(g) if !g.saved_ref.is_empty() => s.push_str(&format!(
            ", {} changed files saved as {}",
            g.files_total, g.saved_ref
        )),
        Some(g) if g.files_total == 0 => s.push_str(", git work tree clean"),
        Some(_) => s.push_str(", uncommitted work NOT saved"),
        None => {}
    }
    if !c.problems.is_empty() {
        s.push_str(&format!("; {}", c.problems.join("; ")));
    }
    s.push(')');
    s
}

/// The screen and the labels the probe does not read, within the deadline.
async fn read_tmux(
    tmux: &Tmux,
    t: &Target,
    cfg: &CheckpointConfig,
    deadline: Instant,
    screen: &mut Vec<String>,
    labels: &mut BTreeMap<String, String>,
    problems: &mut Vec<String>,
) {
    if !t.pane_id.is_empty() && cfg.screen_lines > 0 {
        let lines = cfg.screen_lines.min(MAX_SCREEN_LINES);
        match tokio::time::timeout_at(deadline, tmux.capture(&t.pane_id, lines)).await {
            Ok(Ok(text)) => *screen = screen_lines(&text, lines as usize),
            Ok(Err(e)) => problems.push(format!("screen not read: {e}")),
            Err(_) => problems.push("screen not read: tmux did not answer in time".to_owned()),
        }
    }
    if !t.session_id.is_empty() {
        let format = format!("#{{{}}}", argus_shared::labels::option_name(TASK));
        let argv = ["display-message", "-p", "-t", &t.session_id, &format];
        if let Ok(Ok(lines)) = tokio::time::timeout_at(deadline, tmux.run(&argv)).await
            && let Some(task) = lines.first().map(|l| l.trim()).filter(|l| !l.is_empty())
        {
            labels.insert(TASK.to_owned(), task.chars().take(256).collect());
        }
    }
}

/// The task label (`@argus-task`): what the agent works on, for the resume message.
pub const TASK: &str = "task";

/// The last `max` lines of a capture, trailing blank lines dropped, each cut to
/// [`MAX_LINE_BYTES`].
fn screen_lines(text: &str, max: usize) -> Vec<String> {
    let mut lines: Vec<String> = text
        .lines()
        .map(|l| cut(l.trim_end(), MAX_LINE_BYTES).to_owned())
        .collect();
    while lines.last().is_some_and(String::is_empty) {
        lines.pop();
    }
    let skip = lines.len().saturating_sub(max);
    lines.split_off(skip)
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

// === git ===

/// Why a git step failed.
#[derive(Debug, thiserror::Error)]
enum GitError {
    #[error("git {step} did not finish within the checkpoint's time limit ({limit_ms} ms); killed")]
    Timeout { step: &'static str, limit_ms: u128 },
    #[error("git could not be started ({program}): {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("git {step} failed ({status}): {stderr}")]
    Failed {
        step: &'static str,
        status: String,
        stderr: String,
    },
    #[error("git {step}: {what}")]
    Io { step: &'static str, what: String },
}

/// Runs git in one directory, every run bounded by the same deadline.
struct Git<'a> {
    program: &'a Path,
    dir: PathBuf,
    deadline: Instant,
    started: Instant,
}

/// The output of one git run that exited.
struct Ran {
    ok: bool,
    status: String,
    stdout: Vec<u8>,
    stderr: String,
}

/// Kills a process group when dropped, unless disarmed: a git that outlives the deadline goes
/// with every process it started.
pub(crate) struct GroupKill(pub(crate) Option<u32>);

impl Drop for GroupKill {
    fn drop(&mut self) {
        if let Some(pid) = self.0
            && let Some(pid) = rustix::process::Pid::from_raw(pid as i32)
        {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}

impl<'a> Git<'a> {
    fn new(program: &'a Path, dir: &Path, deadline: Instant) -> Self {
        Self {
            program,
            dir: dir.to_owned(),
            deadline,
            started: Instant::now(),
        }
    }

    fn limit_ms(&self) -> u128 {
        (self.deadline - self.started).as_millis()
    }

    /// Runs `git -C DIR <args>` with `input` on its standard input and `env` added; an exit
    /// status other than 0 is returned in [`Ran`], not as an error.
    async fn run(
        &self,
        step: &'static str,
        args: &[&str],
        input: Option<Vec<u8>>,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Result<Ran, GitError> {
        let mut cmd = tokio::process::Command::new(self.program);
        cmd.arg("-C")
            .arg(&self.dir)
            // No filesystem monitor daemon started, no automatic gc or maintenance.
            .args(["-c", "core.fsmonitor=false", "-c", "gc.auto=0"])
            .args(["-c", "maintenance.auto=false"])
            .args(args)
            .env("GIT_OPTIONAL_LOCKS", "0")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("LC_ALL", "C")
            .env("GIT_AUTHOR_NAME", "argus")
            .env("GIT_AUTHOR_EMAIL", "argus@localhost")
            .env("GIT_COMMITTER_NAME", "argus")
            .env("GIT_COMMITTER_EMAIL", "argus@localhost")
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .env_remove("GIT_INDEX_FILE")
            .envs(env.iter().copied())
            .stdin(if input.is_some() {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        let mut child = cmd.spawn().map_err(|source| GitError::Spawn {
            program: self.program.display().to_string(),
            source,
        })?;
        let mut group = GroupKill(child.id());
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let work = async {
            let write = async {
                if let (Some(mut w), Some(data)) = (stdin, input) {
                    // A git that exits early closes the pipe: its status says why.
                    let _ = w.write_all(&data).await;
                    let _ = w.shutdown().await;
                }
            };
            let read_out = async {
                let mut buf = Vec::new();
                if let Some(r) = stdout {
                    r.take(MAX_GIT_OUTPUT).read_to_end(&mut buf).await?;
                }
                Ok::<_, std::io::Error>(buf)
            };
            let read_err = async {
                let mut buf = Vec::new();
                if let Some(r) = stderr {
                    r.take(MAX_GIT_STDERR).read_to_end(&mut buf).await?;
                }
                Ok::<_, std::io::Error>(buf)
            };
            let ((), out, err, status) = tokio::join!(write, read_out, read_err, child.wait());
            Ok::<_, std::io::Error>((out?, err?, status?))
        };
        let result = tokio::time::timeout_at(self.deadline, work).await;
        match result {
            Err(_) => {
                // `group` kills the whole process group on return; the child itself is killed
                // (and reaped in the background) when dropped.
                let _ = child.start_kill();
                Err(GitError::Timeout {
                    step,
                    limit_ms: self.limit_ms(),
                })
            }
            Ok(Err(e)) => Err(GitError::Io {
                step,
                what: e.to_string(),
            }),
            Ok(Ok((stdout, stderr, status))) => {
                // Exited: whatever it started is its own business now (e.g. a credential
                // cache daemon), not ours to kill.
                group.0 = None;
                Ok(Ran {
                    ok: status.success(),
                    status: status.to_string(),
                    stdout,
                    stderr: String::from_utf8_lossy(&stderr).trim().to_owned(),
                })
            }
        }
    }

    /// Runs and requires exit status 0.
    async fn ok(
        &self,
        step: &'static str,
        args: &[&str],
        input: Option<Vec<u8>>,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Result<Vec<u8>, GitError> {
        let ran = self.run(step, args, input, env).await?;
        if !ran.ok {
            return Err(GitError::Failed {
                step,
                status: ran.status,
                stderr: ran.stderr,
            });
        }
        Ok(ran.stdout)
    }

    fn in_dir(&self, dir: &Path) -> Self {
        Self {
            program: self.program,
            dir: dir.to_owned(),
            deadline: self.deadline,
            started: self.started,
        }
    }
}

/// One entry of `git status --porcelain=v2`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StatusEntry {
    path: String,
    /// The path before a rename or copy.
    orig: Option<String>,
    /// Short status: "M", "A", "D", "R", "U", "??", or two letters when index and work tree
    /// both differ.
    code: String,
    untracked: bool,
}

/// What `git status --porcelain=v2 --branch -z` says.
#[derive(Debug, Default, PartialEq, Eq)]
struct Status {
    branch: String,
    head: String,
    entries: Vec<StatusEntry>,
}

/// Parses `git status --porcelain=v2 --branch -z --untracked-files=all`.
fn parse_status(out: &[u8]) -> Status {
    let mut st = Status::default();
    let mut fields = out.split(|&b| b == 0).map(|f| String::from_utf8_lossy(f));
    while let Some(rec) = fields.next() {
        if let Some(h) = rec.strip_prefix("# branch.head ") {
            if h != "(detached)" {
                st.branch = h.to_owned();
            }
        } else if let Some(oid) = rec.strip_prefix("# branch.oid ") {
            if oid != "(initial)" {
                st.head = oid.to_owned();
            }
        } else if let Some(rest) = rec.strip_prefix("1 ") {
            // 1 XY sub mH mI mW hH hI path
            if let Some((xy, path)) = split_record(rest, 7) {
                st.entries.push(tracked(xy, path, None));
            }
        } else if let Some(rest) = rec.strip_prefix("2 ") {
            // 2 XY sub mH mI mW hH hI Xscore path, then the original path as the next field.
            let orig = fields.next().map(|f| f.into_owned());
            if let Some((xy, path)) = split_record(rest, 8) {
                st.entries.push(tracked(xy, path, orig));
            }
        } else if let Some(rest) = rec.strip_prefix("u ") {
            // u XY sub m1 m2 m3 mW h1 h2 h3 path
            if let Some((_, path)) = split_record(rest, 9) {
                st.entries.push(StatusEntry {
                    path: path.to_owned(),
                    orig: None,
                    code: "U".to_owned(),
                    untracked: false,
                });
            }
        } else if let Some(path) = rec.strip_prefix("? ") {
            st.entries.push(StatusEntry {
                path: path.to_owned(),
                orig: None,
                code: "??".to_owned(),
                untracked: true,
            });
        }
    }
    st
}

/// `XY <n fields> path` -> (XY, path): the path is everything after the n-th space (it may hold
/// spaces itself).
fn split_record(rest: &str, fields: usize) -> Option<(&str, &str)> {
    let mut parts = rest.splitn(fields + 1, ' ');
    let xy = parts.next()?;
    let path = parts.nth(fields - 1)?;
    Some((xy, path))
}

fn tracked(xy: &str, path: &str, orig: Option<String>) -> StatusEntry {
    let letters: Vec<char> = xy.chars().filter(|c| *c != '.').collect();
    let code = match letters.as_slice() {
        [a, b] if a == b => a.to_string(),
        _ => letters.iter().collect(),
    };
    StatusEntry {
        path: path.to_owned(),
        orig,
        code,
        untracked: false,
    }
}

/// One line of `diff-tree --numstat -z`: (added, removed) or `None` for a binary file.
type NumStat = HashMap<String, Option<(u32, u32)>>;

/// Parses `git diff-tree -r --numstat -z --no-commit-id` (no rename detection: one path per
/// record, `added TAB removed TAB path NUL`).
fn parse_numstat(out: &[u8]) -> NumStat {
    let mut stats = HashMap::new();
    for rec in out.split(|&b| b == 0) {
        let rec = String::from_utf8_lossy(rec);
        let mut parts = rec.splitn(3, '\t');
        let (Some(a), Some(r), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let counts = match (a.trim().parse::<u32>(), r.parse::<u32>()) {
            (Ok(a), Ok(r)) => Some((a, r)),
            _ => None,
        };
        stats.insert(path.to_owned(), counts);
    }
    stats
}

/// Fills `st` with the work tree of `t.cwd`; `Ok(false)` when it is not in a git work tree.
async fn git_state(
    git: &Git<'_>,
    st: &mut pb::GitState,
    problems: &mut Vec<String>,
    t: &Target,
    id: &str,
    cfg: &CheckpointConfig,
) -> Result<bool, GitError> {
    if !Path::new(&t.cwd).is_dir() {
        return Ok(false);
    }
    let found = git
        .run(
            "rev-parse",
            &["rev-parse", "--show-toplevel", "--git-path", "index"],
            None,
            &[],
        )
        .await?;
    if !found.ok {
        // Not a work tree (or a bare repository): nothing of git to take.
        return Ok(false);
    }
    let text = String::from_utf8_lossy(&found.stdout).into_owned();
    let mut lines = text.lines();
    let (Some(top), Some(index)) = (lines.next(), lines.next()) else {
        return Ok(false);
    };
    st.top_level = top.to_owned();
    let index = Path::new(&t.cwd).join(index);
    let git = git.in_dir(Path::new(top));

    let status = git.ok(
        "status",
        &[
            "status",
            "--porcelain=v2",
            "--branch",
            "-z",
            "--untracked-files=all",
            "--ignore-submodules=dirty",
        ],
        None,
        &[],
    );
    let subject = git.run(
        "log",
        &["log", "-1", "--format=%s", "HEAD", "--"],
        None,
        &[],
    );
    let (status, subject) = tokio::join!(status, subject);
    let status = parse_status(&status?);
    st.branch = status.branch.clone();
    st.head = status.head.clone();
    if let Ok(ran) = subject
        && ran.ok
    {
        st.head_subject = cut(String::from_utf8_lossy(&ran.stdout).trim(), 256).to_owned();
    }
    st.files_total = status.entries.len().min(u32::MAX as usize) as u32;
    if status.entries.is_empty() {
        return Ok(true);
    }

    // Which files go into the saved tree: every tracked change, untracked files within bounds.
    let mut skipped = std::collections::HashSet::new();
    let mut paths: Vec<&str> = Vec::new();
    let mut untracked = 0usize;
    let (mut too_big, mut too_many) = (0usize, 0usize);
    for e in &status.entries {
        if e.untracked {
            if e.path.ends_with('/') {
                // A nested repository: not ours to take.
                skipped.insert(e.path.clone());
                continue;
            }
            let size = std::fs::symlink_metadata(Path::new(top).join(&e.path))
                .map(|m| m.len())
                .unwrap_or(0);
            if size > cfg.max_untracked_bytes {
                too_big += 1;
                skipped.insert(e.path.clone());
                continue;
            }
            if untracked >= cfg.max_untracked_files {
                too_many += 1;
                skipped.insert(e.path.clone());
                continue;
            }
            untracked += 1;
        }
        paths.push(&e.path);
        if let Some(o) = &e.orig {
            paths.push(o);
        }
    }
    if too_big > 0 {
        problems.push(format!(
            "{too_big} untracked files over {} bytes not saved",
            cfg.max_untracked_bytes
        ));
    }
    if too_many > 0 {
        problems.push(format!(
            "{too_many} untracked files past the first {} not saved",
            cfg.max_untracked_files
        ));
    }
    fill_files(
        st,
        &status.entries,
        &skipped,
        &HashMap::new(),
        cfg.max_files,
    );
    if paths.is_empty() {
        return Ok(true);
    }

    // The index is copied, never written: the work goes into the copy.
    let tmp = TempIndex::new(id);
    if index.exists() {
        tokio::fs::copy(&index, &tmp.0)
            .await
            .map_err(|e| GitError::Io {
                step: "copy the index",
                what: e.to_string(),
            })?;
    }
    let env = [("GIT_INDEX_FILE", tmp.0.as_os_str())];
    let mut input = Vec::new();
    for p in &paths {
        input.extend_from_slice(p.as_bytes());
        input.push(0);
    }
    let updated = git
        .run(
            "update-index",
            &["update-index", "--add", "--remove", "-z", "--stdin"],
            Some(input),
            &env,
        )
        .await?;
    if !updated.ok {
        // A path it cannot take one by one (a file turned into a directory): the whole work tree.
        tracing::debug!(stderr = %updated.stderr, "update-index refused; git add -A instead");
        git.ok("add", &["add", "-A", "--", "."], None, &env).await?;
    }
    let tree = git.ok("write-tree", &["write-tree"], None, &env).await?;
    let tree = String::from_utf8_lossy(&tree).trim().to_owned();
    let message = format!(
        "argus checkpoint {id} of session {} before {}\n\nThe work tree as it was (tracked and untracked files, ignored ones excepted), on top of HEAD.\n",
        t.session_name, t.trigger
    );
    let mut args = vec!["commit-tree", tree.as_str(), "-m", message.as_str()];
    if !status.head.is_empty() {
        args.extend(["-p", status.head.as_str()]);
    }
    let reference = ref_name(&t.session_name, id);
    // The commit and its ref, and beside them the diffstat of the tree against HEAD.
    let save = async {
        let commit = git.ok("commit-tree", &args, None, &[]).await?;
        let commit = String::from_utf8_lossy(&commit).trim().to_owned();
        let keep_args = ["update-ref", "-m", "argus checkpoint", &reference, &commit];
        git.ok("update-ref", &keep_args, None, &[]).await?;
        Ok::<_, GitError>(commit)
    };
    let stat_args = [
        "diff-tree",
        "-r",
        "--numstat",
        "-z",
        "--no-commit-id",
        status.head.as_str(),
        tree.as_str(),
    ];
    let stat = async {
        if status.head.is_empty() {
            return None;
        }
        Some(git.ok("diff-tree", &stat_args, None, &[]).await)
    };
    let (saved, stat) = tokio::join!(save, stat);
    st.saved_commit = saved?;
    st.saved_ref = reference;
    let stat = match stat {
        Some(stat) => stat,
        // No HEAD yet: the commit against the empty tree.
        None => {
            let root_args = [
                "diff-tree",
                "-r",
                "--root",
                "--numstat",
                "-z",
                "--no-commit-id",
                st.saved_commit.as_str(),
            ];
            git.ok("diff-tree", &root_args, None, &[]).await
        }
    };
    match stat {
        Ok(out) => {
            let stats = parse_numstat(&out);
            for (a, r) in stats.values().flatten() {
                st.insertions = st.insertions.saturating_add(*a);
                st.deletions = st.deletions.saturating_add(*r);
            }
            fill_files(st, &status.entries, &skipped, &stats, cfg.max_files);
        }
        Err(e) => problems.push(format!("no diffstat: {e}")),
    }
    prune(
        cfg.git.clone(),
        PathBuf::from(top),
        t.session_name.clone(),
        cfg.keep,
    );
    Ok(true)
}

/// The checkpoint's file list: the status entries (at most `max`) with their line counts.
fn fill_files(
    st: &mut pb::GitState,
    entries: &[StatusEntry],
    skipped: &std::collections::HashSet<String>,
    stats: &NumStat,
    max: usize,
) {
    st.files = entries
        .iter()
        .take(max)
        .map(|e| {
            let counts = stats.get(&e.path);
            pb::GitFile {
                path: cut(&e.path, 1024).to_owned(),
                status: e.code.clone(),
                added: counts.copied().flatten().map_or(0, |c| c.0),
                removed: counts.copied().flatten().map_or(0, |c| c.1),
                binary: matches!(counts, Some(None)),
                skipped: skipped.contains(&e.path),
            }
        })
        .collect();
}

/// A temporary index file, removed (with its lock) when dropped.
struct TempIndex(PathBuf);

impl TempIndex {
    fn new(id: &str) -> Self {
        Self(std::env::temp_dir().join(format!("argus-{id}-{}.index", std::process::id())))
    }
}

impl Drop for TempIndex {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let mut lock = self.0.clone().into_os_string();
        lock.push(".lock");
        let _ = std::fs::remove_file(lock);
    }
}

/// Deletes a session's checkpoint refs beyond the newest `keep`, in the background (after the
/// kill or restart: it delays nothing).
fn prune(program: PathBuf, top: PathBuf, session: String, keep: usize) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    handle.spawn(async move {
        let deadline = Instant::now() + PRUNE_TIMEOUT;
        let git = Git::new(&program, &top, deadline);
        let prefix = format!("refs/argus/checkpoints/{}/", ref_component(&session));
        let Ok(out) = git
            .ok(
                "for-each-ref",
                &[
                    "for-each-ref",
                    "--format=%(refname)",
                    "--sort=-refname",
                    &prefix,
                ],
                None,
                &[],
            )
            .await
        else {
            return;
        };
        let text = String::from_utf8_lossy(&out);
        let old: Vec<&str> = text.lines().skip(keep).collect();
        if old.is_empty() {
            return;
        }
        let input: String = old.iter().map(|r| format!("delete {r}\n")).collect();
        if let Err(e) = git
            .ok(
                "update-ref",
                &["update-ref", "--stdin"],
                Some(input.into_bytes()),
                &[],
            )
            .await
        {
            tracing::debug!(error = %e, "old checkpoint refs not pruned");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_porcelain_v2_is_parsed() {
        let out = b"# branch.oid 1234abcd\0# branch.head feature/x\0\
1 .M N... 100644 100644 100644 aaa aaa src/lib.rs\0\
1 A. N... 000000 100644 100644 000 bbb new file.txt\0\
1 MM N... 100644 100644 100644 aaa bbb both.rs\0\
2 R. N... 100644 100644 100644 aaa aaa R100 moved/to.rs\0moved/from.rs\0\
u UU N... 100644 100644 100644 100644 a b c conflict.rs\0\
? notes/untracked.md\0";
        let st = parse_status(out);
        assert_eq!(st.branch, "feature/x");
        assert_eq!(st.head, "1234abcd");
        let codes: Vec<(&str, &str)> = st
            .entries
            .iter()
            .map(|e| (e.path.as_str(), e.code.as_str()))
            .collect();
        assert_eq!(
            codes,
            [
                ("src/lib.rs", "M"),
                ("new file.txt", "A"),
                ("both.rs", "M"),
                ("moved/to.rs", "R"),
                ("conflict.rs", "U"),
                ("notes/untracked.md", "??"),
            ]
        );
        assert_eq!(st.entries[3].orig.as_deref(), Some("moved/from.rs"));
        assert!(st.entries[5].untracked);
        let st = parse_status(b"# branch.oid (initial)\0# branch.head (detached)\0");
        assert_eq!((st.branch.as_str(), st.head.as_str()), ("", ""));
        assert_eq!(tracked("AM", "x", None).code, "AM");
    }

    #[test]
    fn numstat_is_parsed() {
        let s = parse_numstat(b"3\t1\tsrc/lib.rs\0-\t-\timg.png\x0010\t0\ta b.txt\0");
        assert_eq!(s.get("src/lib.rs"), Some(&Some((3, 1))));
        assert_eq!(s.get("img.png"), Some(&None));
        assert_eq!(s.get("a b.txt"), Some(&Some((10, 0))));
    }

    #[test]
    fn refs_are_made_of_safe_components() {
        assert_eq!(ref_component("agent-1"), "agent-1");
        assert_eq!(ref_component("a b/../c.lock"), "a_b____c_lock");
        assert_eq!(ref_component(""), "_");
        assert_eq!(
            ref_name(".hidden", "ck-1-00"),
            "refs/argus/checkpoints/_hidden/ck-1-00"
        );
    }

    #[test]
    fn screens_are_bounded() {
        let text = format!("a\nb\n{}\n\n  \n", "é".repeat(400));
        let lines = screen_lines(&text, 2);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0], "b");
        assert!(lines[1].len() <= MAX_LINE_BYTES && lines[1].len() >= MAX_LINE_BYTES - 1);
    }

    fn git(dir: &Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t")
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn repo() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        git(d, &["init", "-q", "-b", "main"]);
        std::fs::create_dir_all(d.join("src")).expect("mkdir");
        std::fs::write(d.join("src/lib.rs"), "fn a() {}\n").expect("write");
        std::fs::write(d.join("gone.txt"), "bye\n").expect("write");
        std::fs::write(d.join(".gitignore"), "target/\n").expect("write");
        git(d, &["add", "-A"]);
        git(d, &["commit", "-q", "-m", "first"]);
        dir
    }

    #[tokio::test]
    async fn a_checkpoint_saves_the_work_without_touching_the_index_or_the_tree() {
        let dir = repo();
        let d = dir.path();
        // Tracked edits (one staged), a deletion, untracked files, an ignored one.
        std::fs::write(d.join("src/lib.rs"), "fn a() {}\nfn b() {}\n").expect("write");
        std::fs::write(d.join("staged.txt"), "staged\n").expect("write");
        git(d, &["add", "staged.txt"]);
        std::fs::remove_file(d.join("gone.txt")).expect("rm");
        std::fs::create_dir_all(d.join("notes")).expect("mkdir");
        std::fs::write(d.join("notes/idea with space.md"), "idea\n").expect("write");
        std::fs::create_dir_all(d.join("target")).expect("mkdir");
        std::fs::write(d.join("target/out.bin"), "ignored").expect("write");
        let index_before = std::fs::read(d.join(".git/index")).expect("index");
        let status_before = git(d, &["status", "--porcelain"]);

        let t = Target {
            session_name: "agent 1".into(),
            cwd: d.join("src").display().to_string(),
            trigger: "manual",
            ..Target::default()
        };
        let c = take(None, &t, &CheckpointConfig::default()).await;
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        let g = c.git.expect("a git work tree");
        assert_eq!(g.branch, "main");
        assert_eq!(g.head, git(d, &["rev-parse", "HEAD"]).trim());
        assert_eq!(g.head_subject, "first");
        let mut files: Vec<(String, String)> = g
            .files
            .iter()
            .map(|f| (f.path.clone(), f.status.clone()))
            .collect();
        files.sort();
        assert_eq!(
            files,
            [
                ("gone.txt".to_owned(), "D".to_owned()),
                ("notes/idea with space.md".to_owned(), "??".to_owned()),
                ("src/lib.rs".to_owned(), "M".to_owned()),
                ("staged.txt".to_owned(), "A".to_owned()),
            ]
        );
        assert_eq!(g.files_total, 4);
        assert_eq!((g.insertions, g.deletions), (3, 1), "{:?}", g.files);
        assert_eq!(
            g.saved_ref,
            format!("refs/argus/checkpoints/agent_1/{}", c.id)
        );
        // The saved commit holds the work; the index and the work tree are as they were.
        assert_eq!(
            git(d, &["show", &format!("{}:src/lib.rs", g.saved_ref)]),
            "fn a() {}\nfn b() {}\n"
        );
        assert_eq!(
            git(
                d,
                &["show", &format!("{}:notes/idea with space.md", g.saved_ref)]
            ),
            "idea\n"
        );
        let tree = git(d, &["ls-tree", "-r", "--name-only", &g.saved_ref]);
        assert!(
            !tree.contains("gone.txt") && !tree.contains("target/"),
            "{tree}"
        );
        assert_eq!(
            git(d, &["rev-parse", &format!("{}^", g.saved_ref)]),
            git(d, &["rev-parse", "HEAD"])
        );
        assert_eq!(
            std::fs::read(d.join(".git/index")).expect("index"),
            index_before
        );
        assert_eq!(git(d, &["status", "--porcelain"]), status_before);
        assert_eq!(git(d, &["stash", "list"]), "");
        let summary = summary(&pb::Checkpoint {
            id: c.id.clone(),
            git: Some(g.clone()),
            ..Default::default()
        });
        assert!(
            summary.contains("4 changed files saved as refs/argus/"),
            "{summary}"
        );
    }

    #[tokio::test]
    async fn a_repository_without_a_commit_yet() {
        let dir = tempfile::tempdir().expect("tempdir");
        git(dir.path(), &["init", "-q", "-b", "main"]);
        std::fs::write(dir.path().join("a.txt"), "1\n2\n").expect("write");
        let t = Target {
            session_name: "s".into(),
            cwd: dir.path().display().to_string(),
            trigger: "kill",
            ..Target::default()
        };
        let c = take(None, &t, &CheckpointConfig::default()).await;
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        let g = c.git.expect("git");
        assert_eq!((g.branch.as_str(), g.head.as_str()), ("main", ""));
        assert_eq!((g.files_total, g.insertions), (1, 2), "{g:?}");
        assert_eq!(
            git(dir.path(), &["show", &format!("{}:a.txt", g.saved_ref)]),
            "1\n2\n"
        );
    }

    #[tokio::test]
    async fn a_clean_tree_and_a_plain_directory() {
        let dir = repo();
        let t = Target {
            session_name: "s".into(),
            cwd: dir.path().display().to_string(),
            trigger: "kill",
            ..Target::default()
        };
        let c = take(None, &t, &CheckpointConfig::default()).await;
        let g = c.git.expect("git");
        assert_eq!((g.files_total, g.saved_ref.as_str()), (0, ""));
        let plain = tempfile::tempdir().expect("tempdir");
        let t = Target {
            cwd: plain.path().display().to_string(),
            ..t
        };
        let c = take(None, &t, &CheckpointConfig::default()).await;
        assert!(c.git.is_none() && c.problems.is_empty(), "{c:?}");
    }

    #[tokio::test]
    async fn a_hanging_git_is_killed_at_the_limit_with_its_children() {
        let dir = repo();
        let bin = tempfile::tempdir().expect("tempdir");
        let wrapper = bin.path().join("git");
        // The child (sleep) would keep the output pipe open for 30 s if it were not killed too.
        let marker = format!("{}", 30_000 + std::process::id() % 1000);
        std::fs::write(&wrapper, format!("#!/bin/sh\nsleep {marker}\necho done\n")).expect("write");
        std::fs::set_permissions(
            &wrapper,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        let cfg = CheckpointConfig {
            git: wrapper,
            timeout: Duration::from_millis(300),
            ..CheckpointConfig::default()
        };
        let t = Target {
            session_name: "s".into(),
            cwd: dir.path().display().to_string(),
            trigger: "kill",
            ..Target::default()
        };
        let started = std::time::Instant::now();
        let c = take(None, &t, &cfg).await;
        let took = started.elapsed();
        assert!(took < Duration::from_millis(800), "took {took:?}");
        assert!(
            c.problems
                .iter()
                .any(|p| p.contains("did not finish within")),
            "{:?}",
            c.problems
        );
        // No sleep of the wrapper is left.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let left = std::fs::read_dir("/proc")
            .expect("proc")
            .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
            .filter(|c| String::from_utf8_lossy(c).contains(&format!("sleep\0{marker}")))
            .count();
        assert_eq!(left, 0, "the hung git's children were not killed");
    }
}
