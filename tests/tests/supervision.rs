//! Multi-process scenarios: the real controller and node agent against a private tmux server
//! with fake agents. What Argus reports, what it does, and what it must not do.

use std::time::{Duration, Instant};

use argus_proto::v1 as pb;
use argus_tests::cluster::{TestCluster, fake_agent as agent, sref, wait_event};
use argus_tests::eventually;
use argus_tests::tmux::TestTmux;

const FAST: &str = r#"
nudge_dwell = "1s"
nudge_text = "please continue now"
restart_backoff_min = "200ms"
"#;
const WAIT: Duration = Duration::from_secs(20);

fn state(s: &pb::Session) -> pb::SessionState {
    s.state()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn states_conditions_nudges_and_people() -> anyhow::Result<()> {
    let tmux = TestTmux::new();
    let claude = [("profile", "claude")];
    tmux.session("busy", &agent("working"), &claude)?;
    tmux.session("idle", &agent("idle"), &claude)?;
    tmux.session("asks", &agent("permission"), &claude)?;
    let mut c = TestCluster::with_policy(FAST).await?;
    c.start_agent("n1", tmux.socket())?;
    c.wait_session("n1", "idle", "node agent reporting", WAIT, |_| true)
        .await?;
    // Started once the node agent watches, and kept as a dead pane, exit status and all.
    let ends = agent("exit 3");
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "ends",
        &ends,
        ";",
        "set-option",
        "-w",
        "remain-on-exit",
        "on",
    ])?;

    let busy = c
        .wait_session("n1", "busy", "busy agent working and thinking", WAIT, |s| {
            state(s) == pb::SessionState::Working && s.condition() == pb::Condition::Thinking
        })
        .await?;
    assert!(busy.agent_pid > 0, "{busy:?}");
    c.wait_session("n1", "asks", "permission prompt seen", WAIT, |s| {
        s.condition() == pb::Condition::WaitingPermission
    })
    .await?;
    let ends = c
        .wait_session("n1", "ends", "exited agent dead", WAIT, |s| {
            state(s) == pb::SessionState::Dead
        })
        .await?;
    // tmux 3.3a does not always know a dead pane's exit status; when it does, it is reported.
    assert!(
        !ends.reason.contains("status") || ends.reason.contains("status 3"),
        "{ends:?}"
    );

    // The idle agent is warned, then nudged: the nudge text reaches its screen.
    eventually("the nudge on the idle agent's screen", WAIT, || async {
        Ok(tmux
            .capture("idle")?
            .contains("received: please continue now")
            .then_some(()))
    })
    .await?;
    let mut admin = c.admin().await?;
    let idle = admin
        .get_session(pb::GetSessionRequest {
            session: sref("n1", "idle"),
            history_limit: 50,
        })
        .await?
        .into_inner();
    let nudges: Vec<_> = idle
        .commands
        .iter()
        .filter(|k| k.action == "nudge")
        .collect();
    assert!(!nudges.is_empty(), "no nudge in the audit log: {idle:?}");
    assert_eq!(nudges[0].origin, "policy");
    assert!(
        idle.transitions
            .iter()
            .any(|t| t.to() == pb::SessionState::Stalled),
        "idle agent never recorded as stalled: {idle:?}"
    );

    // By now the nudge dwell has passed more than once: the busy agent and the agent waiting for
    // a person got no command at all, and the busy one never stalled.
    for name in ["busy", "asks"] {
        let s = admin
            .get_session(pb::GetSessionRequest {
                session: sref("n1", name),
                history_limit: 50,
            })
            .await?
            .into_inner();
        assert!(
            s.commands.is_empty(),
            "{name} got commands: {:?}",
            s.commands
        );
        if name == "busy" {
            assert!(
                s.transitions
                    .iter()
                    .all(|t| t.to() != pb::SessionState::Stalled),
                "busy agent was marked stalled: {:?}",
                s.transitions
            );
        }
    }
    let asks = c.session("n1", "asks").await?.expect("asks known");
    assert_ne!(state(&asks), pb::SessionState::Stalled, "{asks:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_agent_is_noticed_at_once_and_restarted() -> anyhow::Result<()> {
    let tmux = TestTmux::new();
    let cmd = agent("quiet");
    tmux.session("victim", &cmd, &[("restart", &cmd)])?;
    tmux.session("bystander", &agent("quiet"), &[])?;
    let mut c = TestCluster::with_policy(FAST).await?;
    c.start_agent("n1", tmux.socket())?;
    let before = c
        .wait_session("n1", "victim", "victim running", WAIT, |s| s.agent_pid > 0)
        .await?;

    let mut events = c
        .admin()
        .await?
        .watch_events(pb::WatchEventsRequest {
            node_id: "n1".into(),
        })
        .await?
        .into_inner();
    let killed_at = Instant::now();
    std::process::Command::new("kill")
        .args(["-KILL", &before.agent_pid.to_string()])
        .status()?;
    wait_event(&mut events, "the death", WAIT, |e| {
        e.session_name == "victim" && e.kind == "transition"
    })
    .await?;
    let noticed = killed_at.elapsed();
    println!("SIGKILL noticed by the controller after {noticed:?}");
    assert!(
        noticed < Duration::from_secs(1),
        "death noticed only after {noticed:?}"
    );

    let after = c
        .wait_session("n1", "victim", "victim restarted", WAIT, |s| {
            s.agent_pid > 0
                && s.agent_pid != before.agent_pid
                && state(s) == pb::SessionState::Working
        })
        .await?;
    println!("restarted agent running after {:?}", killed_at.elapsed());
    assert!(tmux.has_session("victim"));
    let b = c.session("n1", "bystander").await?.expect("bystander");
    assert!(
        b.agent_pid > 0 && state(&b).ne(&pb::SessionState::Dead),
        "{b:?}"
    );
    let _ = after;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_removes_exactly_the_target() -> anyhow::Result<()> {
    let tmux = TestTmux::new();
    for name in ["build", "build-2", "buildx", "other"] {
        tmux.session(name, &agent("quiet"), &[])?;
    }
    let mut c = TestCluster::with_policy(FAST).await?;
    c.start_agent("n1", tmux.socket())?;
    for name in ["build", "build-2", "buildx", "other"] {
        c.wait_session("n1", name, "session known", WAIT, |s| s.agent_pid > 0)
            .await?;
    }
    let target_pid = tmux.pane_pid("build")?;
    let r = c
        .admin()
        .await?
        .kill(pb::KillRequest {
            session: sref("n1", "build"),
            grace_ms: 500,
        })
        .await?
        .into_inner();
    assert_eq!(r.status(), pb::CommandStatus::Ok, "{r:?}");
    assert!(!tmux.has_session("build"));
    for name in ["build-2", "buildx", "other"] {
        assert!(tmux.has_session(name), "{name} was killed too");
    }
    // Gone, or at most a zombie until tmux reaps it.
    eventually("the killed agent process to end", WAIT, || async {
        let stat = std::fs::read_to_string(format!("/proc/{target_pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next());
        Ok(matches!(state, None | Some("Z")).then_some(()))
    })
    .await?;
    c.wait_session("n1", "build", "killed session dead", WAIT, |s| {
        state(s) == pb::SessionState::Dead
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_agent_reconnects_and_history_survives_a_controller_restart() -> anyhow::Result<()> {
    let tmux = TestTmux::new();
    tmux.session("keep", &agent("working"), &[("profile", "claude")])?;
    let mut c = TestCluster::with_policy(FAST).await?;
    c.start_agent("n1", tmux.socket())?;
    c.wait_session("n1", "keep", "working", WAIT, |s| {
        state(s) == pb::SessionState::Working
    })
    .await?;
    let capture = c
        .admin()
        .await?
        .capture(pb::CaptureRequest {
            session: sref("n1", "keep"),
            lines: 5,
        })
        .await?
        .into_inner();
    assert!(capture.output.contains("esc to interrupt"), "{capture:?}");
    let epoch1 = c
        .admin()
        .await?
        .list_nodes(pb::ListNodesRequest {})
        .await?
        .into_inner()
        .nodes[0]
        .epoch;

    c.stop_controller();
    c.start_controller().await?;
    let node = eventually("the node agent to reattach", WAIT, || async {
        let nodes = c
            .admin()
            .await?
            .list_nodes(pb::ListNodesRequest {})
            .await?
            .into_inner()
            .nodes;
        Ok(nodes.into_iter().find(|n| n.connected))
    })
    .await?;
    assert!(
        node.epoch > epoch1,
        "epoch {} not above {epoch1}",
        node.epoch
    );
    c.wait_session("n1", "keep", "working again", WAIT, |s| {
        state(s) == pb::SessionState::Working
    })
    .await?;
    let s = c
        .admin()
        .await?
        .get_session(pb::GetSessionRequest {
            session: sref("n1", "keep"),
            history_limit: 50,
        })
        .await?
        .into_inner();
    assert!(
        s.commands
            .iter()
            .any(|k| k.command_id == capture.command_id),
        "the capture from before the restart is missing: {:?}",
        s.commands
    );
    assert!(
        s.transitions
            .iter()
            .any(|t| t.to() == pb::SessionState::Working),
        "transitions from before the restart are missing: {:?}",
        s.transitions
    );
    Ok(())
}
