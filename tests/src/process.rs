//! One started binary: output to a log file, stopped by pid when dropped. The one process type
//! of the tests and the benchmarks.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// What dropping a [`Proc`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnDrop {
    /// Stop gracefully, then print the end of the log: the test harness shows a test's output
    /// only when it fails, and then these logs explain it.
    StopAndShowLog,
    /// SIGKILL and reap, quietly (benchmarks).
    Kill,
}

/// One started binary, its stdout and stderr going to a log file.
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    on_drop: OnDrop,
}

impl Proc {
    /// Starts `program` with `args` and extra `env` (no inherited `ARGUS_*` variable, so that a
    /// test sees only its own configuration); stdout and stderr go to `log`.
    pub fn start(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let file = std::fs::File::create(&log)
            .with_context(|| format!("creating log {}", log.display()))?;
        let mut cmd = Command::new(program);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ARGUS_") {
                cmd.env_remove(key);
            }
        }
        let child = cmd
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log,
            on_drop: OnDrop::StopAndShowLog,
        })
    }

    /// Dropping kills the process at once and prints nothing (for benchmarks).
    pub fn quiet(mut self) -> Self {
        self.on_drop = OnDrop::Kill;
        self
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The name given at start.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Fails when the process has exited (with the end of its log).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            anyhow::bail!(
                "{} exited ({status}); end of its log:\n{}",
                self.name,
                self.log_tail(30)
            );
        }
        Ok(())
    }

    /// Stops the process: SIGTERM by pid (so it ends its own children, such as a node agent's
    /// tmux control client), SIGKILL after 3 s, then reaps it.
    pub fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }

    /// SIGKILL by pid, then reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        match self.on_drop {
            OnDrop::Kill => self.kill(),
            OnDrop::StopAndShowLog => {
                self.stop();
                eprintln!(
                    "===== last lines of the log of {} =====\n{}",
                    self.name,
                    self.log_tail(300)
                );
            }
        }
    }
}

/// Path of a workspace binary built next to the running executable (`cargo build --workspace
/// --bins` builds them, `--release` for the benchmarks; the README's commands do).
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the running executable")?;
    let mut dir = exe.parent().context("executable without a directory")?;
    if dir.ends_with("deps") {
        dir = dir.parent().context("deps without parent")?;
    }
    let path = dir.join(name);
    anyhow::ensure!(
        path.exists(),
        "{} not found: build the workspace binaries into the same target directory first \
         (`cargo build --workspace --bins`; the README's test command does)",
        path.display()
    );
    Ok(path)
}
