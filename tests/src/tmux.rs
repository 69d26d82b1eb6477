//! A private tmux server per test (`tmux -S DIR/tmux.sock -f /dev/null`), killed on drop. Tests
//! never touch anyone else's tmux.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A private tmux server.
pub struct TestTmux {
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestTmux {
    /// A new private server (started by the first session).
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("argus-tmux-")
            .tempdir()
            .expect("tempdir");
        Self {
            socket: dir.path().join("tmux.sock"),
            _dir: dir,
        }
    }

    /// The server's socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Runs a tmux command against this server; returns stdout, fails on a non-zero exit.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        // Sessions start in the server's directory unless told otherwise: a private one, never
        // the checkout the tests run from (a kill's checkpoint would write refs into it).
        let out = Command::new("tmux")
            .current_dir(self._dir.path())
            .arg("-S")
            .arg(&self.socket)
            .arg("-f")
            .arg("/dev/null")
            .args(args)
            .output()?;
        if !out.status.success() {
            anyhow::bail!(
                "tmux {:?} failed: {}",
                args,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Creates a detached session running `command` (a shell command line) with the given
    /// `@argus-*` labels set in the same tmux invocation.
    pub fn session(
        &self,
        name: &str,
        command: &str,
        labels: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        let mut args = vec![
            "new-session",
            "-d",
            "-s",
            name,
            "-x",
            "120",
            "-y",
            "30",
            command,
        ];
        let opts: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (format!("@argus-{k}"), (*v).to_owned()))
            .collect();
        // An explicit exact target: without -t, tmux picks the "current" session, which another
        // client (a node agent's control client) can change.
        let target = format!("={name}:");
        for (k, v) in &opts {
            args.extend([";", "set-option", "-t", &target, k, v]);
        }
        self.run(&args).map(drop)
    }

    /// True while a session with exactly this name exists.
    pub fn has_session(&self, name: &str) -> bool {
        self.run(&["has-session", "-t", &format!("={name}")])
            .is_ok()
    }

    /// Visible text of a session's first pane.
    pub fn capture(&self, name: &str) -> anyhow::Result<String> {
        self.run(&["capture-pane", "-p", "-t", &format!("={name}:")])
    }

    /// Pid of a session's first pane process.
    pub fn pane_pid(&self, name: &str) -> anyhow::Result<u32> {
        let out = self.run(&[
            "display-message",
            "-p",
            "-t",
            &format!("={name}:"),
            "#{pane_pid}",
        ])?;
        Ok(out.trim().parse()?)
    }
}

impl Default for TestTmux {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestTmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .output();
    }
}
