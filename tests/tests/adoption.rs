//! Adoption without retagging: sessions started by an orchestrator, named its way and carrying
//! no `@argus-*` options, get their group and restart command from the node agent's
//! `[[selectors]]`, and are supervised with them: listed with the selector's labels, restarted
//! with the selector's command after their agent dies (through the node's restart guard, which
//! takes a selector's command as the session's own). A session's own tmux option still wins,
//! and the node's own selectors come before the controller policy's, which give labels only.
//! The real controller, the real node agent, a private tmux server.

use std::time::Duration;

use anyhow::Context;
use argus_proto::v1 as pb;
use argus_shared::selector::SelectorSpec;
use argus_tests::cluster::{TestCluster, sref};
use argus_tests::tmux::TestTmux;

const WAIT: Duration = Duration::from_secs(20);

/// `fake-agent` under the name `claude` (a symlink): the claude profile recognises it, and a
/// selector's `program = "claude"` matches its process name.
fn claude_binary(dir: &std::path::Path) -> anyhow::Result<String> {
    let link = dir.join("claude");
    std::os::unix::fs::symlink(argus_tests::binary("fake-agent")?, &link)?;
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

fn label<'a>(s: &'a pb::Session, name: &str) -> Option<&'a str> {
    s.labels.get(name).map(String::as_str)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untagged_orchestrator_sessions_are_adopted_by_selectors_and_restarted()
-> anyhow::Result<()> {
    let tmux = TestTmux::new();
    let bin = tempfile::tempdir()?;
    let claude = claude_binary(bin.path())?;
    let start = format!("{claude} quiet");
    // The selectors' restart command differs from the start command by an argument the fake
    // agent ignores, so the new agent's command line says which one brought it back.
    let restart = format!("{claude} quiet by-selector");
    // Claude Squad's way: `tmux new-session -d -s claudesquad_<title> -c <worktree> claude`,
    // the agent is the pane, so its death closes the session.
    tmux.session("claudesquad_fixlogin", &start, &[])?;
    // The same, but someone tagged it by hand: the tmux option wins over the selector.
    tmux.session("claudesquad_mine", &start, &[("group", "mine")])?;
    // Overstory's way (`overstory-<project>-<agent>`), the agent under a shell that stays: its
    // death leaves a live pane without an agent.
    tmux.session(
        "overstory-proj-builder",
        &format!("{claude} quiet; exec sh"),
        &[],
    )?;
    // Composio's agent-orchestrator's way (`{hash}-{prefix}-{num}`): only the controller's
    // policy has a selector for it.
    tmux.session("a3b4c5d6e7f8-int-1", &start, &[])?;
    // Named like nothing a selector knows: listed, not adopted.
    tmux.session("notes", &start, &[])?;

    let mut c = TestCluster::with_policy(
        r#"
restart_backoff_min = "1s"

# Loses to the node's own selector for the same sessions.
[[selectors]]
session = "claudesquad_*"
group = "from-policy"

[[selectors]]
session = "????????????-*-*"
group = "ao"
provider = "anthropic"
"#,
    )
    .await?;
    let mut spec = c.agent_spec("n1", tmux.socket());
    spec.config.selectors = vec![
        SelectorSpec {
            session: Some("claudesquad_*".into()),
            program: Some("claude".into()),
            group: Some("squad".into()),
            provider: Some("anthropic".into()),
            restart: Some(restart.clone()),
            ..Default::default()
        },
        SelectorSpec {
            session: Some("overstory-*-*".into()),
            // A program glob no longer matches once the agent died: the pane keeps what it
            // was adopted with, or the restart would have no command the guard accepts.
            program: Some("claude".into()),
            group: Some("overstory".into()),
            restart: Some(restart.clone()),
            ..Default::default()
        },
    ];
    c.agents.push(spec.start(c.dir.path())?);

    let working = |s: &pb::Session| s.agent_pid > 0 && s.state() == pb::SessionState::Working;
    let squad = c
        .wait_session(
            "n1",
            "claudesquad_fixlogin",
            "adopted and working",
            WAIT,
            |s| working(s) && label(s, "group") == Some("squad"),
        )
        .await
        .with_context(|| c.controller_log())?;
    assert_eq!(label(&squad, "provider"), Some("anthropic"), "{squad:?}");
    assert_eq!(
        label(&squad, "restart"),
        Some(restart.as_str()),
        "{squad:?}"
    );
    let mine = c
        .wait_session(
            "n1",
            "claudesquad_mine",
            "tagged and working",
            WAIT,
            working,
        )
        .await?;
    assert_eq!(
        label(&mine, "group"),
        Some("mine"),
        "the tmux option wins: {mine:?}"
    );
    assert_eq!(label(&mine, "restart"), Some(restart.as_str()), "{mine:?}");
    let overstory = c
        .wait_session("n1", "overstory-proj-builder", "adopted", WAIT, |s| {
            working(s) && label(s, "group") == Some("overstory")
        })
        .await?;
    let ao = c
        .wait_session(
            "n1",
            "a3b4c5d6e7f8-int-1",
            "adopted by the policy",
            WAIT,
            |s| working(s) && label(s, "group") == Some("ao"),
        )
        .await?;
    assert_eq!(label(&ao, "provider"), Some("anthropic"), "{ao:?}");
    assert_eq!(
        label(&ao, "restart"),
        None,
        "a policy gives no command: {ao:?}"
    );
    // A reloaded policy reaches the node agent: the group changes without a restart.
    let policy = c.dir.path().join("policy.toml");
    let text = std::fs::read_to_string(&policy)?.replace("group = \"ao\"", "group = \"ao-2\"");
    std::fs::write(&policy, text)?;
    c.wait_session(
        "n1",
        "a3b4c5d6e7f8-int-1",
        "regrouped by the reload",
        WAIT,
        |s| label(s, "group") == Some("ao-2"),
    )
    .await?;
    let notes = c
        .wait_session("n1", "notes", "listed", WAIT, working)
        .await?;
    assert!(notes.labels.is_empty(), "not adopted: {notes:?}");

    // Both adopted agents die; each comes back with the selector's command.
    kill9(squad.agent_pid)?;
    kill9(overstory.agent_pid)?;
    for (name, before) in [
        ("claudesquad_fixlogin", squad.agent_pid),
        ("overstory-proj-builder", overstory.agent_pid),
    ] {
        let after = c
            .wait_session("n1", name, "restarted", WAIT, |s| {
                working(s) && s.agent_pid != before
            })
            .await
            .with_context(|| format!("{name} not restarted\n{}", c.controller_log()))?;
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", after.agent_pid))?;
        assert!(
            String::from_utf8_lossy(&cmdline).contains("by-selector"),
            "{name} was not restarted with the selector's command: {:?}",
            String::from_utf8_lossy(&cmdline)
        );
        let history = c
            .admin()
            .await?
            .get_session(pb::GetSessionRequest {
                session: sref("n1", name),
                history_limit: 100,
            })
            .await?
            .into_inner();
        let restarted = history
            .commands
            .iter()
            .find(|k| k.action == "restart" && k.origin == "policy")
            .with_context(|| format!("no policy restart of {name}: {history:?}"))?;
        assert_eq!(restarted.status(), pb::CommandStatus::Ok, "{restarted:?}");
    }
    assert!(tmux.has_session("claudesquad_fixlogin"));
    Ok(())
}
