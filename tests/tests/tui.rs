//! Acting on a TUI the way it expects, through the real controller and node agent on a private
//! tmux server with fake agents: a nudge is confirmed on the screen, an interrupt that could end
//! the agent is declined, a session created anew keeps its size. (The real CLIs:
//! `tests/real-agents/actions.sh`.)

use std::time::Duration;

use argus_proto::v1 as pb;
use argus_tests::cluster::{TestCluster, fake_agent as agent, sref, wait_event};
use argus_tests::eventually;
use argus_tests::tmux::TestTmux;

const WAIT: Duration = Duration::from_secs(20);
const CLAUDE: [(&str, &str); 1] = [("profile", "claude")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nudge_is_confirmed_and_the_audit_says_whether_it_was_delivered() -> anyhow::Result<()> {
    let tmux = TestTmux::new();
    // Reads its input line by line at a "❯" prompt.
    tmux.session("idle", &agent("idle"), &CLAUDE)?;
    // Reads nothing: typed text stays on the terminal's line, never submitted.
    tmux.session("deaf", &agent("quiet"), &CLAUDE)?;
    let mut c = TestCluster::with_policy("").await?;
    c.start_agent("n1", tmux.socket())?;
    for name in ["idle", "deaf"] {
        c.wait_session("n1", name, "agent known", WAIT, |s| s.agent_pid > 0)
            .await?;
    }
    let mut admin = c.admin().await?;
    let mut events = admin
        .watch_events(pb::WatchEventsRequest::default())
        .await?
        .into_inner();
    let nudge = |name: &str| pb::NudgeRequest {
        session: sref("n1", name),
        text: "please continue".into(),
    };

    let r = admin.nudge(nudge("idle")).await?.into_inner();
    assert_eq!(r.status(), pb::CommandStatus::Ok, "{r:?}");
    assert!(r.message.starts_with("delivered"), "{r:?}");
    assert!(tmux.capture("idle")?.contains("received: please continue"));
    let e = wait_event(&mut events, "the delivered result", WAIT, |e| {
        e.kind == "command_result" && e.session_name == "idle"
    })
    .await?;
    assert!(e.message.contains("delivered"), "{e:?}");

    let r = admin.nudge(nudge("deaf")).await?.into_inner();
    assert_eq!(r.status(), pb::CommandStatus::Failed, "{r:?}");
    assert!(r.message.starts_with("not delivered"), "{r:?}");
    let e = wait_event(&mut events, "the undelivered result", WAIT, |e| {
        e.kind == "command_result" && e.session_name == "deaf"
    })
    .await?;
    assert!(e.message.contains("not delivered"), "{e:?}");

    // The audit: each session's command history says which.
    for (name, want) in [("idle", "delivered"), ("deaf", "not delivered")] {
        let history = eventually("the recorded result", WAIT, || {
            let mut admin = admin.clone();
            async move {
                let s = admin
                    .get_session(pb::GetSessionRequest {
                        session: sref("n1", name),
                        history_limit: 10,
                    })
                    .await?
                    .into_inner();
                Ok(s.commands
                    .into_iter()
                    .find(|k| k.action == "nudge" && !k.result_message.is_empty()))
            }
        })
        .await?;
        assert!(
            history.result_message.starts_with(want),
            "{name}: {history:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupt_that_could_end_the_agent_is_declined() -> anyhow::Result<()> {
    let tmux = TestTmux::new();
    tmux.session("idle", &agent("idle"), &CLAUDE)?;
    tmux.session("stuck", &agent("quiet"), &CLAUDE)?;
    let mut c = TestCluster::with_policy("").await?;
    c.start_agent("n1", tmux.socket())?;
    let mut pids = Vec::new();
    for name in ["idle", "stuck"] {
        let s = c
            .wait_session("n1", name, "agent known", WAIT, |s| s.agent_pid > 0)
            .await?;
        pids.push(s.agent_pid);
    }
    let mut admin = c.admin().await?;
    // At its idle prompt there is nothing to interrupt.
    let r = admin
        .interrupt(sref("n1", "idle").unwrap_or_default())
        .await?
        .into_inner();
    assert_eq!(r.status(), pb::CommandStatus::Declined, "{r:?}");
    assert!(r.message.contains("at its prompt"), "{r:?}");
    // Mid-turn: sent; a second one right behind it is within Claude's window.
    let r = admin
        .interrupt(sref("n1", "stuck").unwrap_or_default())
        .await?
        .into_inner();
    assert_eq!(r.status(), pb::CommandStatus::Ok, "{r:?}");
    let r = admin
        .interrupt(sref("n1", "stuck").unwrap_or_default())
        .await?
        .into_inner();
    assert_eq!(r.status(), pb::CommandStatus::Declined, "{r:?}");
    assert!(r.message.contains("within 2000 ms"), "{r:?}");
    for pid in pids {
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "agent {pid} ended"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_created_anew_keeps_its_window_size() -> anyhow::Result<()> {
    let tmux = TestTmux::new();
    // 120x30 (tmux's own default for a new session is 80x24); another session keeps the server.
    tmux.session("sized", &agent("idle"), &[])?;
    tmux.session("keeper", &agent("quiet"), &[])?;
    let mut c = TestCluster::with_policy("").await?;
    c.start_agent("n1", tmux.socket())?;
    c.wait_session("n1", "sized", "agent known", WAIT, |s| s.agent_pid > 0)
        .await?;
    tmux.run(&["kill-session", "-t", "=sized"])?;
    c.wait_session("n1", "sized", "gone", WAIT, |s| {
        s.state() == pb::SessionState::Dead
    })
    .await?;
    let r = c
        .admin()
        .await?
        .restart(pb::RestartRequest {
            session: sref("n1", "sized"),
            command: String::new(),
        })
        .await?
        .into_inner();
    assert_eq!(r.status(), pb::CommandStatus::Ok, "{r:?}");
    assert!(r.message.contains("120x30"), "{r:?}");
    let size = tmux.run(&[
        "display-message",
        "-p",
        "-t",
        "=sized:",
        "#{window_width}x#{window_height}",
    ])?;
    assert_eq!(size.trim(), "120x30");
    c.wait_session("n1", "sized", "running again", WAIT, |s| {
        s.state() == pb::SessionState::Working
    })
    .await?;
    Ok(())
}
