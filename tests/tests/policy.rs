//! Multi-process scenarios for the escalation policy and correlation: what Argus does, and what
//! it must not do, with fake agents in real tmux and the real controller and node agents.

use std::time::Duration;

use argus_proto::v1 as pb;
use argus_tests::cluster::{TestCluster, fake_agent as agent, sref, wait_event};
use argus_tests::eventually;
use argus_tests::tmux::TestTmux;

const WAIT: Duration = Duration::from_secs(30);

async fn history(
    c: &TestCluster,
    node: &str,
    name: &str,
) -> anyhow::Result<pb::GetSessionResponse> {
    Ok(c.admin()
        .await?
        .get_session(pb::GetSessionRequest {
            session: sref(node, name),
            history_limit: 200,
        })
        .await?
        .into_inner())
}

fn commands<'a>(h: &'a pb::GetSessionResponse, action: &str) -> Vec<&'a pb::CommandRecord> {
    h.commands.iter().filter(|k| k.action == action).collect()
}

async fn incidents(c: &TestCluster) -> anyhow::Result<Vec<pb::Incident>> {
    Ok(c.admin()
        .await?
        .list_incidents(pb::ListIncidentsRequest {
            include_closed: true,
            limit: 100,
        })
        .await?
        .into_inner()
        .incidents)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_agent_waits_for_its_reset_then_is_resumed() -> anyhow::Result<()> {
    let tmux = TestTmux::new();
    let reset_in = 4;
    let started = argus_shared::time::now_ms();
    tmux.session(
        "limited",
        &agent(&format!("ratelimit {reset_in}")),
        &[("profile", "claude"), ("restart", &agent("idle"))],
    )?;
    let mut c = TestCluster::with_policy(
        "nudge_dwell = \"1s\"\nhard_stall = \"2s\"\nrestart_on_death = \"always\"",
    )
    .await?;
    c.start_agent("n1", tmux.socket())?;
    let s = c
        .wait_session("n1", "limited", "rate limit seen", WAIT, |s| {
            s.condition() == pb::Condition::RateLimited
        })
        .await?;
    let reset_ms = s.rate_limit_reset_at * 1000;
    assert!(reset_ms >= started + 3000, "reset time not parsed: {s:?}");
    let resumed = eventually("the resume nudge", WAIT, || async {
        let h = history(&c, "n1", "limited").await?;
        Ok(commands(&h, "nudge").first().map(|k| (*k).clone()))
    })
    .await?;
    // Not before the grace a CLI has to resume by itself.
    let grace = argus_decide::detect::RESUME_GRACE_MS;
    assert!(
        resumed.issued_at_ms >= reset_ms + grace,
        "resumed {} ms after the reset, within the {grace} ms grace",
        resumed.issued_at_ms - reset_ms
    );
    assert!(resumed.reason.contains("cooldown"), "{resumed:?}");
    eventually("the resume text on screen", WAIT, || async {
        Ok(tmux
            .capture("limited")?
            .contains("received: continue")
            .then_some(()))
    })
    .await?;
    // Idle far past the hard limit during the cooldown, yet never restarted nor counted as stalled.
    let h = history(&c, "n1", "limited").await?;
    assert!(
        commands(&h, "restart").is_empty(),
        "restarted: {:?}",
        h.commands
    );
    assert!(commands(&h, "kill").is_empty());
    assert!(
        h.transitions
            .iter()
            .all(|t| t.to() != pb::SessionState::Stalled),
        "{:?}",
        h.transitions
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_is_restarted_no_more_than_the_policy_allows() -> anyhow::Result<()> {
    let tmux = TestTmux::new();
    // A long-lived neighbour keeps the tmux server up between crashes.
    tmux.session("keeper", &agent("quiet"), &[])?;
    let policy = r#"
restart_backoff_min = "100ms"
crash_loop_crashes = 3
crash_loop_window = "60s"
crash_loop_cooldown = "60s"
"#;
    let mut c = TestCluster::with_policy(policy).await?;
    c.start_agent("n1", tmux.socket())?;
    c.wait_session("n1", "keeper", "node agent reporting", WAIT, |s| {
        s.agent_pid > 0
    })
    .await?;
    // Started once the node agent watches: the agent lives 1 s each time.
    let cmd = agent("exit 1");
    tmux.session("crashy", &cmd, &[("restart", &cmd)])?;
    let mut events = c
        .admin()
        .await?
        .watch_events(pb::WatchEventsRequest {
            node_id: "n1".into(),
        })
        .await?
        .into_inner();
    wait_event(&mut events, "the crash loop", WAIT, |e| {
        e.session_name == "crashy" && e.kind == "crash_loop"
    })
    .await?;
    // Two restarts (after the 1st and 2nd crash); the 3rd crash starts the 60 s cooldown. No
    // third restart may come within the next few seconds.
    let third = eventually(
        "a third restart (must not happen)",
        Duration::from_secs(4),
        || async {
            let h = history(&c, "n1", "crashy").await?;
            Ok((commands(&h, "restart").len() > 2).then_some(()))
        },
    )
    .await;
    assert!(third.is_err(), "restarted during the crash-loop cooldown");
    let h = history(&c, "n1", "crashy").await?;
    let restarts = commands(&h, "restart");
    assert_eq!(restarts.len(), 2, "{:?}", h.commands);
    assert!(
        restarts.iter().all(|k| k.status() == pb::CommandStatus::Ok),
        "{restarts:?}"
    );
    // One session crash-looping is not a mass death.
    assert!(incidents(&c).await?.iter().all(|i| i.kind != "mass_death"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_rate_limit_across_two_nodes_is_one_incident() -> anyhow::Result<()> {
    let (hook, received) = argus_tests::webhook::start().await?;
    let labels = [
        ("profile", "claude"),
        ("provider", "anthropic"),
        ("account", "team"),
    ];
    let (t1, t2) = (TestTmux::new(), TestTmux::new());
    t1.session("a", &agent("ratelimit 600"), &labels)?;
    t2.session("b", &agent("ratelimit 900"), &labels)?;
    t2.session(
        "other",
        &agent("ratelimit 600"),
        &[("profile", "claude"), ("provider", "openai")],
    )?;
    let mut c = TestCluster::start(TestCluster::spec().webhook(&hook)).await?;
    c.start_agent("n1", t1.socket())?;
    c.start_agent("n2", t2.socket())?;
    let opened = eventually("one provider incident", WAIT, || async {
        let i = incidents(&c).await?;
        Ok(i.into_iter()
            .find(|i| i.kind == "provider_limit" && i.sessions == 2))
    })
    .await?;
    assert_eq!(opened.scope, "anthropic/team");
    assert!(
        opened.until_ms >= argus_shared::time::now_ms() + 800_000 - 60_000,
        "{opened:?}"
    );
    eventually("the webhook", WAIT, || async {
        Ok((!received.all().is_empty()).then_some(()))
    })
    .await?;
    let all = incidents(&c).await?;
    assert_eq!(all.len(), 1, "one root cause, one incident: {all:?}");
    let hooks = received.all();
    assert_eq!(hooks.len(), 1, "{hooks:?}");
    assert_eq!(hooks[0]["event"], "incident_opened");
    assert_eq!(hooks[0]["incident"]["scope"], "anthropic/team");
    // No per-session escalation: no restart, no kill, no nudge before the reset.
    for (node, name) in [("n1", "a"), ("n2", "b")] {
        let h = history(&c, node, name).await?;
        assert!(h.commands.is_empty(), "{name}: {:?}", h.commands);
    }
    // Acknowledged, it stays listed with who acknowledged it.
    let acked = c
        .admin()
        .await?
        .ack_incident(pb::AckIncidentRequest {
            id: opened.id.clone(),
            by: "ops".into(),
        })
        .await?
        .into_inner();
    assert_eq!(acked.acked_by, "ops");
    let e = c
        .admin()
        .await?
        .ack_incident(pb::AckIncidentRequest {
            id: "nope".into(),
            by: String::new(),
        })
        .await
        .expect_err("unknown incident");
    assert_eq!(e.code(), tonic::Code::NotFound);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_node_gets_no_actions_and_nothing_is_killed() -> anyhow::Result<()> {
    let tmux = TestTmux::new();
    tmux.session("idle", &agent("idle"), &[("profile", "claude")])?;
    tmux.session("hung", &agent("quiet"), &[("restart", &agent("quiet"))])?;
    let policy = r#"
nudge_dwell = "4s"
hard_stall = "3s"
confirm_after = "500ms"
node_suspect_after = "1s"
node_down_after = "2s"
"#;
    let mut c = TestCluster::with_policy(policy).await?;
    let n = c.start_agent("n1", tmux.socket())?;
    let before = c
        .wait_session("n1", "hung", "hung agent known", WAIT, |s| s.agent_pid > 0)
        .await?;
    c.wait_session("n1", "idle", "idle agent known", WAIT, |s| s.agent_pid > 0)
        .await?;
    let mut events = c
        .admin()
        .await?
        .watch_events(pb::WatchEventsRequest {
            node_id: "n1".into(),
        })
        .await?
        .into_inner();
    // Cut the node agent off: stopped, its connection stays open but silent.
    let pid = c.agents[n].pid().to_string();
    std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()?;
    let silenced = wait_event(&mut events, "node down", WAIT, |e| e.kind == "node_down").await;
    let down_then = std::time::Instant::now();
    // Stay cut off past the hard limit and the nudge dwell.
    let acted = eventually(
        "an action on a silent node (must not happen)",
        Duration::from_secs(5),
        || async {
            let h = history(&c, "n1", "hung").await?;
            let i = history(&c, "n1", "idle").await?;
            Ok((!h.commands.is_empty() || !i.commands.is_empty()).then_some(()))
        },
    )
    .await;
    std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status()?;
    silenced?;
    assert!(down_then.elapsed() >= Duration::from_secs(4));
    assert!(acted.is_err(), "a command was decided for a silent node");
    assert!(tmux.has_session("hung") && tmux.has_session("idle"));
    assert_eq!(
        tmux.pane_pid("hung")?,
        before.agent_pid,
        "the hung agent was replaced while its node was silent"
    );
    let host = incidents(&c).await?;
    assert!(
        host.iter()
            .any(|i| i.kind == "host_silent" && i.scope == "n1"),
        "{host:?}"
    );
    // Back in touch: the node is up again and its incident closes.
    eventually("the host incident to close", WAIT, || async {
        let i = incidents(&c).await?;
        Ok(i.iter()
            .any(|i| i.kind == "host_silent" && i.closed_ms > 0)
            .then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_reloads_and_a_bad_file_keeps_the_old_one() -> anyhow::Result<()> {
    let c = TestCluster::with_policy("nudge_budget = 3").await?;
    let path = c.dir.path().join("policy.toml");
    let mut events = c
        .admin()
        .await?
        .watch_events(pb::WatchEventsRequest::default())
        .await?
        .into_inner();
    std::fs::write(&path, "nudge_budget = 5\nnudge_dwel = \"1s\"\n")?;
    let rejected = wait_event(&mut events, "policy_rejected", WAIT, |e| {
        e.kind == "policy_rejected"
    })
    .await?;
    assert!(rejected.message.contains("nudge_dwel"), "{rejected:?}");
    // Force a different modification time even on coarse file systems.
    std::fs::write(
        &path,
        "nudge_budget = 5\n[groups.night]\nnudge_budget = 1\n",
    )?;
    let f = std::fs::File::options().write(true).open(&path)?;
    f.set_modified(std::time::SystemTime::now() + Duration::from_secs(1))?;
    wait_event(&mut events, "policy_reloaded", WAIT, |e| {
        e.kind == "policy_reloaded"
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_triage_sees_the_screen_and_its_verdict_is_carried_out() -> anyhow::Result<()> {
    // The LLM: a real HTTP server speaking the OpenAI chat-completions protocol.
    let (llm, asked) = argus_tests::webhook::start_answering(|_| {
        serde_json::json!({
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {
                "role": "assistant",
                "content": "The agent is hung.\n```json\n{\"verdict\": \"restart\"}\n```"
            }}]
        })
        .to_string()
    })
    .await?;
    let base = llm.trim_end_matches("/hook").to_owned() + "/v1";
    let tmux = TestTmux::new();
    tmux.session("hung", &agent("quiet"), &[("restart", &agent("quiet"))])?;
    let policy = format!(
        "nudge_dwell = \"1s\"\nconfirm_after = \"500ms\"\n[triage]\nkind = \"openai\"\nurl = \"{base}\"\nmodel = \"test-model\"\n"
    );
    let mut c = TestCluster::with_policy(&policy).await?;
    c.start_agent("n1", tmux.socket())?;
    let before = c
        .wait_session("n1", "hung", "hung agent known", WAIT, |s| s.agent_pid > 0)
        .await?;
    let after = c
        .wait_session("n1", "hung", "restarted after triage", WAIT, |s| {
            s.agent_pid > 0 && s.agent_pid != before.agent_pid
        })
        .await?;
    assert_eq!(after.state(), pb::SessionState::Working);
    let requests = asked.all();
    assert!(!requests.is_empty());
    assert_eq!(requests[0]["model"], "test-model");
    let prompt = requests[0]["messages"][1]["content"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        prompt.contains("Reading the repository"),
        "the screen was not sent: {prompt}"
    );
    assert!(prompt.contains("\"session_name\": \"hung\""), "{prompt}");
    let h = history(&c, "n1", "hung").await?;
    let restart = commands(&h, "restart");
    assert_eq!(restart.len(), 1, "{:?}", h.commands);
    assert!(restart[0].reason.contains("escalation"), "{restart:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mass_death_on_one_host_is_one_incident_not_n_restarts() -> anyhow::Result<()> {
    let tmux = TestTmux::new();
    let cmd = agent("quiet");
    let names = ["w1", "w2", "w3", "w4"];
    for name in names {
        tmux.session(name, &cmd, &[("restart", &cmd)])?;
    }
    // Restarts wait at least 1 s, so a mass death seen within that second holds all of them.
    let mut c =
        TestCluster::with_policy("restart_backoff_min = \"2s\"\nmass_death_hold = \"60s\"").await?;
    c.start_agent("n1", tmux.socket())?;
    let mut pids = Vec::new();
    for name in names {
        pids.push(
            c.wait_session("n1", name, "agent known", WAIT, |s| s.agent_pid > 0)
                .await?
                .agent_pid,
        );
    }
    for pid in &pids {
        std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()?;
    }
    let incident = eventually("a mass-death incident", WAIT, || async {
        Ok(incidents(&c)
            .await?
            .into_iter()
            .find(|i| i.kind == "mass_death"))
    })
    .await?;
    assert_eq!(incident.scope, "n1");
    // Past every session's backoff: still no restart, because the host is held.
    let restarted = eventually(
        "a restart during the hold (must not happen)",
        Duration::from_secs(4),
        || async {
            for name in names {
                if !commands(&history(&c, "n1", name).await?, "restart").is_empty() {
                    return Ok(Some(()));
                }
            }
            Ok(None)
        },
    )
    .await;
    assert!(
        restarted.is_err(),
        "restarted while the host incident holds restarts"
    );
    assert_eq!(
        incidents(&c).await?.len(),
        1,
        "one root cause, one incident"
    );
    Ok(())
}
