//! One long-lived tmux control-mode client (`tmux -C attach -f ignore-size,no-output`).
//!
//! Commands are written as lines on its stdin; tmux answers each one, in order, with a
//! `%begin TIME NUMBER 1` ... `%end|%error TIME NUMBER 1` block (flag 1: the command came from
//! this client). Blocks with flag 0 (the attach itself) and notification lines (`%sessions-changed`,
//! `%unlinked-window-close`, ...) are not answers: notifications wake the prober so that a closed
//! session is noticed at once instead of at the next tick.
//!
//! The client ends with its node agent, even a SIGKILLed one: its stdin (read by the tmux server)
//! closes, and where util-linux `setpriv` is installed it also runs with a parent-death signal
//! (`setpriv --pdeathsig KILL`), which ends it even when the server is not answering. (A
//! `pre_exec` `prctl` would need `unsafe`, which the workspace forbids.)

use std::collections::VecDeque;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, OnceLock};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{Mutex, Notify, oneshot};

use super::TmuxError;

type Reply = Result<Vec<String>, String>;

/// A running control-mode client. Dropping it ends the tmux client process.
pub struct ControlClient {
    inner: Mutex<Writer>,
    pending: Arc<std::sync::Mutex<PendingState>>,
    _child: Child,
}

struct Writer {
    stdin: ChildStdin,
}

#[derive(Default)]
struct PendingState {
    queue: VecDeque<oneshot::Sender<Reply>>,
    closed: bool,
}

impl ControlClient {
    /// Attaches a control client to the tmux server at `socket`. Fails when the server is not
    /// running or has no session to attach to.
    pub async fn attach(
        socket: &Path,
        session: &str,
        wake: Arc<Notify>,
    ) -> Result<Self, TmuxError> {
        let mut child = client_command()
            .await
            .arg("-S")
            .arg(socket)
            .args([
                "-C",
                "attach-session",
                "-t",
                session,
                "-f",
                "ignore-size,no-output",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| TmuxError::Spawn(e.to_string()))?;
        let stdin = child.stdin.take().ok_or(TmuxError::Closed)?;
        let stdout = child.stdout.take().ok_or(TmuxError::Closed)?;
        let pending = Arc::new(std::sync::Mutex::new(PendingState::default()));
        let client = Self {
            inner: Mutex::new(Writer { stdin }),
            pending: pending.clone(),
            _child: child,
        };
        // The reader ends by itself when tmux closes stdout (the client process is killed when
        // this struct drops), so it needs no handle.
        let reader = read_loop(BufReader::new(stdout), pending, wake);
        drop(tokio::spawn(reader));
        // A first round trip proves the attach worked (no server, no session: stdout closes).
        client.run("display-message -p ok").await?;
        Ok(client)
    }

    /// True once tmux has closed the client (server gone, or its session closed).
    pub fn is_closed(&self) -> bool {
        self.pending.lock().map(|p| p.closed).unwrap_or(true)
    }

    /// Runs one tmux command line and returns its output lines.
    pub async fn run(&self, line: &str) -> Result<Vec<String>, TmuxError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut w = self.inner.lock().await;
            {
                let mut p = self.pending.lock().map_err(|_| TmuxError::NotSent)?;
                if p.closed {
                    return Err(TmuxError::NotSent);
                }
                p.queue.push_back(tx);
            }
            let mut buf = Vec::with_capacity(line.len() + 1);
            buf.extend_from_slice(line.as_bytes());
            buf.push(b'\n');
            if w.stdin.write_all(&buf).await.is_err() || w.stdin.flush().await.is_err() {
                // tmux reads whole lines: a line that did not reach it whole did not run.
                return Err(TmuxError::NotSent);
            }
        }
        match tokio::time::timeout(std::time::Duration::from_secs(5), rx).await {
            Ok(Ok(Ok(lines))) => Ok(lines),
            Ok(Ok(Err(msg))) => Err(TmuxError::Command {
                command: line.chars().take(120).collect(),
                message: msg,
            }),
            Ok(Err(_)) => Err(TmuxError::Closed),
            Err(_) => Err(TmuxError::Timeout),
        }
    }
}

/// `tmux`, under `setpriv --pdeathsig KILL` when that works here (checked once).
async fn client_command() -> Command {
    static PDEATHSIG: OnceLock<bool> = OnceLock::new();
    let works = match PDEATHSIG.get() {
        Some(w) => *w,
        None => {
            let works = Command::new("setpriv")
                .args(["--pdeathsig", "KILL", "--", "true"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await
                .is_ok_and(|s| s.success());
            if !works {
                tracing::info!(
                    "setpriv --pdeathsig unavailable: the tmux control client ends with the node agent through its stdin only"
                );
            }
            *PDEATHSIG.get_or_init(|| works)
        }
    };
    if works {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--pdeathsig", "KILL", "--", "tmux"]);
        cmd
    } else {
        Command::new("tmux")
    }
}

async fn read_loop(
    mut out: BufReader<tokio::process::ChildStdout>,
    pending: Arc<std::sync::Mutex<PendingState>>,
    wake: Arc<Notify>,
) {
    let mut line = Vec::new();
    // Some(flag) while inside a %begin block; the lines of an answer block accumulate in `body`.
    let mut block: Option<bool> = None;
    let mut body = Vec::new();
    loop {
        line.clear();
        match out.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        if let Some(ours) = block {
            let end = text.starts_with("%end ");
            let error = text.starts_with("%error ");
            if end || error {
                block = None;
                if ours {
                    let lines = std::mem::take(&mut body);
                    let reply = if error {
                        Err(lines.join("\n"))
                    } else {
                        Ok(lines)
                    };
                    if let Ok(mut p) = pending.lock()
                        && let Some(tx) = p.queue.pop_front()
                    {
                        let _ = tx.send(reply);
                    }
                }
            } else if ours {
                body.push(text.to_owned());
            }
            continue;
        }
        if let Some(rest) = text.strip_prefix("%begin ") {
            block = Some(rest.rsplit(' ').next() == Some("1"));
            body.clear();
        } else if text.starts_with("%exit") {
            break;
        } else if text.starts_with("%sessions-changed")
            || text.starts_with("%unlinked-window-close")
            || text.starts_with("%window-close")
            || text.starts_with("%session-changed")
        {
            wake.notify_one();
        }
    }
    if let Ok(mut p) = pending.lock() {
        p.closed = true;
        p.queue.clear();
    }
    wake.notify_one();
}

#[cfg(test)]
mod fuzz;
