//! The chaos benchmark's fleet: fake agents (a small Python script, `agent.py`) in one private
//! tmux server, some labelled `@argus-restart`, some not, and bystander sessions that are no
//! agent at all. Each instance appends what happens to it to `NAME.log` (its start, its modes,
//! every byte typed into it and every signal it receives): the ground truth the invariants are
//! checked against. The benchmark changes an agent's behaviour by writing `NAME.mode`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;

use crate::bench::Tmux;

/// The fake agent's program.
const SCRIPT: &str = include_str!("agent.py");

/// What a session is to Argus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An agent with `@argus-profile` and `@argus-restart`: restarted when it dies.
    Labelled,
    /// An agent with `@argus-profile` only: watched and laddered, never restarted on death.
    Unlabelled,
    /// Not an agent (no label, no agent process): must never be touched.
    Bystander,
}

/// One session of the fleet.
#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    pub role: Role,
    /// `remain-on-exit on`: a death leaves the pane (respawned by the restart); otherwise the
    /// session closes with its agent and the restart creates it anew.
    pub remain_on_exit: bool,
}

/// The fleet and its files.
pub struct Fleet {
    pub members: Vec<Member>,
    /// Logs, mode files and the script.
    pub dir: PathBuf,
    script: PathBuf,
    /// The Python interpreter itself (not a version manager's shim, which would add a shell
    /// between the pane and the agent).
    python: String,
    seq: AtomicU64,
}

/// Modes in which no action may reach the agent: busy, thinking, waiting for a permission,
/// rate-limited.
pub fn protected(mode: &str) -> bool {
    matches!(mode, "work" | "think" | "permission" | "ratelimit")
}

impl Fleet {
    /// Writes the script into `dir` and names the members: `labelled` restartable agents (every
    /// other one with `remain-on-exit`), `unlabelled` agents and `bystanders`.
    pub fn new(
        dir: &Path,
        labelled: usize,
        unlabelled: usize,
        bystanders: usize,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let script = dir.join("agent.py");
        std::fs::write(&script, SCRIPT).context("writing the fake agent")?;
        let out = std::process::Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .context("the chaos benchmark's fake agents need python3")?;
        let python = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        anyhow::ensure!(!python.is_empty(), "python3 names no interpreter");
        let mut members = Vec::new();
        for i in 0..labelled {
            members.push(Member {
                name: format!("agent-{i:02}"),
                role: Role::Labelled,
                remain_on_exit: i % 2 == 0,
            });
        }
        for i in 0..unlabelled {
            members.push(Member {
                name: format!("solo-{i:02}"),
                role: Role::Unlabelled,
                remain_on_exit: true,
            });
        }
        for i in 0..bystanders {
            members.push(Member {
                name: format!("bystander-{i:02}"),
                role: Role::Bystander,
                remain_on_exit: false,
            });
        }
        Ok(Self {
            members,
            dir: dir.to_owned(),
            script,
            python,
            seq: AtomicU64::new(1),
        })
    }

    /// The command line of a member's agent; `by` says who started it (`runner` or `label`).
    pub fn command(&self, m: &Member, by: &str) -> String {
        let role = if m.role == Role::Bystander {
            "bystander"
        } else {
            "agent"
        };
        format!(
            "{} {} {} {} {by} {role}",
            self.python,
            self.script.display(),
            m.name,
            self.dir.display()
        )
    }

    /// Creates a member's session (the runner's own start).
    pub fn create(&self, tmux: &Tmux, m: &Member) -> anyhow::Result<()> {
        let cmd = self.command(m, "runner");
        let restart = self.command(m, "label");
        let labels: Vec<(&str, &str)> = match m.role {
            Role::Labelled => vec![("profile", "claude"), ("restart", &restart)],
            Role::Unlabelled => vec![("profile", "claude")],
            Role::Bystander => vec![],
        };
        tmux.session(&m.name, &cmd, &labels)?;
        if m.remain_on_exit {
            tmux.run(&[
                "set-option",
                "-w",
                "-t",
                &format!("={}:", m.name),
                "remain-on-exit",
                "on",
            ])?;
        }
        Ok(())
    }

    /// Tells a member's running agent to take `mode`.
    pub fn set_mode(&self, m: &Member, mode: &str) -> anyhow::Result<()> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!("{}.mode.tmp", m.name));
        std::fs::write(&tmp, format!("{seq} {mode}\n"))?;
        std::fs::rename(&tmp, self.dir.join(format!("{}.mode", m.name)))?;
        Ok(())
    }

    /// Everything a member's instances recorded, oldest first.
    pub fn events(&self, m: &Member) -> Vec<Event> {
        let text =
            std::fs::read_to_string(self.dir.join(format!("{}.log", m.name))).unwrap_or_default();
        text.lines().filter_map(Event::parse).collect()
    }

    /// Starts a member's agent again as the operator would (the runner's own start): respawns
    /// its dead pane, or creates its session anew when it closed.
    pub fn revive(&self, tmux: &Tmux, m: &Member) -> anyhow::Result<()> {
        if tmux.has_session(&m.name) {
            tmux.run(&[
                "respawn-pane",
                "-k",
                "-t",
                &format!("={}:", m.name),
                &self.command(m, "runner"),
            ])
            .map(drop)
        } else {
            self.create(tmux, m)
        }
    }

    /// True when the member's newest instance is (or died) in a rate-limit cooldown.
    pub fn rate_limited(&self, m: &Member) -> bool {
        let events = self.events(m);
        let Some(start) = events
            .iter()
            .rposition(|e| matches!(e.what, What::Start { .. }))
        else {
            return false;
        };
        let pid = events[start].pid;
        let mine: Vec<&Event> = events[start..].iter().filter(|e| e.pid == pid).collect();
        rate_limit_holds(&mine, f64::INFINITY, &|from, to| to - from)
    }

    /// The pid of the member's newest instance while it runs.
    pub fn live_pid(&self, m: &Member) -> Option<u32> {
        let events = self.events(m);
        let last = events
            .iter()
            .rev()
            .find(|e| matches!(e.what, What::Start { .. }))?;
        let ended = events
            .iter()
            .any(|e| e.pid == last.pid && matches!(e.what, What::Exit(_)));
        (!ended && self.runs(m, last.pid)).then_some(last.pid)
    }

    /// The fake agent's script.
    #[cfg(test)]
    pub fn script(&self) -> &Path {
        &self.script
    }

    /// True while `pid` runs this member's agent: alive, and its command line names the script
    /// and the member (pids are reused: a stale one may be anybody's process by now, and must
    /// never be signalled).
    pub fn runs(&self, m: &Member, pid: u32) -> bool {
        alive(pid)
            && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
                let script = self.script.as_os_str().as_encoded_bytes();
                args.contains(&script) && args.contains(&m.name.as_bytes())
            })
    }
}

/// True when, at `at`, the controller still holds these events' instance in a rate-limit
/// cooldown: it showed its limit, and has not since shown output or its prompt for a second (a
/// thinking line, a hang or a question do not end the episode: a CLI retrying by itself shows a
/// spinner). `seen(from, to)` says how much of a stretch the controller could see: a return to
/// work nobody saw lifts nothing.
pub fn rate_limit_holds(events: &[&Event], at: f64, seen: &dyn Fn(f64, f64) -> f64) -> bool {
    let modes: Vec<(f64, &str)> = events
        .iter()
        .filter(|e| e.t <= at)
        .filter_map(|e| match &e.what {
            What::Mode(m) => Some((e.t, m.as_str())),
            _ => None,
        })
        .collect();
    let mut held = false;
    for (i, (t, mode)) in modes.iter().enumerate() {
        let until = modes.get(i + 1).map_or(at, |(next, _)| *next);
        match *mode {
            "ratelimit" => held = true,
            "work" | "idle" if seen(*t, until) >= 1.0 => held = false,
            _ => {}
        }
    }
    held
}

/// True while `pid` runs (a zombie counts as gone).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .and_then(|i| s.get(i + 2..i + 3))
                .map(|st| st != "Z" && st != "X")
        })
        .unwrap_or(false)
}

/// One line of an agent's log.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Unix seconds.
    pub t: f64,
    pub pid: u32,
    pub what: What,
}

/// What an instance recorded.
#[derive(Debug, Clone, PartialEq)]
pub enum What {
    /// Started, by the runner or by the `@argus-restart` label.
    Start { by_label: bool },
    /// Took a mode.
    Mode(String),
    /// Bytes typed into the pane (hex).
    Input(String),
    /// A signal (its name, `SIGTERM`).
    Signal(String),
    /// Exited by itself: `die`, `signal`, `eof`.
    Exit(String),
}

impl Event {
    fn parse(line: &str) -> Option<Self> {
        let mut w = line.split_whitespace();
        let t = w.next()?.parse().ok()?;
        let pid = w.next()?.parse().ok()?;
        let kind = w.next()?;
        let arg = w.next().unwrap_or_default().to_owned();
        let what = match kind {
            "start" => What::Start {
                by_label: arg == "label",
            },
            "mode" => What::Mode(arg),
            "input" => What::Input(arg),
            "signal" => What::Signal(arg),
            "exit" => What::Exit(arg),
            _ => return None,
        };
        Some(Self { t, pid, what })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines() {
        let e = Event::parse("1700000000.250 42 signal SIGTERM").expect("parses");
        assert_eq!(e.pid, 42);
        assert_eq!(e.what, What::Signal("SIGTERM".into()));
        assert_eq!(
            Event::parse("1.0 7 start label agent").map(|e| e.what),
            Some(What::Start { by_label: true })
        );
        assert!(Event::parse("garbage").is_none());
        assert!(protected("think") && !protected("hang") && !protected("idle"));
    }
}
