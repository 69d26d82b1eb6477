//! Access to one tmux server: a long-lived control-mode client when the server has a session to
//! attach to, a spawned `tmux` command otherwise. Sessions and panes are targeted by their ids
//! only (`$3`, `%12`), resolved and checked against the name first (see [`target`]); a name is
//! never a target.

mod control;
pub mod target;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, Notify};

use control::ControlClient;
pub use target::{CreateError, Target, TargetError};

/// Why a tmux operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TmuxError {
    /// tmux could not be started.
    #[error("could not start tmux: {0}")]
    Spawn(String),
    /// The control client went away.
    #[error("tmux control client closed")]
    Closed,
    /// The control client had gone away before the command was written: it did not run.
    #[error("tmux control client had closed; the command was not sent")]
    NotSent,
    /// tmux did not answer in time.
    #[error("tmux did not answer within 5 s")]
    Timeout,
    /// tmux refused the command.
    #[error("tmux refused `{command}`: {message}")]
    Command { command: String, message: String },
}

/// Field separator of our list formats (ASCII unit separator: never in names).
const SEP: char = '\u{1f}';

/// Labels read from tmux user options, in [`Pane::labels`] order.
pub const LABELS: [&str; 6] = argus_shared::labels::ALL;

const PANE_FORMAT: &str = concat!(
    "#{session_name}\u{1f}#{session_id}\u{1f}#{window_index}\u{1f}#{pane_index}\u{1f}",
    "#{pane_id}\u{1f}#{pane_pid}\u{1f}#{pane_dead}\u{1f}#{pane_dead_status}\u{1f}",
    "#{window_activity}\u{1f}#{history_size}\u{1f}#{cursor_y}\u{1f}#{pane_current_path}\u{1f}",
    "#{@argus-profile}\u{1f}#{@argus-provider}\u{1f}#{@argus-account}\u{1f}#{@argus-group}\u{1f}",
    "#{@argus-restart}\u{1f}#{@argus-gate}\u{1f}#{window_width}\u{1f}#{window_height}\u{1f}#{pane_height}\u{1f}#{pane_start_command}",
    // Last: a title is whatever the program set, so it takes any separator left over.
    "\u{1f}#{pane_title}"
);

/// One pane as `list-panes -a` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pane {
    pub session_name: String,
    pub session_id: String,
    pub window_index: u32,
    pub pane_index: u32,
    pub pane_id: String,
    pub pane_pid: u32,
    pub pane_dead: bool,
    pub dead_status: i32,
    /// `#{window_activity}`: last output in the window, Unix seconds.
    pub window_activity: i64,
    pub history_size: u64,
    pub cursor_y: u32,
    pub cwd: String,
    /// Values of the `@argus-*` options, in [`LABELS`] order (empty when unset).
    pub labels: [String; 6],
    /// The window's size (columns, rows): a session created anew gets it back.
    pub window_size: (u32, u32),
    /// `#{pane_height}`: its rows. A capture with history holds the rows above the screen
    /// (scrolled off, or pushed off by a clear); the last `pane_height` rows are the screen now.
    pub pane_height: u32,
    /// The pane's start command as tmux prints it (quoted).
    pub start_command: String,
    /// `#{pane_title}`: what the program set as its terminal title (tmux's default is the host
    /// name). Empty from a format without it.
    pub title: String,
}

impl Pane {
    fn parse(line: &str) -> Option<Self> {
        let f: Vec<&str> = line.splitn(23, SEP).collect();
        if f.len() < 22 {
            return None;
        }
        Some(Self {
            session_name: f[0].to_owned(),
            session_id: f[1].to_owned(),
            window_index: f[2].parse().ok()?,
            pane_index: f[3].parse().ok()?,
            pane_id: f[4].to_owned(),
            pane_pid: f[5].parse().unwrap_or(0),
            pane_dead: f[6] == "1",
            dead_status: f[7].parse().unwrap_or(-1),
            window_activity: f[8].parse().unwrap_or(0),
            history_size: f[9].parse().unwrap_or(0),
            cursor_y: f[10].parse().unwrap_or(0),
            cwd: f[11].to_owned(),
            labels: [
                f[12].to_owned(),
                f[13].to_owned(),
                f[14].to_owned(),
                f[15].to_owned(),
                f[16].to_owned(),
                f[17].to_owned(),
            ],
            window_size: (f[18].parse().unwrap_or(0), f[19].parse().unwrap_or(0)),
            pane_height: f[20].parse().unwrap_or(0),
            start_command: f[21].to_owned(),
            title: f.get(22).map_or_else(String::new, |t| (*t).to_owned()),
        })
    }

    /// The value of label `name` (one of [`LABELS`]), if set.
    pub fn label(&self, name: &str) -> Option<&str> {
        LABELS
            .iter()
            .position(|l| *l == name)
            .map(|i| self.labels[i].as_str())
            .filter(|v| !v.is_empty())
    }
}

/// One tmux server, addressed by its socket path.
pub struct Tmux {
    socket: PathBuf,
    control: Mutex<Option<ControlClient>>,
    /// A control client was attached and has closed since: the next attach is a restart.
    lost: std::sync::atomic::AtomicBool,
    wake: Arc<Notify>,
    /// The server's sessions as last listed while no control client was attached, and since
    /// when they have looked so (see [`ATTACH_QUIET`]).
    quiet: std::sync::Mutex<Option<(String, Instant)>>,
    /// Sessions being created by spawned `tmux new-session` right now.
    creating: AtomicUsize,
}

/// How long the server's sessions must hold still, with no session creation of ours in flight,
/// before a control client attaches. tmux 3.3a (and, upstream reports, releases up to 3.7c) crashes
/// the whole server, every session with it, when a notification (a session or window created or closed)
/// reaches a control client that is still identifying itself: 209 crashes in 4,676 attaches
/// under constant session churn here (docs/decisions.md). Attaching only to a still server, to
/// its oldest session (the one least likely to close and send the client away), makes that
/// window rare; until then commands are spawned, which is slower but safe.
const ATTACH_QUIET: Duration = Duration::from_millis(500);

impl Tmux {
    /// A handle on the server at `socket`; `wake` is notified when tmux reports a structural
    /// change (a session or window closed).
    pub fn new(socket: PathBuf, wake: Arc<Notify>) -> Self {
        Self {
            socket,
            control: Mutex::new(None),
            lost: std::sync::atomic::AtomicBool::new(false),
            wake,
            quiet: std::sync::Mutex::new(None),
            creating: AtomicUsize::new(0),
        }
    }

    /// The server's socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Runs a tmux command given as argv: over the control client when one can be attached, by
    /// spawning `tmux` otherwise.
    pub async fn run(&self, argv: &[&str]) -> Result<Vec<String>, TmuxError> {
        match self.run_once(argv).await {
            // The client died (its server or its session went away) before it took the
            // command, so it did not run: once more on a fresh client, or a spawned tmux.
            Err(TmuxError::NotSent) => self.run_once(argv).await,
            other => other,
        }
    }

    async fn run_once(&self, argv: &[&str]) -> Result<Vec<String>, TmuxError> {
        let mut guard = self.control.lock().await;
        if guard.as_ref().is_some_and(ControlClient::is_closed) {
            *guard = None;
            self.lost.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        // `attach-session` starts a server when none runs (and a control client then keeps that
        // empty server alive): attach only to a server that already has a session, and only
        // once it holds still.
        if guard.is_none()
            && let Some(session) = self.attach_target().await
        {
            *guard = ControlClient::attach(&self.socket, &session, self.wake.clone())
                .await
                .ok();
            if guard.is_some() {
                let again = self.lost.swap(false, std::sync::atomic::Ordering::Relaxed);
                crate::metrics::control_attached(again);
            }
        }
        match guard.as_ref() {
            Some(c) => {
                let line = argv.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ");
                let result = c.run(&line).await;
                if matches!(result, Err(TmuxError::NotSent)) {
                    *guard = None;
                    self.lost.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                result
            }
            None => {
                drop(guard);
                self.spawn(argv).await
            }
        }
    }

    /// The session a control client may attach to now: the server's oldest, once the list of
    /// its sessions has held still for [`ATTACH_QUIET`] with no creation of ours in flight.
    /// `None` when no server runs or it has no session (`list-sessions` never starts a server),
    /// or while it is changing.
    async fn attach_target(&self) -> Option<String> {
        if !self.socket.exists() {
            return None;
        }
        let format = format!("#{{session_created}}{SEP}#{{session_id}}{SEP}#{{session_windows}}");
        let lines = self.spawn(&["list-sessions", "-F", &format]).await.ok()?;
        let seen = lines.join("\n");
        let now = Instant::now();
        let still = {
            let mut quiet = self.quiet.lock().unwrap_or_else(|e| e.into_inner());
            match quiet.as_ref() {
                Some((before, since)) if *before == seen => {
                    now.duration_since(*since) >= ATTACH_QUIET
                }
                _ => {
                    *quiet = Some((seen, now));
                    false
                }
            }
        };
        if !still || self.creating.load(Ordering::SeqCst) > 0 {
            return None;
        }
        oldest_session(&lines)
    }

    async fn spawn(&self, argv: &[&str]) -> Result<Vec<String>, TmuxError> {
        let out = tokio::process::Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(argv)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|e| TmuxError::Spawn(e.to_string()))?;
        if !out.status.success() {
            return Err(TmuxError::Command {
                command: argv.join(" "),
                message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect())
    }

    /// All panes of the server. A server that is not running has none.
    pub async fn list_panes(&self) -> Result<Vec<Pane>, TmuxError> {
        match self.run(&["list-panes", "-a", "-F", PANE_FORMAT]).await {
            Ok(lines) => Ok(lines.iter().filter_map(|l| Pane::parse(l)).collect()),
            Err(TmuxError::Command { message, .. })
                if message.contains("no server running")
                    || message.contains("error connecting")
                    || message.contains("No such file")
                    || message.contains("no current target")
                    || message.contains("server exited") =>
            {
                Ok(Vec::new())
            }
            Err(e) => Err(e),
        }
    }

    /// Human clients per session name: control-mode clients (ours or anyone's) do not count.
    pub async fn human_clients(&self) -> Result<Vec<String>, TmuxError> {
        let format = format!("#{{client_session}}{SEP}#{{client_control_mode}}");
        let lines = self.run(&["list-clients", "-F", &format]).await?;
        Ok(lines
            .into_iter()
            .filter_map(|l| {
                let (session, control) = l.split_once(SEP)?;
                (control != "1").then(|| session.to_owned())
            })
            .collect())
    }

    /// The visible text of a pane.
    pub async fn capture(&self, pane_id: &str, lines: u32) -> Result<String, TmuxError> {
        let start = format!("-{lines}");
        let out = self
            .run(&["capture-pane", "-p", "-J", "-t", pane_id, "-S", &start])
            .await?;
        Ok(out.join("\n"))
    }

    /// Types `text` literally into a pane.
    pub async fn send_literal(&self, pane_id: &str, text: &str) -> Result<(), TmuxError> {
        self.run(&["send-keys", "-t", pane_id, "-l", "--", text])
            .await
            .map(drop)
    }

    /// Presses one named key (`Enter`, `C-c`) in a pane.
    pub async fn send_key(&self, pane_id: &str, key: &str) -> Result<(), TmuxError> {
        self.run(&["send-keys", "-t", pane_id, key]).await.map(drop)
    }

    /// Replaces a pane's process with `argv` (empty: the pane's own start command).
    pub async fn respawn_pane(&self, pane_id: &str, argv: &[String]) -> Result<(), TmuxError> {
        let mut args = vec!["respawn-pane", "-k", "-t", pane_id];
        args.extend(argv.iter().map(String::as_str));
        self.run(&args).await.map(drop)
    }
}

/// Quotes one argument for tmux's command parser: single quotes, inside which nothing is
/// expanded; a single quote itself is written as `'\''`.
fn quote(arg: &str) -> String {
    let mut s = String::with_capacity(arg.len() + 2);
    s.push('\'');
    for c in arg.chars() {
        if c == '\'' {
            s.push_str("'\\''");
        } else {
            s.push(c);
        }
    }
    s.push('\'');
    s
}

/// The default tmux server's socket path for this user (`$TMUX_TMPDIR/tmux-UID/default`).
pub fn default_socket() -> PathBuf {
    let dir = std::env::var_os("TMUX_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    let uid = rustix::process::getuid().as_raw();
    dir.join(format!("tmux-{uid}")).join("default")
}

/// The id of the oldest session in `list-sessions` lines (`CREATED SEP ID SEP WINDOWS`); ties go
/// to the lower id.
fn oldest_session(lines: &[String]) -> Option<String> {
    lines
        .iter()
        .filter_map(|l| {
            let mut f = l.split(SEP);
            let created: i64 = f.next()?.parse().ok()?;
            let id = f.next()?;
            let n: u64 = id.strip_prefix('$')?.parse().ok()?;
            Some((created, n, id.to_owned()))
        })
        .min()
        .map(|(_, _, id)| id)
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_session_is_attached_to() {
        let line = |created: &str, id: &str| format!("{created}{SEP}{id}{SEP}1");
        let lines = vec![
            line("1700000005", "$1"),
            line("1700000001", "$10"),
            line("1700000001", "$9"),
            "garbage".to_owned(),
        ];
        assert_eq!(oldest_session(&lines).as_deref(), Some("$9"));
        assert_eq!(oldest_session(&[]), None);
    }

    #[test]
    fn quoting() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), "'it'\\''s'");
    }

    #[test]
    fn pane_lines() {
        let line = "s\u{1f}$1\u{1f}0\u{1f}0\u{1f}%3\u{1f}42\u{1f}0\u{1f}\u{1f}1700\u{1f}5\u{1f}2\u{1f}/tmp\u{1f}claude\u{1f}\u{1f}\u{1f}\u{1f}\u{1f}\u{1f}120\u{1f}40\u{1f}40\u{1f}\"sleep 1\"";
        let p = Pane::parse(line).expect("parses");
        assert_eq!(p.pane_id, "%3");
        assert_eq!(p.pane_pid, 42);
        assert_eq!(p.label("profile"), Some("claude"));
        assert_eq!(p.label("group"), None);
        assert_eq!(p.window_size, (120, 40));
        assert_eq!(p.start_command, "\"sleep 1\"");
        assert_eq!(p.title, "");
        let titled = format!("{line}\u{1f}\u{2810} Fix the bug");
        let p = Pane::parse(&titled).expect("parses with a title");
        assert_eq!(p.start_command, "\"sleep 1\"");
        assert_eq!(p.title, "\u{2810} Fix the bug");
    }
}
