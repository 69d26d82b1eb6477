//! Executes the controller's commands, safely: fenced by epoch and id, refused after their
//! deadline or when the agent they were meant for is gone, targeted by tmux ids only (`$N`,
//! `%N`), resolved and checked against the session's name right before the action.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use argus_proto::v1 as pb;
use argus_shared::command::Action;
use argus_shared::profile::Profiles;
use argus_shared::time::now_ms;
use rustix::process::Signal;
use tokio::sync::{Mutex, watch};

use crate::fence::{Fence, FenceError};
use crate::probe::Snapshot;
use crate::procs;
use crate::tmux::{CreateError, TargetError, Tmux};
use argus_shared::command::{shell_command_from_tmux, split_tmux_command};

/// Most processes signalled in one kill.
const KILL_TREE_LIMIT: usize = 512;

/// Runs commands against the node's tmux servers.
pub struct Executor {
    servers: HashMap<String, Arc<Tmux>>,
    fence: Arc<Mutex<Fence>>,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    profiles: Arc<Profiles>,
}

type Outcome = (pb::CommandStatus, String, String);

impl Executor {
    /// An executor over `servers` (by socket path).
    pub fn new(
        servers: &[Arc<Tmux>],
        fence: Arc<Mutex<Fence>>,
        snapshot: watch::Receiver<Arc<Snapshot>>,
        profiles: Arc<Profiles>,
    ) -> Self {
        Self {
            servers: servers
                .iter()
                .map(|t| (t.socket().display().to_string(), t.clone()))
                .collect(),
            fence,
            snapshot,
            profiles,
        }
    }

    /// Checks and executes one command; never fails, the outcome is in the result.
    pub async fn execute(&self, cmd: pb::Command) -> pb::CommandResult {
        let id = cmd.command_id.clone();
        let (status, message, output) = self.check_and_run(cmd).await;
        if status != pb::CommandStatus::Ok {
            tracing::info!(command = %id, status = ?status, %message, "command refused or failed");
        }
        pb::CommandResult {
            command_id: id,
            status: status as i32,
            message,
            output,
        }
    }

    async fn check_and_run(&self, cmd: pb::Command) -> Outcome {
        use pb::CommandStatus as S;
        let refuse = |s: S, m: String| (s, m, String::new());
        if cmd.command_id.is_empty() {
            return refuse(S::Invalid, "command has no id".into());
        }
        match self.fence.lock().await.admit(&cmd.command_id, cmd.epoch) {
            Ok(()) => {}
            Err(e @ FenceError::Stale { .. }) => return refuse(S::StaleEpoch, e.to_string()),
            Err(e @ FenceError::Duplicate(_)) => return refuse(S::Duplicate, e.to_string()),
        }
        if now_ms() > cmd.not_after_ms {
            return refuse(
                S::Expired,
                format!("deadline {} ms passed", cmd.not_after_ms),
            );
        }
        let action = match cmd.action.map(Action::try_from) {
            Some(Ok(a)) => a,
            Some(Err(e)) => return refuse(S::Invalid, e.to_string()),
            None => return refuse(S::Invalid, "command has no action".into()),
        };
        let socket = if cmd.tmux_socket.is_empty() && self.servers.len() == 1 {
            self.servers.keys().next().cloned().unwrap_or_default()
        } else {
            cmd.tmux_socket.clone()
        };
        let Some(tmux) = self.servers.get(&socket).cloned() else {
            return refuse(
                S::NoSuchSession,
                format!("tmux server {socket:?} is not watched by this node agent"),
            );
        };
        let session = self
            .snapshot
            .borrow()
            .sessions
            .get(&(socket.clone(), cmd.session_name.clone()))
            .cloned();
        let Some(session) = session else {
            // Only a restart may target a session that is gone: it creates it anew.
            if let Action::Restart {
                command,
                cwd,
                labels,
            } = &action
            {
                return self
                    .recreate(&tmux, &cmd.session_name, command, cwd, labels)
                    .await;
            }
            return refuse(
                S::NoSuchSession,
                format!("no session named {:?} on {socket}", cmd.session_name),
            );
        };
        if let Some(want) = &cmd.incarnation
            && !matches_incarnation(&session, want)
        {
            return refuse(
                S::WrongIncarnation,
                format!(
                    "agent pid {} (start {}) is no longer the agent of session {:?}",
                    want.pid, want.start_time, cmd.session_name
                ),
            );
        }
        if let Err(refused) = self.check_target(&tmux, &session, &cmd.session_name).await {
            // A restart of a session that vanished a moment ago creates it anew.
            if let (
                TargetError::Gone { .. },
                Action::Restart {
                    command,
                    cwd,
                    labels,
                },
            ) = (&refused, &action)
            {
                return self
                    .recreate(&tmux, &cmd.session_name, command, cwd, labels)
                    .await;
            }
            return refused_target(refused);
        }
        let restart = match &action {
            Action::Restart {
                command,
                cwd,
                labels,
            } => Some((command.clone(), cwd.clone(), labels.clone())),
            _ => None,
        };
        match self.run(&tmux, &session, action).await {
            Ok(output) => (S::Ok, String::new(), output),
            // The session closed between the last probe and this restart (its agent died a
            // moment ago): create it anew instead.
            Err(e)
                if restart.is_some() && (e.contains("can't find") || e.contains("no server")) =>
            {
                let (command, cwd, labels) = restart.unwrap_or_default();
                self.recreate(&tmux, &cmd.session_name, &command, &cwd, &labels)
                    .await
            }
            Err(e) => (S::Failed, e, String::new()),
        }
    }

    async fn run(
        &self,
        tmux: &Tmux,
        s: &pb::SessionObservation,
        action: Action,
    ) -> Result<String, String> {
        let pane = s.pane_id.as_str();
        let e = |e: crate::tmux::TmuxError| e.to_string();
        match action {
            Action::Nudge { text } => {
                tmux.send_literal(pane, &text).await.map_err(e)?;
                let profile = self.profiles.get(&s.profile);
                // Some TUIs take an Enter that arrives right behind pasted text as part of the
                // paste (Codex): the profile says how long to let the text settle first.
                if let Some(delay) = profile.map(|p| p.submit_delay()).filter(|d| !d.is_zero()) {
                    tokio::time::sleep(delay).await;
                }
                let keys = profile
                    .map(|p| p.submit_keys().to_vec())
                    .unwrap_or_else(|| vec!["Enter".to_owned()]);
                for key in keys {
                    tmux.send_key(pane, &key).await.map_err(e)?;
                }
                Ok(String::new())
            }
            Action::Interrupt => {
                // The key that stops a turn without ending the CLI differs (Codex: Escape).
                let keys = self
                    .profiles
                    .get(&s.profile)
                    .map(|p| p.interrupt_keys().to_vec())
                    .unwrap_or_else(|| vec!["C-c".to_owned()]);
                for key in keys {
                    tmux.send_key(pane, &key).await.map_err(e)?;
                }
                Ok(String::new())
            }
            Action::Capture { lines } => {
                let text = tmux.capture(pane, lines).await.map_err(e)?;
                Ok(argus_shared::screen::last_lines(&text, lines as usize).to_owned())
            }
            Action::Kill { grace_ms } => self.kill(tmux, s, grace_ms).await,
            Action::Restart { command, .. } => {
                let argv = restart_argv(&command, s, &self.profiles);
                tmux.respawn_pane(pane, &argv)
                    .await
                    .map(|()| String::new())
                    .map_err(e)
            }
        }
    }

    async fn recreate(
        &self,
        tmux: &Tmux,
        name: &str,
        command: &str,
        cwd: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Outcome {
        if command.is_empty() {
            return (
                pb::CommandStatus::NoSuchSession,
                format!(
                    "session {name:?} is gone and the restart names no command to start it with"
                ),
                String::new(),
            );
        }
        match tmux
            .create_session(name, cwd, &[command.to_owned()], labels)
            .await
        {
            Ok(id) => (
                pb::CommandStatus::Ok,
                format!("session {name:?} created anew ({id})"),
                String::new(),
            ),
            Err(err @ CreateError::Name(_)) => {
                (pb::CommandStatus::Invalid, err.to_string(), String::new())
            }
            Err(err) => (pb::CommandStatus::Failed, err.to_string(), String::new()),
        }
    }

    /// Checks, right before acting, that the session observed as `s` is still there under its
    /// ids: its pane `%N` in its session `$N`, and that session still named `name`.
    async fn check_target(
        &self,
        tmux: &Tmux,
        s: &pb::SessionObservation,
        name: &str,
    ) -> Result<(), TargetError> {
        tmux.resolve(&s.session_id, &s.pane_id, name)
            .await
            .map(drop)
    }

    /// SIGTERM to the pane's process tree, SIGKILL after `grace_ms`, then the session by its id,
    /// if it is still the same session on the same server (it usually closes by itself when its
    /// last process ends). Runs to the end once started, whatever happens to the link.
    async fn kill(
        &self,
        tmux: &Tmux,
        s: &pb::SessionObservation,
        grace_ms: u32,
    ) -> Result<String, String> {
        let target = match tmux
            .resolve(&s.session_id, &s.pane_id, &s.session_name)
            .await
        {
            Ok(t) => t,
            // Closed since the check: that is the goal.
            Err(TargetError::Gone { .. }) => return Ok(String::new()),
            Err(e) => return Err(e.to_string()),
        };
        if !s.pane_dead {
            tracing::info!(session = %s.session_name, id = %target.session_id, pane = %target.pane_id, pid = s.pane_pid, grace_ms, "kill: SIGTERM to the pane's process tree, SIGKILL after the grace");
            terminate_tree(s.pane_pid, Duration::from_millis(grace_ms.into())).await;
        }
        tmux.kill_target(&target)
            .await
            .map(|_| String::new())
            .map_err(|e| e.to_string())
    }
}

/// The outcome of a command whose target did not check out.
fn refused_target(e: TargetError) -> Outcome {
    let status = match &e {
        TargetError::Gone { .. } | TargetError::Renamed { .. } | TargetError::NoIds { .. } => {
            pb::CommandStatus::NoSuchSession
        }
        TargetError::PaneGone { .. } => pb::CommandStatus::WrongIncarnation,
        TargetError::Tmux(_) => pb::CommandStatus::Failed,
    };
    (status, e.to_string(), String::new())
}

/// True when `want` is the session's current agent (or, without one, its pane process) and it
/// still runs.
fn matches_incarnation(s: &pb::SessionObservation, want: &pb::Incarnation) -> bool {
    let current = s.agent.as_ref().map(|a| (a.pid, a.start_time));
    let is_current = current == Some((want.pid, want.start_time))
        || (current.is_none() && s.pane_pid == want.pid);
    is_current && procs::alive(want.pid, want.start_time)
}

/// The argv for respawn-pane: the given command, else `@argus-restart`, else the pane's own start
/// command; a single string is run by tmux through the shell. A recognised agent started again
/// from its own start command (none given, or the one the controller derives from it) resumes
/// its conversation in its CLI's own form (`claude --continue`, `codex resume --last`); a
/// command of the operator's (`@argus-restart`, or any other) is taken as it is.
fn restart_argv(command: &str, s: &pb::SessionObservation, profiles: &Profiles) -> Vec<String> {
    let label = s
        .labels
        .get(argus_shared::labels::RESTART)
        .filter(|l| !l.is_empty());
    let own = shell_command_from_tmux(&s.start_command);
    let from_start = if command.is_empty() {
        label.is_none()
    } else {
        command == own && label.is_none_or(|l| l != command)
    };
    if from_start && let Some(profile) = agent_profile(s, profiles).filter(|p| p.resume().is_some())
    {
        return vec![profile.resume_command(&own)];
    }
    if !command.is_empty() {
        return vec![command.to_owned()];
    }
    if let Some(label) = label {
        return vec![label.clone()];
    }
    split_tmux_command(&s.start_command)
}

/// The session's agent profile, else the one its start command matches (the agent may have
/// died already, so its process is gone). None for the generic profile.
fn agent_profile<'a>(
    s: &pb::SessionObservation,
    profiles: &'a Profiles,
) -> Option<&'a argus_shared::profile::Profile> {
    let argv = split_tmux_command(&s.start_command);
    let program = argv.first()?;
    let comm = program.rsplit('/').next().unwrap_or(program);
    profiles
        .get(&s.profile)
        .filter(|p| p.name != argus_shared::profile::GENERIC)
        .or_else(|| profiles.match_process(comm, &argv.join(" ")))
}

/// SIGTERM to the tree under `root`, deepest first; wait up to `grace`; SIGKILL what is left.
async fn terminate_tree(root: u32, grace: Duration) {
    let tree = tokio::task::spawn_blocking(move || procs::tree(root, KILL_TREE_LIMIT))
        .await
        .unwrap_or_default();
    for p in tree.iter().rev() {
        let _ = procs::signal(p.pid, Signal::TERM);
    }
    let deadline = tokio::time::Instant::now() + grace;
    let alive = |tree: &[procs::ProcStat]| {
        tree.iter()
            .filter(|p| procs::alive(p.pid, p.start_time))
            .count()
    };
    while alive(&tree) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for p in tree.iter().rev() {
        if procs::alive(p.pid, p.start_time) {
            let _ = procs::signal(p.pid, Signal::KILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(start_command: &str, profile: &str) -> pb::SessionObservation {
        pb::SessionObservation {
            start_command: start_command.to_owned(),
            profile: profile.to_owned(),
            ..Default::default()
        }
    }

    #[test]
    fn a_recognised_agent_restarts_in_its_resume_form() {
        let p = Profiles::builtin();
        assert_eq!(
            restart_argv("", &obs("claude", "claude"), &p),
            ["claude --continue"]
        );
        // Recognised from the start command when the agent is already gone.
        assert_eq!(
            restart_argv("", &obs("codex --model gpt-5", ""), &p),
            ["codex resume --last --model gpt-5"]
        );
        assert_eq!(
            restart_argv("", &obs("\"aider\" --model \"a b\"", "aider"), &p),
            ["aider --restore-chat-history --model 'a b'"]
        );
        // The policy's restart names the start command as the controller derives it.
        let s = obs("\"claude\" \"--model\" \"opus\"", "claude");
        let own = shell_command_from_tmux(&s.start_command);
        assert_eq!(
            restart_argv(&own, &s, &p),
            ["claude --continue --model opus"]
        );
    }

    #[test]
    fn other_commands_restart_as_they_are() {
        let p = Profiles::builtin();
        assert_eq!(
            restart_argv("", &obs("npm run dev", "shell"), &p),
            ["npm", "run", "dev"]
        );
        assert_eq!(
            restart_argv("claude -p x", &obs("claude", "claude"), &p),
            ["claude -p x"]
        );
        assert_eq!(
            restart_argv("", &obs("claude --continue", "claude"), &p),
            ["claude --continue"]
        );
        // @argus-restart is the operator's command, as it is.
        let mut s = obs("claude", "claude");
        s.labels.insert("restart".into(), "claude --model x".into());
        assert_eq!(restart_argv("", &s, &p), ["claude --model x"]);
        assert_eq!(
            restart_argv("claude --model x", &s, &p),
            ["claude --model x"]
        );
    }
}
