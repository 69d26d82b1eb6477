//! `argusctl` as a person or a script uses it, against a real controller and node agent: every
//! listing in `-o json` parses and carries what it lists, `-o wide` adds columns, no colour when
//! stdout is not a terminal, `sessions --watch` refreshes until Ctrl-C and then ends cleanly,
//! completion scripts come out and bash accepts its own, and a refusal names the session and
//! says what to do.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use argus_tests::binary;
use argus_tests::cluster::{TestCluster, fake_agent};
use argus_tests::tmux::TestTmux;
use serde_json::Value;
use tokio::io::AsyncBufReadExt;

const WAIT: Duration = Duration::from_secs(20);

/// Runs argusctl against the cluster; returns (success, stdout, stderr).
fn argusctl(c: &TestCluster, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
    let out = Command::new(binary("argusctl")?)
        .arg("--controller")
        .arg(c.url())
        .args(args)
        .env_remove("NO_COLOR")
        .output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn json_listing(c: &TestCluster, args: &[&str]) -> anyhow::Result<Vec<Value>> {
    let (ok, out, err) = argusctl(c, args)?;
    anyhow::ensure!(ok, "argusctl {args:?} failed: {err}");
    let v: Value =
        serde_json::from_str(&out).with_context(|| format!("argusctl {args:?}: {out}"))?;
    v.as_array()
        .cloned()
        .with_context(|| format!("argusctl {args:?} is not a JSON array: {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_watch_completions_and_errors() -> anyhow::Result<()> {
    let tmux = TestTmux::new();
    tmux.session("work", &fake_agent("quiet"), &[("group", "night")])?;
    let mut c = TestCluster::start(TestCluster::spec()).await?;
    c.start_agent("n1", tmux.socket())?;
    c.wait_session("n1", "work", "listed with its agent", WAIT, |s| {
        s.agent_pid > 0
    })
    .await?;

    // JSON: every field, typed.
    let sessions = json_listing(&c, &["sessions", "-o", "json"])?;
    let work = sessions
        .iter()
        .find(|s| s["session_name"] == "work")
        .with_context(|| format!("work not in {sessions:?}"))?;
    assert_eq!(work["node_id"], "n1");
    assert_eq!(work["tmux_socket"], tmux.socket().display().to_string());
    assert!(work["agent_pid"].as_u64().is_some_and(|p| p > 0), "{work}");
    assert_eq!(work["labels"]["group"], "night", "{work}");
    assert!(
        work["state"].is_string() && work["last_change_ms"].is_i64(),
        "{work}"
    );
    let nodes = json_listing(&c, &["nodes", "-o", "json"])?;
    assert!(
        nodes
            .iter()
            .any(|n| n["node_id"] == "n1" && n["session_count"] == 1),
        "{nodes:?}"
    );
    for listing in ["incidents", "alarms", "handoffs", "checkpoints"] {
        json_listing(&c, &[listing, "-o", "json"])?;
    }

    // Tables: the usual columns, wide adds some; never colour into a pipe.
    let (ok, table, _) = argusctl(&c, &["sessions"])?;
    assert!(ok);
    let header = table.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("NODE") && header.contains("STATE"),
        "{table}"
    );
    assert!(!header.contains("LABELS"), "{table}");
    assert!(table.lines().any(|l| l.contains("work")), "{table}");
    assert!(!table.contains('\x1b'), "colour into a pipe: {table:?}");
    let (_, wide, _) = argusctl(&c, &["sessions", "-o", "wide"])?;
    assert!(
        wide.lines().next().unwrap_or_default().contains("LABELS") && wide.contains("group=night"),
        "{wide}"
    );

    let (ok, one, err) = argusctl(&c, &["session", "n1", "work"])?;
    assert!(ok && one.contains("labels    group=night"), "{one}\n{err}");

    // A refusal names the session and says what to do.
    let (ok, _, err) = argusctl(&c, &["session", "n1", "nosuch"])?;
    assert!(!ok);
    assert!(
        err.contains("\"nosuch\"")
            && err.contains("\"n1\"")
            && err.contains("argusctl sessions --node n1"),
        "{err}"
    );

    // Completions: non-empty scripts; bash parses its own.
    for shell in ["bash", "zsh", "fish"] {
        let (ok, script, err) = argusctl(&c, &["completions", shell])?;
        assert!(ok && script.contains("argusctl"), "{shell}: {err}");
        if shell == "bash" {
            let dir = tempfile::tempdir()?;
            let file = dir.path().join("argusctl.bash");
            std::fs::write(&file, &script)?;
            let check = Command::new("bash").arg("-n").arg(&file).output()?;
            assert!(
                check.status.success(),
                "bash -n: {}",
                String::from_utf8_lossy(&check.stderr)
            );
            assert!(script.contains("sessions") && script.contains("--output"));
        }
    }

    // --watch refreshes (one JSON array per refresh) until Ctrl-C, then succeeds.
    let mut watch = tokio::process::Command::new(binary("argusctl")?)
        .args(["--controller", &c.url(), "sessions", "--watch"])
        .args(["--interval", "200ms", "-o", "json"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::BufReader::new(watch.stdout.take().context("stdout")?).lines();
    for refresh in 0..3 {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .with_context(|| format!("refresh {refresh} did not come"))??
            .context("argusctl --watch ended early")?;
        let rows: Vec<Value> = serde_json::from_str(&line)?;
        assert!(rows.iter().any(|s| s["session_name"] == "work"), "{line}");
    }
    let pid = watch.id().context("the watch runs")?;
    let sent = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()?;
    assert!(sent.success());
    let status = tokio::time::timeout(WAIT, watch.wait())
        .await
        .context("--watch did not end on Ctrl-C")??;
    assert!(status.success(), "--watch ended with {status}");
    Ok(())
}
