//! Restarting the controller is a non-event: sessions that died, vanished or came back while it
//! was stopped are reconciled from the store and the node agent's first snapshot (labelled deaths
//! are restarted), ended sessions keep their history, and commands left pending by the stopped
//! controller are closed, a late answer still recorded. Real controller processes on one SQLite
//! database, the real node agent on a private tmux server (or a scripted node agent where the
//! node must not answer).

use std::time::Duration;

use anyhow::Context;
use argus_proto::v1 as pb;
use argus_proto::v1::node_agent_service_client::NodeAgentServiceClient;
use argus_tests::cluster::{TestCluster, fake_agent as agent, sref};
use argus_tests::eventually;
use argus_tests::tmux::TestTmux;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

// Three agents die during the outage in this file's first test: more than that on one host at
// once is a mass death, whose hold would delay the restarts (see decisions.md).
const FAST: &str = r#"
restart_backoff_min = "200ms"
mass_death_deaths = 4
"#;
const WAIT: Duration = Duration::from_secs(30);

fn state(s: &pb::Session) -> pb::SessionState {
    s.state()
}

async fn get_session(c: &TestCluster, name: &str) -> anyhow::Result<pb::GetSessionResponse> {
    Ok(c.admin()
        .await?
        .get_session(pb::GetSessionRequest {
            session: sref("n1", name),
            history_limit: 100,
        })
        .await?
        .into_inner())
}

/// `fake-agent` under the name `claude` (a symlink), so that the claude profile recognises it
/// as an agent under a shell.
fn claude_binary(dir: &std::path::Path) -> anyhow::Result<String> {
    let target = argus_tests::binary("fake-agent")?;
    let link = dir.join("claude");
    std::os::unix::fs::symlink(target, &link)?;
    Ok(link.display().to_string())
}

fn kill9(pid: u32) -> anyhow::Result<()> {
    let ok = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()?
        .success();
    anyhow::ensure!(ok, "kill -KILL {pid} failed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deaths_during_a_controller_outage_are_reconciled_and_restarted() -> anyhow::Result<()> {
    let tmux = TestTmux::new();
    let bin = tempfile::tempdir()?;
    let claude = claude_binary(bin.path())?;
    // The agent runs under a shell that stays: its death leaves a live pane without an agent.
    let shelled = format!("{claude} quiet; exec sh");
    tmux.session(
        "shelled",
        &shelled,
        &[("restart", &format!("{claude} quiet"))],
    )?;
    // The agent is the pane: its death closes the tmux session.
    let quiet = agent("quiet");
    tmux.session("vanish", &quiet, &[("restart", &quiet)])?;
    // Not opted into restarts: it is recorded dead, never brought back.
    tmux.session("plain", &agent("quiet"), &[])?;
    let mut c = TestCluster::with_policy(FAST).await?;
    c.start_agent("n1", tmux.socket())?;
    let mut before = Vec::new();
    for name in ["shelled", "vanish", "plain"] {
        let s = c
            .wait_session("n1", name, "agent working", WAIT, |s| {
                s.agent_pid > 0 && state(s) == pb::SessionState::Working
            })
            .await?;
        before.push(s.agent_pid);
    }

    // The controller stops; all three agents die while it is away.
    c.stop_controller();
    for pid in &before {
        kill9(*pid)?;
    }
    eventually("the plain and vanish sessions to close", WAIT, || async {
        Ok((!tmux.has_session("vanish") && !tmux.has_session("plain")).then_some(()))
    })
    .await?;
    c.start_controller().await?;

    let shelled = c
        .wait_session("n1", "shelled", "shelled restarted", WAIT, |s| {
            s.agent_pid > 0 && s.agent_pid != before[0] && state(s) == pb::SessionState::Working
        })
        .await
        .with_context(|| c.controller_log())?;
    let history = get_session(&c, "shelled").await?;
    assert!(
        history
            .transitions
            .iter()
            .any(|t| t.to() == pb::SessionState::Zombie),
        "the death was not recorded: {history:?}"
    );
    assert!(
        history
            .commands
            .iter()
            .any(|k| k.action == "restart" && k.origin == "policy"),
        "{history:?}"
    );
    let _ = shelled;

    c.wait_session("n1", "vanish", "vanish restarted", WAIT, |s| {
        s.agent_pid > 0 && s.agent_pid != before[1] && state(s) == pb::SessionState::Working
    })
    .await?;
    assert!(tmux.has_session("vanish"));

    let plain = c
        .wait_session("n1", "plain", "plain recorded dead", WAIT, |s| {
            state(s) == pb::SessionState::Dead
        })
        .await?;
    assert!(!tmux.has_session("plain"), "{plain:?}");
    let history = get_session(&c, "plain").await?;
    assert!(history.commands.is_empty(), "{history:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_session_keeps_its_history_across_a_restart_until_retention() -> anyhow::Result<()>
{
    let tmux = TestTmux::new();
    tmux.session("victim", &agent("quiet"), &[("profile", "claude")])?;
    let mut c = TestCluster::with_policy(
        r#"
forget_dead_after = "12s"
"#,
    )
    .await?;
    c.start_agent("n1", tmux.socket())?;
    c.wait_session("n1", "victim", "working", WAIT, |s| {
        state(s) == pb::SessionState::Working
    })
    .await?;
    let kill = c
        .admin()
        .await?
        .kill(pb::KillRequest {
            session: sref("n1", "victim"),
            grace_ms: 500,
        })
        .await?
        .into_inner();
    c.wait_session("n1", "victim", "dead", WAIT, |s| {
        state(s) == pb::SessionState::Dead
    })
    .await?;

    c.stop_controller();
    c.start_controller().await?;
    // Listed as dead at once, before the node agent is back, with its history.
    let listed = c.session("n1", "victim").await?.context("victim listed")?;
    assert_eq!(state(&listed), pb::SessionState::Dead, "{listed:?}");
    let s = get_session(&c, "victim").await?;
    assert_eq!(s.session.as_ref().map(state), Some(pb::SessionState::Dead));
    assert!(
        s.commands
            .iter()
            .any(|k| k.command_id == kill.command_id && k.action == "kill"),
        "{s:?}"
    );
    assert!(
        s.transitions
            .iter()
            .any(|t| t.to() == pb::SessionState::Dead),
        "{s:?}"
    );

    // After the retention it leaves the live view; its history stays readable.
    eventually("victim to leave the live view", WAIT, || async {
        Ok(c.session("n1", "victim").await?.is_none().then_some(()))
    })
    .await?;
    let s = get_session(&c, "victim").await?;
    assert_eq!(s.session.as_ref().map(state), Some(pb::SessionState::Dead));
    assert!(
        s.commands.iter().any(|k| k.command_id == kill.command_id),
        "{s:?}"
    );
    Ok(())
}

/// A scripted node agent: attaches, reports one session, and answers only when told.
struct ScriptedNode {
    tx: mpsc::Sender<pb::AgentMessage>,
    inbound: tonic::Streaming<pb::ControllerMessage>,
}

impl ScriptedNode {
    async fn attach(url: &str) -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::channel(16);
        tx.send(pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::Hello(pb::Hello {
                node_id: "n1".into(),
                hostname: "scripted".into(),
                ..Default::default()
            })),
        })
        .await?;
        let mut inbound = NodeAgentServiceClient::connect(url.to_owned())
            .await?
            .attach(ReceiverStream::new(rx))
            .await?
            .into_inner();
        inbound.message().await?.context("no Welcome")?;
        tx.send(pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::Report(pb::Report {
                full_snapshot: true,
                sessions: vec![pb::SessionObservation {
                    tmux_socket: "/tmp/scripted.sock".into(),
                    session_name: "work".into(),
                    pane_id: "%1".into(),
                    agent: Some(pb::Incarnation {
                        pid: 4242,
                        start_time: 1,
                    }),
                    agent_name: "claude".into(),
                    profile: "claude".into(),
                    ..Default::default()
                }],
                ..Default::default()
            })),
        })
        .await?;
        Ok(Self { tx, inbound })
    }

    async fn next_command(&mut self) -> anyhow::Result<pb::Command> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.inbound.message())
                .await
                .context("no command")??
                .context("stream ended")?;
            if let Some(pb::controller_message::Msg::Command(cmd)) = msg.msg {
                return Ok(cmd);
            }
        }
    }

    async fn answer(&self, command_id: &str, status: pb::CommandStatus) -> anyhow::Result<()> {
        self.tx
            .send(pb::AgentMessage {
                msg: Some(pb::agent_message::Msg::Result(pb::CommandResult {
                    command_id: command_id.to_owned(),
                    status: status as i32,
                    message: "killed after all".into(),
                    ..Default::default()
                })),
            })
            .await?;
        Ok(())
    }
}

async fn audit(c: &TestCluster, command_id: &str) -> anyhow::Result<Option<pb::CommandRecord>> {
    let s = c
        .admin()
        .await?
        .get_session(pb::GetSessionRequest {
            session: sref("n1", "work"),
            history_limit: 50,
        })
        .await?
        .into_inner();
    Ok(s.commands.into_iter().find(|k| k.command_id == command_id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_left_pending_by_a_killed_controller_are_closed_and_late_results_kept()
-> anyhow::Result<()> {
    let mut c = TestCluster::with_policy(
        r#"
command_timeout = "2s"
"#,
    )
    .await?;
    let mut node = ScriptedNode::attach(&c.url()).await?;
    eventually("the session listed", WAIT, || async {
        c.session("n1", "work").await
    })
    .await?;
    // A kill the node agent does not answer; the controller is SIGKILLed while it waits.
    let mut admin = c.admin().await?;
    let call = tokio::spawn(async move {
        admin
            .kill(pb::KillRequest {
                session: sref("n1", "work"),
                grace_ms: 100,
            })
            .await
    });
    let cmd = node.next_command().await?;
    eventually("the kill in the audit", WAIT, || async {
        audit(&c, &cmd.command_id).await
    })
    .await?;
    c.controller
        .as_mut()
        .context("controller running")?
        .proc
        .kill();
    let _ = call.await;
    drop(node);

    // The next controller closes it: no answer came, and the node may have run it.
    c.start_controller().await?;
    let closed = eventually("the pending kill closed", WAIT, || async {
        Ok(audit(&c, &cmd.command_id)
            .await?
            .filter(|k| k.status() != pb::CommandStatus::Unspecified))
    })
    .await?;
    assert_eq!(closed.status(), pb::CommandStatus::Unknown, "{closed:?}");
    assert!(closed.finished_at_ms > 0, "{closed:?}");

    // The node agent reconnects and reports the result after all: recorded, marked late.
    let node = ScriptedNode::attach(&c.url()).await?;
    node.answer(&cmd.command_id, pb::CommandStatus::Ok).await?;
    let late = eventually("the late result recorded", WAIT, || async {
        Ok(audit(&c, &cmd.command_id)
            .await?
            .filter(|k| k.status() == pb::CommandStatus::Ok))
    })
    .await?;
    assert!(late.result_message.contains("late"), "{late:?}");
    assert!(late.result_message.contains("killed after all"), "{late:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_waiting_for_its_backoff_is_carried_out_by_the_next_controller()
-> anyhow::Result<()> {
    let tmux = TestTmux::new();
    let quiet = agent("quiet");
    tmux.session("crashy", &quiet, &[("restart", &quiet)])?;
    // The first restart waits 5 to 10 s: the controller is stopped before it is due.
    let mut c = TestCluster::with_policy(
        r#"
restart_backoff_min = "10s"
"#,
    )
    .await?;
    c.start_agent("n1", tmux.socket())?;
    let before = c
        .wait_session("n1", "crashy", "working", WAIT, |s| {
            s.agent_pid > 0 && state(s) == pb::SessionState::Working
        })
        .await?;
    kill9(before.agent_pid)?;
    c.wait_session("n1", "crashy", "dead", WAIT, |s| {
        state(s) == pb::SessionState::Dead
    })
    .await?;
    c.stop_controller();
    assert!(
        !tmux.has_session("crashy"),
        "restarted before the controller stopped"
    );

    c.start_controller().await?;
    c.wait_session(
        "n1",
        "crashy",
        "restarted by the next controller",
        WAIT,
        |s| {
            s.agent_pid > 0
                && s.agent_pid != before.agent_pid
                && state(s) == pb::SessionState::Working
        },
    )
    .await
    .with_context(|| c.controller_log())?;
    assert!(tmux.has_session("crashy"));
    let restarts: Vec<_> = get_session(&c, "crashy")
        .await?
        .commands
        .into_iter()
        .filter(|k| k.action == "restart")
        .collect();
    assert_eq!(restarts.len(), 1, "{restarts:?}");
    Ok(())
}
