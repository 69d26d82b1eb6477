//! The node agent's command safety, driven by a scripted controller speaking the real protocol:
//! stale epochs, wrong incarnations, duplicate ids and expired deadlines are refused; a Welcome
//! with an epoch lower than one already accepted is refused, even after the agent restarts.

use std::time::Duration;

use argus_proto::v1 as pb;
use argus_shared::time::now_ms;
use argus_tests::cluster::fake_agent;
use argus_tests::eventually;
use argus_tests::fake_controller::{self, Attached};
use argus_tests::process::Proc;
use argus_tests::spec::NodeAgentSpec;
use argus_tests::tmux::TestTmux;

const WAIT: Duration = Duration::from_secs(20);

fn start_agent(dir: &std::path::Path, url: &str, socket: &std::path::Path) -> anyhow::Result<Proc> {
    NodeAgentSpec::new("fenced", url, socket)
        .state_dir("state")
        .probe_interval(Duration::from_millis(250))
        .env("RUST_LOG", "info,argus_node_agent=debug")
        .start(dir)
}

/// The first full snapshot's observation of `name`.
async fn observed(a: &mut Attached, name: &str) -> anyhow::Result<pb::SessionObservation> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let m = tokio::time::timeout_at(deadline, a.inbound.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("stream ended"))?;
        if let Some(pb::agent_message::Msg::Report(r)) = m.msg
            && let Some(o) = r
                .sessions
                .into_iter()
                .find(|o| o.session_name == name && o.agent.is_some())
        {
            return Ok(o);
        }
    }
}

async fn result(a: &mut Attached, id: &str) -> anyhow::Result<pb::CommandResult> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let m = tokio::time::timeout_at(deadline, a.inbound.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("stream ended"))?;
        if let Some(pb::agent_message::Msg::Result(r)) = m.msg
            && r.command_id == id
        {
            return Ok(r);
        }
    }
}

fn nudge(
    id: &str,
    epoch: u64,
    name: &str,
    inc: Option<pb::Incarnation>,
    not_after_ms: i64,
) -> pb::ControllerMessage {
    pb::ControllerMessage {
        msg: Some(pb::controller_message::Msg::Command(pb::Command {
            command_id: id.into(),
            epoch,
            tmux_socket: String::new(),
            session_name: name.into(),
            incarnation: inc,
            not_after_ms,
            at_rest: false,
            action: Some(pb::command::Action::Nudge(pb::Nudge {
                text: format!("hello {id}"),
            })),
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_agent_refuses_unsafe_commands() -> anyhow::Result<()> {
    let tmux = TestTmux::new();
    tmux.session("target", &fake_agent("idle"), &[("profile", "claude")])?;
    let dir = tempfile::tempdir()?;
    // First attach gets epoch 5; after the agent restarts, a stale controller offers 3.
    let (addr, mut attaches) = fake_controller::start(vec![5, 3, 6]).await?;
    let url = format!("http://{addr}");
    let mut agent = start_agent(dir.path(), &url, tmux.socket())?;
    let mut a = tokio::time::timeout(WAIT, attaches.recv())
        .await?
        .expect("attach");
    assert_eq!(a.hello.node_id, "fenced");
    let obs = observed(&mut a, "target").await?;
    let inc = obs.agent;
    let later = now_ms() + 10_000;
    let cases = [
        (
            "stale",
            nudge("c-stale", 4, "target", inc, later),
            pb::CommandStatus::StaleEpoch,
        ),
        (
            "wrong incarnation",
            nudge(
                "c-inc",
                5,
                "target",
                inc.map(|i| pb::Incarnation {
                    pid: i.pid,
                    start_time: i.start_time + 1,
                }),
                later,
            ),
            pb::CommandStatus::WrongIncarnation,
        ),
        (
            "expired",
            nudge("c-late", 5, "target", inc, now_ms() - 1),
            pb::CommandStatus::Expired,
        ),
        (
            "unknown session",
            nudge("c-none", 5, "targe", inc, later),
            pb::CommandStatus::NoSuchSession,
        ),
        (
            "good",
            nudge("c-ok", 5, "target", inc, later),
            pb::CommandStatus::Ok,
        ),
        (
            "duplicate",
            nudge("c-ok", 5, "target", inc, later),
            pb::CommandStatus::Duplicate,
        ),
    ];
    for (what, msg, want) in cases {
        let id = match &msg.msg {
            Some(pb::controller_message::Msg::Command(c)) => c.command_id.clone(),
            _ => unreachable!(),
        };
        a.commands.send(Ok(msg)).await?;
        let r = result(&mut a, &id).await?;
        assert_eq!(r.status(), want, "{what}: {r:?}");
    }
    // Only the good command reached the pane.
    eventually("the good nudge on screen", WAIT, || async {
        Ok(tmux
            .capture("target")?
            .contains("received: hello c-ok")
            .then_some(()))
    })
    .await?;
    let screen = tmux.capture("target")?;
    for bad in ["c-stale", "c-inc", "c-late", "c-none"] {
        assert!(
            !screen.contains(&format!("hello {bad}")),
            "{bad} reached the pane:\n{screen}"
        );
    }

    // Restart the node agent: the persisted epoch 5 makes it refuse a Welcome with epoch 3.
    agent.stop();
    drop(a);
    let _agent = start_agent(dir.path(), &url, tmux.socket())?;
    let stale = tokio::time::timeout(WAIT, attaches.recv())
        .await?
        .expect("second attach");
    assert_eq!(
        stale.hello.last_epoch, 5,
        "persisted epoch not reported in Hello"
    );
    // It hangs up on the stale controller and comes back; the next Welcome (6) is accepted.
    let mut fresh = tokio::time::timeout(WAIT, attaches.recv())
        .await?
        .expect("third attach");
    assert_eq!(fresh.hello.last_epoch, 5);
    observed(&mut fresh, "target").await?;
    let persisted = std::fs::read_to_string(dir.path().join("state/epoch"))?;
    assert_eq!(persisted.trim(), "6");
    Ok(())
}

fn restart(id: &str, epoch: u64, name: &str, replaces_pane_pid: u32) -> pb::ControllerMessage {
    pb::ControllerMessage {
        msg: Some(pb::controller_message::Msg::Command(pb::Command {
            command_id: id.into(),
            epoch,
            tmux_socket: String::new(),
            session_name: name.into(),
            incarnation: None,
            not_after_ms: now_ms() + 10_000,
            at_rest: false,
            action: Some(pb::command::Action::Restart(pb::Restart {
                replaces_pane_pid,
                ..Default::default()
            })),
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_restart_for_the_same_death_is_refused() -> anyhow::Result<()> {
    let tmux = TestTmux::new();
    tmux.session(
        "crashy",
        &fake_agent("idle"),
        &[("profile", "claude"), ("restart", &fake_agent("idle"))],
    )?;
    let dir = tempfile::tempdir()?;
    let (addr, mut attaches) = fake_controller::start(vec![5]).await?;
    let _agent = start_agent(dir.path(), &format!("http://{addr}"), tmux.socket())?;
    let mut a = tokio::time::timeout(WAIT, attaches.recv())
        .await?
        .expect("attach");
    let seen = observed(&mut a, "crashy").await?;
    // The controller decided a restart for the pane process it saw; the first one runs...
    a.commands
        .send(Ok(restart("r-1", 5, "crashy", seen.pane_pid)))
        .await?;
    assert_eq!(result(&mut a, "r-1").await?.status(), pb::CommandStatus::Ok);
    let new_pid = tmux.pane_pid("crashy")?;
    assert_ne!(new_pid, seen.pane_pid);
    // ...a second one decided on the same view (its answer was late, the node stopped) must
    // not kill the agent the first one started.
    a.commands
        .send(Ok(restart("r-2", 5, "crashy", seen.pane_pid)))
        .await?;
    let r = result(&mut a, "r-2").await?;
    assert_eq!(r.status(), pb::CommandStatus::WrongIncarnation, "{r:?}");
    assert!(r.message.contains("started again"), "{r:?}");
    assert_eq!(tmux.pane_pid("crashy")?, new_pid, "restarted twice");
    // A restart for the pane as it is now runs.
    a.commands
        .send(Ok(restart("r-3", 5, "crashy", new_pid)))
        .await?;
    assert_eq!(result(&mut a, "r-3").await?.status(), pb::CommandStatus::Ok);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_nudge_is_declined_when_the_screen_shows_the_agent_busy() -> anyhow::Result<()> {
    let tmux = TestTmux::new();
    tmux.session("busy", &fake_agent("working"), &[("profile", "claude")])?;
    tmux.session("idle", &fake_agent("idle"), &[("profile", "claude")])?;
    // Output with no status line: nothing the profile recognises, but work all the same.
    tmux.session(
        "streaming",
        "i=0; while true; do i=$((i+1)); echo \"compiling unit $i\"; sleep 0.1; done",
        &[("profile", "claude")],
    )?;
    let dir = tempfile::tempdir()?;
    let (addr, mut attaches) = fake_controller::start(vec![5]).await?;
    let _agent = start_agent(dir.path(), &format!("http://{addr}"), tmux.socket())?;
    let mut a = tokio::time::timeout(WAIT, attaches.recv())
        .await?
        .expect("attach");
    // The busy one's agent from the first full report (later reports carry only changes); the
    // idle one's nudge names no agent.
    let busy = observed(&mut a, "busy").await?.agent;
    for (name, want, inc) in [
        ("busy", pb::CommandStatus::Declined, busy),
        ("streaming", pb::CommandStatus::Declined, None),
        ("idle", pb::CommandStatus::Ok, None),
    ] {
        let mut msg = nudge(&format!("n-{name}"), 5, name, inc, now_ms() + 10_000);
        if let Some(pb::controller_message::Msg::Command(c)) = &mut msg.msg {
            c.at_rest = true;
        }
        a.commands.send(Ok(msg)).await?;
        let r = result(&mut a, &format!("n-{name}")).await?;
        assert_eq!(r.status(), want, "{name}: {r:?}");
    }
    for name in ["busy", "streaming"] {
        assert!(
            !tmux.capture(name)?.contains(&format!("hello n-{name}")),
            "typed into {name}"
        );
    }
    Ok(())
}
