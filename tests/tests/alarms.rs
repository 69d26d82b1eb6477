//! Durable alarms through the real controller, node agent and tmux: an agent sets its own alarm
//! from inside its session (`argusctl self schedule`, over the node agent's local socket); the
//! alarm survives a controller restart, is held while the agent works and typed in at its
//! prompt; an alarm for another session is refused; alarms set through the admin API survive a
//! node agent restart; list and cancel.

use std::path::Path;
use std::time::Duration;

use argus_proto::v1 as pb;
use argus_tests::cluster::{TestCluster, sref};
use argus_tests::eventually;
use argus_tests::tmux::TestTmux;

const WAIT: Duration = Duration::from_secs(30);

/// `fake-agent` under the name `claude` (a symlink), so that the claude profile recognises it
/// as an agent under a shell.
fn claude_binary(dir: &Path) -> anyhow::Result<String> {
    let target = argus_tests::binary("fake-agent")?;
    let link = dir.join("claude");
    std::os::unix::fs::symlink(target, &link)?;
    Ok(link.display().to_string())
}

async fn alarms(c: &TestCluster, all: bool) -> anyhow::Result<Vec<pb::Alarm>> {
    Ok(c.admin()
        .await?
        .list_alarms(pb::ListAlarmsRequest {
            node_id: String::new(),
            include_closed: all,
            limit: 100,
        })
        .await?
        .into_inner()
        .alarms)
}

fn session_of(a: &pb::Alarm) -> &str {
    a.session.as_ref().map_or("", |s| s.session_name.as_str())
}

/// A fake Claude at its prompt in session "idle", watched by a controller and node agent "n1".
/// The directory holds the fake's binary: keep it while the session runs.
async fn idle_agent() -> anyhow::Result<(TestTmux, tempfile::TempDir, TestCluster)> {
    let tmux = TestTmux::new();
    let work = tempfile::tempdir()?;
    let claude = claude_binary(work.path())?;
    tmux.session("idle", &format!("{claude} idle"), &[("profile", "claude")])?;
    let mut c = TestCluster::with_policy("").await?;
    c.start_agent("n1", tmux.socket())?;
    c.wait_session("n1", "idle", "agent at its prompt", WAIT, |s| {
        s.agent_pid > 0 && s.condition() == pb::Condition::AtPrompt
    })
    .await?;
    Ok((tmux, work, c))
}

/// The pane's text including what scrolled off (the agent's output scrolls fast).
fn pane_history(tmux: &TestTmux, name: &str) -> anyhow::Result<String> {
    tmux.run(&[
        "capture-pane",
        "-p",
        "-S",
        "-2000",
        "-t",
        &format!("={name}:"),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_set_from_inside_fires_after_a_controller_restart_at_the_prompt()
-> anyhow::Result<()> {
    let tmux = TestTmux::new();
    let work = tempfile::tempdir()?;
    let claude = claude_binary(work.path())?;
    let argusctl = argus_tests::binary("argusctl")?.display().to_string();
    let dir = work.path().display().to_string();
    // The agent's own session: it sets an alarm for itself (retrying until its node agent and
    // controller know the session), tries one for another session, then works until the test
    // lets it stop, and then sits at its prompt (on a cleared screen and history: Claude's
    // spinner line above its input box means it is working).
    let script = format!(
        r#"
s=$(date +%s%N)
until {argusctl} self schedule --in 2s "check the CI run" > {dir}/own.out 2>&1; do sleep 0.2; s=$(date +%s%N); done
echo $(( ($(date +%s%N) - s) / 1000000 )) > {dir}/own.ms
{argusctl} self schedule --session other --in 1m "not mine" > {dir}/other.out 2>&1
echo $? > {dir}/other.rc
{claude} working & w=$!
while [ ! -e {dir}/go ]; do sleep 0.1; done
kill $w; wait $w 2>/dev/null
printf '\033[H\033[2J'; tmux clear-history
exec {claude} idle
"#
    );
    std::fs::write(work.path().join("agent.sh"), script)?;
    tmux.session(
        "worker",
        &format!("bash {dir}/agent.sh"),
        &[("profile", "claude")],
    )?;
    tmux.session("other", &format!("{claude} idle"), &[("profile", "claude")])?;
    let mut c = TestCluster::with_policy("").await?;
    c.start_agent("n1", tmux.socket())?;

    // Set from inside, through the socket (found through the tmux server's environment).
    let set = eventually("the alarm set from inside", WAIT, || async {
        Ok(alarms(&c, false)
            .await?
            .into_iter()
            .find(|a| session_of(a) == "worker"))
    })
    .await?;
    assert_eq!(set.origin, "self", "{set:?}");
    assert_eq!(set.note, "check the CI run");
    assert_eq!(set.state(), pb::AlarmState::Pending);
    let own = std::fs::read_to_string(work.path().join("own.out"))?;
    if let Ok(ms) = std::fs::read_to_string(work.path().join("own.ms")) {
        eprintln!("FIGURE argusctl self schedule, answered: {} ms", ms.trim());
    }
    assert!(own.contains(&set.id) && own.contains("worker"), "{own}");

    // Another session's alarm is refused, and none is stored.
    let rc = eventually("the refused request's exit code", WAIT, || async {
        Ok(std::fs::read_to_string(work.path().join("other.rc")).ok())
    })
    .await?;
    assert_eq!(rc.trim(), "1");
    let other = std::fs::read_to_string(work.path().join("other.out"))?;
    assert!(other.contains("only for itself"), "{other}");
    // A process outside every watched pane is refused too.
    let socket = c.dir.path().join("state-n1").join("node.sock");
    let out = std::process::Command::new(&argusctl)
        .args(["self", "schedule", "--in", "1m", "outsider"])
        .env("ARGUS_NODE_SOCKET", &socket)
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not inside a watched tmux pane"), "{err}");

    // The controller goes away before the alarm is due and comes back after.
    c.stop_controller();
    let due = set.due_ms;
    eventually("the due time to pass", WAIT, || async {
        Ok((argus_shared::time::now_ms() > due + 500).then_some(()))
    })
    .await?;
    c.start_controller().await?;

    // Due, but the agent is working: held, and nothing typed in.
    let held = eventually("the alarm held while the agent works", WAIT, || async {
        Ok(alarms(&c, false)
            .await?
            .into_iter()
            .find(|a| a.id == set.id && a.message.contains("working")))
    })
    .await?;
    assert_eq!(held.state(), pb::AlarmState::Pending, "{held:?}");
    assert!(!pane_history(&tmux, "worker")?.contains("[alarm set by you]"));
    assert!(
        alarms(&c, true)
            .await?
            .iter()
            .all(|a| session_of(a) != "other")
    );

    // At its prompt, the agent gets it.
    std::fs::write(work.path().join("go"), "")?;
    let typed = eventually("the alarm typed in at the prompt", WAIT, || async {
        Ok(pane_history(&tmux, "worker")?
            .contains("received: [alarm set by you] check the CI run")
            .then_some(()))
    })
    .await;
    // On failure, what the controller saw.
    let seen = (alarms(&c, false).await, c.session("n1", "worker").await);
    typed.map_err(|e| {
        e.context(format!(
            "pane:\n{}\n{:?}",
            tmux.capture("worker").unwrap_or_default(),
            seen
        ))
    })?;
    let done = eventually("the alarm recorded delivered", WAIT, || async {
        Ok(alarms(&c, true)
            .await?
            .into_iter()
            .find(|a| a.id == set.id && a.state() == pb::AlarmState::Delivered))
    })
    .await?;
    assert!(!done.command_id.is_empty(), "{done:?}");
    // Once: a normal audited nudge with origin "alarm".
    let history = c
        .admin()
        .await?
        .get_session(pb::GetSessionRequest {
            session: sref("n1", "worker"),
            history_limit: 100,
        })
        .await?
        .into_inner();
    let nudges: Vec<_> = history
        .commands
        .iter()
        .filter(|k| k.origin == "alarm")
        .collect();
    assert_eq!(nudges.len(), 1, "{:?}", history.commands);
    assert_eq!(nudges[0].action, "nudge");
    assert_eq!(nudges[0].command_id, done.command_id);
    let text = pane_history(&tmux, "worker")?;
    assert_eq!(text.matches("received: [alarm").count(), 1, "{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_set_through_the_api_survives_a_node_agent_restart_and_can_be_cancelled()
-> anyhow::Result<()> {
    let (tmux, _work, mut c) = idle_agent().await?;
    let mut admin = c.admin().await?;

    // List and cancel.
    let later = admin
        .schedule_nudge(pb::ScheduleNudgeRequest {
            session: sref("n1", "idle"),
            in_ms: 3_600_000,
            at_ms: 0,
            note: "in an hour".into(),
        })
        .await?
        .into_inner();
    assert_eq!(later.origin, "admin");
    let argusctl = argus_tests::binary("argusctl")?;
    let out = std::process::Command::new(&argusctl)
        .args(["--controller", &c.url(), "alarms"])
        .output()?;
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && listed.contains(&later.id) && listed.contains("in an hour"),
        "{listed}"
    );
    let out = std::process::Command::new(&argusctl)
        .args(["--controller", &c.url(), "alarm", "cancel", &later.id])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = admin
        .cancel_alarm(pb::CancelAlarmRequest {
            id: later.id.clone(),
        })
        .await
        .expect_err("already cancelled");
    assert_eq!(again.code(), tonic::Code::FailedPrecondition, "{again:?}");
    let unknown = admin
        .cancel_alarm(pb::CancelAlarmRequest {
            id: "al-nope".into(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    assert!(alarms(&c, false).await?.is_empty());
    let all = alarms(&c, true).await?;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].state(), pb::AlarmState::Cancelled);
    // `--at` with an RFC 3339 time; one in the past is refused.
    let at = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .map(|t| t.to_rfc3339())
            .unwrap_or_default()
    };
    let now = argus_shared::time::now_ms();
    let out = std::process::Command::new(&argusctl)
        .args(["--controller", &c.url(), "schedule", "n1", "idle"])
        .args(["--at", &at(now + 7_200_000), "at a time"])
        .output()?;
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.starts_with("al-"), "{said}");
    let id = said
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();
    let listed = alarms(&c, false).await?;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, id);
    assert!(
        (listed[0].due_ms - (now + 7_200_000)).abs() < 1000,
        "{listed:?}"
    );
    admin.cancel_alarm(pb::CancelAlarmRequest { id }).await?;
    let out = std::process::Command::new(&argusctl)
        .args(["--controller", &c.url(), "schedule", "n1", "idle"])
        .args(["--at", &at(now - 60_000), "too late"])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("in the past"),
        "{err}"
    );
    // Bad requests name what is wrong.
    let bad = admin
        .schedule_nudge(pb::ScheduleNudgeRequest {
            session: sref("n1", "idle"),
            in_ms: 1000,
            at_ms: 0,
            note: "two\nlines".into(),
        })
        .await
        .expect_err("control character");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");

    // Set, then the node agent goes away before it is due: held, and delivered once it is back.
    let set = admin
        .schedule_nudge(pb::ScheduleNudgeRequest {
            session: sref("n1", "idle"),
            in_ms: 4_000,
            at_ms: 0,
            note: "look at the nightly build".into(),
        })
        .await?
        .into_inner();
    c.agents[0].stop();
    let held = eventually("the alarm held while the node is away", WAIT, || async {
        Ok(alarms(&c, false)
            .await?
            .into_iter()
            .find(|a| a.id == set.id && a.message.contains("node is not connected")))
    })
    .await?;
    assert_eq!(held.state(), pb::AlarmState::Pending);
    assert!(!pane_history(&tmux, "idle")?.contains("nightly build"));
    c.start_agent("n1", tmux.socket())?;
    eventually("the alarm typed in", WAIT, || async {
        Ok(pane_history(&tmux, "idle")?
            .contains("received: [alarm set by an operator] look at the nightly build")
            .then_some(()))
    })
    .await?;
    eventually("the alarm recorded delivered", WAIT, || async {
        Ok(alarms(&c, true)
            .await?
            .into_iter()
            .find(|a| a.id == set.id && a.state() == pb::AlarmState::Delivered))
    })
    .await?;

    // Two due at once: one at a time, in order, the second at a prompt seen after the first was
    // delivered (this agent answers at once and then shows nothing new, so the second waits
    // out alarm::SETTLE_MS, 10 s).
    let mut ids = Vec::new();
    for n in 1..=2 {
        let a = admin
            .schedule_nudge(pb::ScheduleNudgeRequest {
                session: sref("n1", "idle"),
                in_ms: 300,
                at_ms: 0,
                note: format!("batch {n}"),
            })
            .await?
            .into_inner();
        ids.push(a.id);
    }
    let delivered = eventually("two alarms delivered", WAIT + WAIT, || async {
        let all = alarms(&c, true).await?;
        let done: Vec<pb::Alarm> = all
            .into_iter()
            .filter(|a| ids.contains(&a.id) && a.state() == pb::AlarmState::Delivered)
            .collect();
        Ok((done.len() == 2).then_some(done))
    })
    .await?;
    let text = pane_history(&tmux, "idle")?;
    let at: Vec<usize> = (1..=2)
        .map(|n| {
            let line = format!("received: [alarm set by an operator] batch {n}");
            assert_eq!(text.matches(&line).count(), 1, "{text}");
            text.find(&line).unwrap_or_default()
        })
        .collect();
    assert!(at[0] < at[1], "{text}");
    let mut lag: Vec<i64> = delivered.iter().map(|a| a.closed_ms - a.due_ms).collect();
    lag.sort_unstable();
    eprintln!("FIGURE alarm delivery after due, two due at once on one session: {lag:?} ms");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_due_while_the_store_refuses_writes_waits_for_it() -> anyhow::Result<()> {
    let (tmux, _work, c) = idle_agent().await?;
    let set = c
        .admin()
        .await?
        .schedule_nudge(pb::ScheduleNudgeRequest {
            session: sref("n1", "idle"),
            in_ms: 12_000,
            at_ms: 0,
            note: "after the lock".into(),
        })
        .await?
        .into_inner();
    // Another process locks the database before the alarm is due: the alarm's "delivered" row
    // could only be kept in memory, so it is not typed yet.
    let mut locker = argus_tests::sqlite_lock::Locker::hold(&c.dir.path().join("argus.db"), 60)?;
    // The controller learns of the lock from a write that fails; that must come before the alarm
    // is due, or this test proves nothing.
    c.wait_readyz(false).await?;
    let due = std::time::UNIX_EPOCH + Duration::from_millis(set.due_ms as u64);
    let until_due = due
        .duration_since(std::time::SystemTime::now())
        .map_err(|_| anyhow::anyhow!("the store was seen failing only after the alarm was due"))?;
    let typed = || Ok(pane_history(&tmux, "idle")?.contains("after the lock"));
    // Watched until 4 s past its due time.
    let early = eventually(
        "the alarm typed while locked",
        until_due + Duration::from_secs(4),
        || {
            let t = typed();
            async move { t.map(|t: bool| t.then_some(())) }
        },
    )
    .await;
    assert!(early.is_err(), "typed while the store refused writes");
    locker.release();
    eventually("the alarm typed once the store takes writes", WAIT, || {
        let t = typed();
        async move { t.map(|t: bool| t.then_some(())) }
    })
    .await?;
    let done = eventually("the alarm recorded delivered", WAIT, || async {
        Ok(alarms(&c, true)
            .await?
            .into_iter()
            .find(|a| a.id == set.id && a.state() == pb::AlarmState::Delivered))
    })
    .await?;
    assert!(!done.command_id.is_empty(), "{done:?}");
    Ok(())
}
