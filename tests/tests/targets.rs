//! Exact targets: sessions whose names tmux would read as something else (a session id, a
//! client name, a format) are acted on exactly, through the real controller, node agent and a
//! private tmux server. Each case once hit another session or failed.

use std::collections::BTreeSet;
use std::time::Duration;

use argus_proto::v1 as pb;
use argus_tests::cluster::{TestCluster, fake_agent as agent, sref};
use argus_tests::eventually;
use argus_tests::tmux::TestTmux;

const FAST: &str = r#"
nudge_dwell = "1h"
restart_backoff_min = "200ms"
"#;
const WAIT: Duration = Duration::from_secs(20);
const SEP: char = '\u{1f}';

/// Creates a session under exactly `name` (`#` escaped, since `new-session -s` expands formats)
/// with `@argus-*` labels set by its id; returns the id.
fn create(
    tmux: &TestTmux,
    name: &str,
    command: &str,
    labels: &[(&str, &str)],
) -> anyhow::Result<String> {
    let escaped = name.replace('#', "##");
    let out = tmux.run(&[
        "new-session",
        "-d",
        "-P",
        "-F",
        "#{session_id}",
        "-s",
        &escaped,
        "-x",
        "120",
        "-y",
        "30",
        command,
    ])?;
    let id = out.trim().to_owned();
    for (k, v) in labels {
        tmux.run(&["set-option", "-t", &id, &format!("@argus-{k}"), v])?;
    }
    anyhow::ensure!(names(tmux)?.contains(name), "{name:?} not created as such");
    Ok(id)
}

/// (id, name) of every session of the server.
fn sessions(tmux: &TestTmux) -> anyhow::Result<BTreeSet<(String, String)>> {
    let format = format!("#{{session_id}}{SEP}#{{session_name}}");
    let out = tmux.run(&["list-sessions", "-F", &format])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_once(SEP))
        .map(|(id, name)| (id.to_owned(), name.to_owned()))
        .collect())
}

/// The names of every session of the server (never looked up by name: `=$0` is an id).
fn names(tmux: &TestTmux) -> anyhow::Result<BTreeSet<String>> {
    Ok(sessions(tmux)?.into_iter().map(|(_, n)| n).collect())
}

/// The value of a session option, by session id.
fn option(tmux: &TestTmux, id: &str, key: &str) -> String {
    tmux.run(&["show-options", "-v", "-t", id, key])
        .unwrap_or_default()
        .trim()
        .to_owned()
}

async fn kill(c: &TestCluster, name: &str) -> anyhow::Result<pb::CommandResponse> {
    Ok(c.admin()
        .await?
        .kill(pb::KillRequest {
            session: sref("n1", name),
            grace_ms: 500,
        })
        .await?
        .into_inner())
}

/// Waits until the controller knows `name` with a running agent.
async fn known(c: &TestCluster, name: &str) -> anyhow::Result<pb::Session> {
    c.wait_session("n1", name, &format!("{name:?} reported"), WAIT, |s| {
        s.agent_pid > 0
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_of_a_session_named_like_an_id_kills_only_that_session() -> anyhow::Result<()> {
    let tmux = TestTmux::new();
    // "first" is $0; the session *named* "$0" is $1.
    let first = create(&tmux, "first", &agent("quiet"), &[])?;
    assert_eq!(first, "$0");
    create(&tmux, "$0", &agent("quiet"), &[])?;
    let mut c = TestCluster::with_policy(FAST).await?;
    c.start_agent("n1", tmux.socket())?;
    known(&c, "first").await?;
    known(&c, "$0").await?;

    let r = kill(&c, "$0").await?;
    assert_eq!(r.status(), pb::CommandStatus::Ok, "{r:?}");
    let left = names(&tmux)?;
    assert!(
        left.contains("first"),
        "the session with id $0 was killed too: {left:?}"
    );
    assert!(
        !left.contains("$0"),
        "the session named $0 survived: {left:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_of_a_session_named_like_the_control_client_spares_its_session() -> anyhow::Result<()>
{
    let tmux = TestTmux::new();
    create(&tmux, "alpha", &agent("quiet"), &[])?;
    create(&tmux, "beta", &agent("quiet"), &[])?;
    let mut c = TestCluster::with_policy(FAST).await?;
    c.start_agent("n1", tmux.socket())?;
    known(&c, "alpha").await?;
    known(&c, "beta").await?;

    // The node agent's control client, its tmux name (`client-PID`) and the session it sits on.
    let format = format!("#{{client_name}}{SEP}#{{client_session}}{SEP}#{{client_control_mode}}");
    let (client, attached) = eventually("the node agent's control client", WAIT, || async {
        let out = tmux.run(&["list-clients", "-F", &format])?;
        Ok(out.lines().find_map(|l| {
            let f: Vec<&str> = l.split(SEP).collect();
            (f.len() == 3 && f[2] == "1").then(|| (f[0].to_owned(), f[1].to_owned()))
        }))
    })
    .await?;
    assert!(client.starts_with("client-"), "{client}");
    create(&tmux, &client, &agent("quiet"), &[])?;
    known(&c, &client).await?;

    let r = kill(&c, &client).await?;
    assert_eq!(r.status(), pb::CommandStatus::Ok, "{r:?}");
    let left = names(&tmux)?;
    assert!(
        left.contains(&attached),
        "{attached:?}, the session the control client {client} sits on, was killed: {left:?}"
    );
    assert!(left.contains("alpha") && left.contains("beta"), "{left:?}");
    assert!(!left.contains(&client), "{left:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_session_named_with_a_format_comes_back_under_its_own_name() -> anyhow::Result<()>
{
    let tmux = TestTmux::new();
    let marker = tempfile::Builder::new().prefix("argus-marker-").tempdir()?;
    let marker = marker.path().join("format-ran");
    let name = format!("job#(touch {})x", marker.display());
    let restart = agent("quiet");
    create(&tmux, "bystander", &agent("quiet"), &[])?;
    // Dies after 1 s; the session closes with it and is restarted from its label.
    create(
        &tmux,
        &name,
        &agent("exit 1"),
        &[("restart", &restart), ("group", "#{session_id}")],
    )?;
    let mut c = TestCluster::with_policy(FAST).await?;
    c.start_agent("n1", tmux.socket())?;

    let (id, _) = eventually(
        "the session created anew under its own name",
        WAIT,
        || async {
            Ok(sessions(&tmux)?
                .into_iter()
                .find(|(id, n)| *n == name && id != "$1"))
        },
    )
    .await?;
    let now = names(&tmux)?;
    assert_eq!(
        now,
        BTreeSet::from(["bystander".to_owned(), name.clone()]),
        "a session under another name appeared"
    );
    assert_eq!(option(&tmux, &id, "@argus-restart"), restart);
    assert_eq!(option(&tmux, &id, "@argus-group"), "#{session_id}");
    assert!(
        !marker.exists(),
        "the name was run as a format: {marker:?} exists"
    );
    c.wait_session("n1", &name, "restarted agent reported", WAIT, |s| {
        s.agent_pid > 0 && s.state() != pb::SessionState::Dead
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_session_named_like_an_id_gets_its_own_labels_back() -> anyhow::Result<()> {
    let tmux = TestTmux::new();
    let restart = agent("quiet");
    // "first" is $0, unlabelled; the session named "$0" dies and is created anew.
    assert_eq!(create(&tmux, "first", &agent("quiet"), &[])?, "$0");
    create(&tmux, "$0", &agent("exit 1"), &[("restart", &restart)])?;
    let mut c = TestCluster::with_policy(FAST).await?;
    c.start_agent("n1", tmux.socket())?;

    let (id, _) = eventually("\"$0\" created anew", WAIT, || async {
        Ok(sessions(&tmux)?
            .into_iter()
            .find(|(id, n)| n == "$0" && id != "$1"))
    })
    .await?;
    c.wait_session("n1", "$0", "restarted agent reported", WAIT, |s| {
        s.agent_pid > 0 && s.state() != pb::SessionState::Dead
    })
    .await?;
    assert_eq!(option(&tmux, &id, "@argus-restart"), restart);
    assert_eq!(
        option(&tmux, "$0", "@argus-restart"),
        "",
        "the labels of \"$0\" landed on the session with id $0"
    );
    assert_eq!(
        names(&tmux)?,
        BTreeSet::from(["first".to_owned(), "$0".to_owned()])
    );
    Ok(())
}
