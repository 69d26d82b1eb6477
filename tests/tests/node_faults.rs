//! Faults around the node agent, with the real binaries and a private tmux server: a command
//! whose controller dies half-way still finishes and is reported to the next controller; a
//! SIGKILLed node agent leaves no tmux client behind.

use std::time::Duration;

use argus_proto::v1 as pb;
use argus_tests::cluster::{TestCluster, fake_agent as agent, sref};
use argus_tests::eventually;
use argus_tests::tmux::TestTmux;

const QUIET: &str = r#"
nudge_dwell = "1h"
"#;
const WAIT: Duration = Duration::from_secs(20);
const SEP: char = '\u{1f}';

/// True once `pid` has ended (gone, or a zombie not yet reaped).
fn ended(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|r| r.split_whitespace().next());
    matches!(state, None | Some("Z"))
}

/// The id of the command whose kill the node agent started, from its log
/// (`command{id=ID}: ... kill: SIGTERM ...`).
fn started_kill(log: &str) -> Option<String> {
    let line = log.lines().find(|l| l.contains("kill: SIGTERM"))?;
    let rest = line.split("command{id=").nth(1)?;
    Some(rest.split('}').next()?.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_finishes_and_is_reported_when_its_controller_dies_half_way() -> anyhow::Result<()> {
    let tmux = TestTmux::new();
    // An agent that ignores SIGTERM: only the SIGKILL after the grace ends it.
    let stubborn = format!("trap '' TERM; exec {}", agent("quiet"));
    tmux.session("stubborn", &stubborn, &[])?;
    tmux.session("bystander", &agent("quiet"), &[])?;
    let mut c = TestCluster::with_policy(QUIET).await?;
    c.start_agent("n1", tmux.socket())?;
    let pid = c
        .wait_session("n1", "stubborn", "the stubborn agent", WAIT, |s| {
            s.agent_pid > 0
        })
        .await?
        .agent_pid;

    // The Kill waits for its answer, which this controller will never give.
    let mut admin = c.admin().await?;
    let call = tokio::spawn(async move {
        admin
            .kill(pb::KillRequest {
                session: sref("n1", "stubborn"),
                grace_ms: 5000,
            })
            .await
    });
    let id = eventually("the node agent to start the kill", WAIT, || async {
        Ok(started_kill(&c.agents[0].log()))
    })
    .await?;

    // The controller dies during the grace; the node agent's stream breaks.
    if let Some(mut controller) = c.controller.take() {
        controller.proc.kill();
    }
    let _ = call.await;
    assert!(!ended(pid), "SIGTERM alone ended the stubborn agent");

    // With no controller at all, the kill still ends with SIGKILL...
    eventually("the stubborn agent to be SIGKILLed", WAIT, || async {
        Ok(ended(pid).then_some(()))
    })
    .await?;
    assert!(!tmux.has_session("stubborn"), "its session was not killed");
    assert!(tmux.has_session("bystander"));

    // ... and its result reaches the next controller once the node agent is welcomed again.
    c.start_controller().await?;
    eventually(
        "the result delivered to the restarted controller",
        WAIT,
        || async {
            if c.controller_log().contains(&id) {
                return Ok(Some(()));
            }
            // Or already recorded as the command's final row in the audit.
            let s = c
                .admin()
                .await?
                .get_session(pb::GetSessionRequest {
                    session: sref("n1", "stubborn"),
                    history_limit: 50,
                })
                .await;
            Ok(s.ok().and_then(|s| {
                s.into_inner()
                    .commands
                    .iter()
                    .any(|k| k.command_id == id && k.status() == pb::CommandStatus::Ok)
                    .then_some(())
            }))
        },
    )
    .await?;
    Ok(())
}

/// Pids of the control-mode clients of a server.
fn control_clients(tmux: &TestTmux) -> Vec<u32> {
    let format = format!("#{{client_pid}}{SEP}#{{client_control_mode}}");
    tmux.run(&["list-clients", "-F", &format])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(SEP))
        .filter(|(_, control)| *control == "1")
        .filter_map(|(pid, _)| pid.parse().ok())
        .collect()
}

/// Sends SIGCONT to a stopped process when dropped, whatever the test did.
struct Stopped(u32);

impl Stopped {
    fn new(pid: u32) -> Self {
        signal(pid, rustix::process::Signal::STOP);
        Self(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        signal(self.0, rustix::process::Signal::CONT);
    }
}

/// True when `setpriv --pdeathsig` works here, as the node agent checks.
fn pdeathsig_available() -> bool {
    std::process::Command::new("setpriv")
        .args(["--pdeathsig", "KILL", "--", "true"])
        .status()
        .is_ok_and(|s| s.success())
}

fn signal(pid: u32, sig: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_node_agent_leaves_no_tmux_client_behind() -> anyhow::Result<()> {
    let tmux = TestTmux::new();
    tmux.session("one", &agent("quiet"), &[])?;
    tmux.session("two", &agent("quiet"), &[])?;
    let mut c = TestCluster::with_policy(QUIET).await?;
    c.start_agent("n1", tmux.socket())?;
    c.wait_session("n1", "two", "sessions reported", WAIT, |s| s.agent_pid > 0)
        .await?;
    let clients = eventually("the node agent's control client", WAIT, || async {
        Ok(Some(control_clients(&tmux)).filter(|c| !c.is_empty()))
    })
    .await?;
    let server: u32 = tmux
        .run(&["display-message", "-p", "#{pid}"])?
        .trim()
        .parse()?;

    // The node agent dies while its tmux server is not answering (stopped): the control client
    // must still end with it, not linger until the server reads its closed stdin. That takes a
    // parent-death signal, set through util-linux `setpriv`; without it, only the stdin closing
    // is tested.
    {
        let _stopped = pdeathsig_available().then(|| Stopped::new(server));
        c.agents[0].kill();
        eventually(
            "the control client to end with its node agent",
            WAIT,
            || async { Ok(clients.iter().all(|p| ended(*p)).then_some(())) },
        )
        .await?;
    }
    eventually("the server to forget the control client", WAIT, || async {
        Ok(control_clients(&tmux).is_empty().then_some(()))
    })
    .await?;
    // The server can be shut down: kill-server is accepted and the server goes away.
    tmux.run(&["kill-server"])?;
    eventually("the tmux server to exit", WAIT, || async {
        Ok(ended(server).then_some(()))
    })
    .await?;
    Ok(())
}

/// The session the node agent's control client is attached to.
fn control_session(tmux: &TestTmux) -> Option<String> {
    let format = format!("#{{client_session}}{SEP}#{{client_control_mode}}");
    tmux.run(&["list-clients", "-F", &format])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(SEP))
        .find(|(_, control)| *control == "1")
        .map(|(session, _)| session.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_control_clients_session_is_no_death_of_the_others() -> anyhow::Result<()> {
    let tmux = TestTmux::new();
    let names = ["one", "two", "three"];
    for name in names {
        tmux.session(name, &agent("quiet"), &[])?;
    }
    let mut c = TestCluster::with_policy(QUIET).await?;
    c.start_agent("n1", tmux.socket())?;
    for name in names {
        c.wait_session("n1", name, "sessions reported", WAIT, |s| s.agent_pid > 0)
            .await?;
    }
    let attached = eventually("the node agent's control client", WAIT, || async {
        Ok(control_session(&tmux))
    })
    .await?;
    tmux.run(&["kill-session", "-t", &format!("={attached}")])?;
    c.wait_session("n1", &attached, "the killed session ended", WAIT, |s| {
        s.state() == pb::SessionState::Dead
    })
    .await?;
    // A session created afterwards and seen: the probe rounds around the kill are all in.
    tmux.session("later", &agent("quiet"), &[])?;
    c.wait_session("n1", "later", "a later session seen", WAIT, |s| {
        s.agent_pid > 0
    })
    .await?;
    let mut admin = c.admin().await?;
    for name in names.iter().filter(|n| **n != attached) {
        let s = admin
            .get_session(pb::GetSessionRequest {
                session: sref("n1", name),
                history_limit: 100,
            })
            .await?
            .into_inner();
        let dead: Vec<_> = s
            .transitions
            .iter()
            .filter(|t| t.to() == pb::SessionState::Dead || t.to() == pb::SessionState::Zombie)
            .collect();
        assert!(
            dead.is_empty(),
            "{name} read as ended when another session was killed: {dead:?}"
        );
    }
    Ok(())
}
