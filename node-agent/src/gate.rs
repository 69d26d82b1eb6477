//! Runs a session's quality gate for the controller: `sh -c COMMAND` in the session's working
//! directory, in a process group of its own, with a time limit and bounded output. Only runs it;
//! the controller judges the outcome (`argus_decide::gate`).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

/// Output kept per run: the last bytes of stdout and stderr, interleaved as they came.
pub const MAX_OUTPUT: usize = 16 * 1024;

/// How long the output pipes may stay open after the gate's process group was ended.
const DRAIN: Duration = Duration::from_millis(500);

/// How one gate run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateRun {
    /// Exit status; -1 when it ended by a signal (or was killed at its time limit).
    pub exit: i32,
    /// It ran past its time limit and its process group was killed.
    pub timed_out: bool,
    /// The last [`MAX_OUTPUT`] bytes of its output (lossy UTF-8).
    pub output: String,
    /// How long it ran.
    pub took: Duration,
}

/// Why a gate could not be run.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// The working directory is unusable.
    #[error("gate working directory {dir:?} is not a directory")]
    NoDir { dir: String },
    /// `sh` could not be started.
    #[error("starting the gate `{command}` in {dir}: {source}")]
    Spawn {
        command: String,
        dir: String,
        source: std::io::Error,
    },
}

/// Runs `command` with `sh -c` in `cwd` for at most `timeout`. Its whole process group is
/// killed at the limit, and also once it exits (a gate leaves nothing running behind it).
pub async fn run(command: &str, cwd: &Path, timeout: Duration) -> Result<GateRun, GateError> {
    if !cwd.is_dir() {
        return Err(GateError::NoDir {
            dir: cwd.display().to_string(),
        });
    }
    let start = Instant::now();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(cwd)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| GateError::Spawn {
            command: command.to_owned(),
            dir: cwd.display().to_string(),
            source,
        })?;
    let group = child.id().and_then(|id| Pid::from_raw(id as i32));
    let tail = Arc::new(Mutex::new(Tail::default()));
    // Read while it runs (a full pipe would stall the gate); the set aborts them when dropped.
    let mut pumps = tokio::task::JoinSet::new();
    if let Some(r) = child.stdout.take() {
        pumps.spawn(pump(r, tail.clone()));
    }
    if let Some(r) = child.stderr.take() {
        pumps.spawn(pump(r, tail.clone()));
    }
    let (exit, timed_out) = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => (status.code().unwrap_or(-1), false),
        Ok(Err(_)) => (-1, false),
        Err(_) => (-1, true),
    };
    if let Some(group) = group {
        let _ = rustix::process::kill_process_group(group, Signal::KILL);
    }
    if timed_out {
        let _ = child.wait().await;
    }
    // A grandchild may hold the pipes open; the output read so far is enough.
    let _ = tokio::time::timeout(DRAIN, pumps.join_all()).await;
    let output = tail.lock().unwrap_or_else(|p| p.into_inner()).text();
    Ok(GateRun {
        exit,
        timed_out,
        output,
        took: start.elapsed(),
    })
}

/// Reads a pipe to its end into the shared tail.
async fn pump(mut r: impl AsyncRead + Unpin, tail: Arc<Mutex<Tail>>) {
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => tail
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(&buf[..n]),
        }
    }
}

/// The last [`MAX_OUTPUT`] bytes written.
#[derive(Default)]
struct Tail {
    bytes: std::collections::VecDeque<u8>,
    dropped: bool,
}

impl Tail {
    fn push(&mut self, data: &[u8]) {
        self.bytes.extend(data);
        if self.bytes.len() > MAX_OUTPUT {
            let over = self.bytes.len() - MAX_OUTPUT;
            self.bytes.drain(..over);
            self.dropped = true;
        }
    }

    fn text(&self) -> String {
        let (a, b) = self.bytes.as_slices();
        let mut v = Vec::with_capacity(a.len() + b.len());
        v.extend_from_slice(a);
        v.extend_from_slice(b);
        let text = String::from_utf8_lossy(&v).into_owned();
        if self.dropped {
            // The cut may fall inside a line (or a character): start at the next line.
            match text.split_once('\n') {
                Some((_, rest)) => rest.to_owned(),
                None => text,
            }
        } else {
            text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn exit_status_output_and_bounds() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("marker"), "here").expect("write");
        let r = run(
            "cat marker; echo; echo oops >&2; exit 3",
            dir.path(),
            Duration::from_secs(10),
        )
        .await
        .expect("runs");
        assert_eq!((r.exit, r.timed_out), (3, false));
        assert!(
            r.output.contains("here") && r.output.contains("oops"),
            "{r:?}"
        );
        let r = run(
            "yes line | head -c 200000; echo; echo LAST",
            dir.path(),
            Duration::from_secs(10),
        )
        .await
        .expect("runs");
        assert_eq!(r.exit, 0);
        assert!(r.output.len() <= MAX_OUTPUT, "{}", r.output.len());
        assert!(r.output.trim_end().ends_with("LAST"));
    }

    #[tokio::test]
    async fn a_gate_past_its_limit_is_killed_with_its_children() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pidfile = dir.path().join("pid");
        let r = run(
            "sleep 60 & echo $! > pid; echo started; wait",
            dir.path(),
            Duration::from_millis(500),
        )
        .await
        .expect("runs");
        assert!(r.timed_out, "{r:?}");
        assert!(r.took < Duration::from_secs(5), "{r:?}");
        assert!(r.output.contains("started"));
        let pid: u32 = std::fs::read_to_string(pidfile)
            .expect("pid")
            .trim()
            .parse()
            .expect("number");
        // SIGKILL was sent to the whole group; on a loaded machine the child may take a moment
        // to be scheduled and die.
        let deadline = Instant::now() + Duration::from_secs(5);
        let gone = || crate::procs::stat(pid).is_none_or(|s| s.state == 'Z');
        while !gone() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            gone(),
            "the gate's child {pid} still runs 5 s after the kill"
        );
    }
}
