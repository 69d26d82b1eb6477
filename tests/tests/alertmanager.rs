//! Alerts into a real Alertmanager (its v2 API) and a Slack-compatible webhook, from the real
//! binaries: a session waiting at a permission prompt is a firing `ArgusNeedsHuman` alert until
//! it works again; a paused node agent is a firing `ArgusIncident` (`host_silent`) alert that
//! resolves when the node agent resumes. The Slack receiver records `{"text": ...}` bodies.

use std::time::Duration;

use argus_tests::cluster::{TestCluster, fake_agent as agent};
use argus_tests::eventually;
use argus_tests::monitoring::{Alertmanager, alertmanager_binary};
use argus_tests::tmux::TestTmux;
use argus_tests::webhook;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

/// No nudges; a node is suspect after 1 s of silence.
const POLICY: &str = r#"
nudge_dwell = "1h"
node_suspect_after = "1s"
node_down_after = "30s"
"#;

fn signal(pid: u32, sig: rustix::process::Signal) -> anyhow::Result<()> {
    let pid = rustix::process::Pid::from_raw(pid as i32).ok_or(anyhow::anyhow!("pid 0"))?;
    rustix::process::kill_process(pid, sig)?;
    Ok(())
}

/// The alerts named `name` that Alertmanager holds as active, with label `key` = `value`.
async fn active(
    am: &Alertmanager,
    name: &str,
    key: &str,
    value: &str,
) -> anyhow::Result<Vec<Value>> {
    Ok(am
        .named(name)
        .await?
        .into_iter()
        .filter(|a| a["labels"][key] == value && a["status"]["state"] == "active")
        .collect())
}

/// The Slack texts received so far.
fn texts(received: &webhook::Received) -> Vec<String> {
    received
        .all()
        .iter()
        .filter_map(|b| b["text"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incidents_and_needs_a_person_fire_and_resolve_in_alertmanager() -> anyhow::Result<()> {
    let Some(binary) = alertmanager_binary() else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let am = Alertmanager::start(&binary, dir.path()).await?;
    let (slack_url, slack) = webhook::start().await?;
    let mut spec = TestCluster::spec().policy(POLICY);
    spec.config.alertmanagers = vec![am.url()];
    spec.config.slack_webhooks = vec![slack_url];
    let mut c = TestCluster::start(spec).await?;
    let tmux = TestTmux::new();
    // In the cluster's directory: a kill or restart takes its checkpoint there.
    let cwd = c.dir.path().display().to_string();
    // Read with Claude's profile, whose screen patterns know its permission prompt.
    let claude = [("profile", "claude")];
    tmux.session(
        "asks",
        &format!("cd {cwd} && exec {}", agent("permission")),
        &claude,
    )?;
    tmux.session(
        "calm",
        &format!("cd {cwd} && exec {}", agent("idle")),
        &claude,
    )?;
    c.start_agent("n1", tmux.socket())?;

    // Waiting at a permission prompt: one firing needs-a-person alert, for that session only.
    let fired = eventually("the needs-a-person alert", WAIT, || async {
        let a = active(&am, "ArgusNeedsHuman", "session", "asks").await?;
        Ok((!a.is_empty()).then_some(a))
    })
    .await?;
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!(fired[0]["labels"]["node"], "n1");
    assert!(
        fired[0]["annotations"]["summary"]
            .as_str()
            .unwrap_or_default()
            .contains("permission"),
        "{fired:?}"
    );
    assert!(
        active(&am, "ArgusNeedsHuman", "session", "calm")
            .await?
            .is_empty()
    );
    eventually(
        "the Slack text of the needs-a-person event",
        WAIT,
        || async {
            Ok(texts(&slack)
                .iter()
                .any(|t| t.contains("session asks on n1 needs a person"))
                .then_some(()))
        },
    )
    .await?;

    // A person answered (the pane now runs a working agent): the alert resolves.
    tmux.run(&[
        "respawn-pane",
        "-k",
        "-t",
        "=asks:",
        &format!("cd {cwd} && exec {}", agent("working")),
    ])?;
    eventually("the needs-a-person alert to resolve", WAIT, || async {
        Ok(am.named("ArgusNeedsHuman").await?.is_empty().then_some(()))
    })
    .await?;

    // The node agent pauses: a host_silent incident fires, and resolves when it resumes.
    assert!(
        am.named("ArgusIncident").await?.is_empty(),
        "no incident yet"
    );
    let pid = c.agents[0].pid();
    signal(pid, rustix::process::Signal::STOP)?;
    let incident = eventually("the host_silent alert", WAIT, || async {
        let a = active(&am, "ArgusIncident", "kind", "host_silent").await?;
        Ok(a.into_iter().next())
    })
    .await;
    signal(pid, rustix::process::Signal::CONT)?;
    let incident = incident?;
    assert_eq!(incident["labels"]["scope"], "n1", "{incident}");
    assert!(
        incident["labels"]["incident"]
            .as_str()
            .unwrap_or_default()
            .starts_with("inc-"),
        "{incident}"
    );
    let starts = incident["startsAt"].as_str().unwrap_or_default().to_owned();
    let ends = incident["endsAt"].as_str().unwrap_or_default().to_owned();
    assert!(
        ends > starts,
        "a firing alert ends in the future: {incident}"
    );
    eventually("the host_silent alert to resolve", WAIT, || async {
        Ok(am.named("ArgusIncident").await?.is_empty().then_some(()))
    })
    .await?;
    let count = |prefix: &str| {
        texts(&slack)
            .iter()
            .filter(|t| t.starts_with(prefix))
            .count()
    };
    let resolved = "resolved: [argus] incident host_silent n1";
    eventually("the Slack text of the resolved incident", WAIT, || async {
        Ok((count(resolved) > 0).then_some(()))
    })
    .await?;
    let opened = count("[argus] incident host_silent n1");
    assert_eq!((opened, count(resolved)), (1, 1), "{:?}", texts(&slack));
    Ok(())
}
