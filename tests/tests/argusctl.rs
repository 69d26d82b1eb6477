//! `argusctl` against a real controller and a node agent watching two private tmux servers that
//! both hold a session named `work`: the name alone is refused with the sockets listed, and
//! `--socket` addresses each one.

use std::process::Command;
use std::time::Duration;

use argus_proto::v1 as pb;
use argus_tests::cluster::TestCluster;
use argus_tests::tmux::TestTmux;
use argus_tests::{binary, eventually};

const WAIT: Duration = Duration::from_secs(20);

/// Runs argusctl against the cluster; returns (success, stdout, stderr).
fn argusctl(c: &TestCluster, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
    let out = Command::new(binary("argusctl")?)
        .arg("--controller")
        .arg(c.url())
        .args(args)
        .output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_on_two_tmux_servers_is_addressed_by_socket() -> anyhow::Result<()> {
    let a = TestTmux::new();
    let b = TestTmux::new();
    a.session("work", "echo marker-on-a; exec sleep 600", &[])?;
    b.session("work", "echo marker-on-b; exec sleep 600", &[])?;
    let (sock_a, sock_b) = (
        a.socket().display().to_string(),
        b.socket().display().to_string(),
    );

    let mut c = TestCluster::start(TestCluster::spec()).await?;
    // One node agent watching both servers.
    let mut spec = c.agent_spec("n1", a.socket());
    spec.config.tmux_sockets.push(b.socket().to_owned());
    c.agents.push(spec.start(c.dir.path())?);
    eventually("both sessions named work", WAIT, || async {
        let r = c
            .admin()
            .await?
            .list_sessions(pb::ListSessionsRequest {
                node_id: "n1".into(),
            })
            .await;
        let Ok(r) = r else { return Ok(None) };
        let n = r
            .into_inner()
            .sessions
            .iter()
            .filter(|s| s.session_name == "work")
            .count();
        Ok((n == 2).then_some(()))
    })
    .await?;

    // `sessions` shows which tmux server each session lives on.
    let (ok, out, err) = argusctl(&c, &["sessions", "--node", "n1"])?;
    assert!(ok, "{err}");
    assert!(out.contains("SOCKET"), "{out}");
    assert!(out.contains(&sock_a) && out.contains(&sock_b), "{out}");
    // A plain `sleep` is no agent: listed as only watched, never acted on by the policy.
    let rows: Vec<&str> = out.lines().filter(|l| l.contains(" work ")).collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert!(rows.iter().all(|l| l.contains(" watch ")), "{out}");

    // The name alone is ambiguous: a clear error listing both sockets.
    let (ok, _, err) = argusctl(&c, &["capture", "n1", "work"])?;
    assert!(!ok, "an ambiguous name must be refused");
    assert!(err.contains("--socket"), "{err}");
    assert!(err.contains(&sock_a) && err.contains(&sock_b), "{err}");

    // --socket picks one; each capture shows its own server's screen.
    for (sock, marker) in [(&sock_a, "marker-on-a"), (&sock_b, "marker-on-b")] {
        let (ok, out, err) = argusctl(&c, &["session", "n1", "work", "--socket", sock])?;
        assert!(ok, "{err}");
        assert!(out.contains(&format!("({sock})")), "{out}");
        let (ok, out, err) = argusctl(&c, &["capture", "n1", "work", "--socket", sock])?;
        assert!(ok, "{err}");
        assert!(out.contains(marker), "capture through {sock}: {out}");
    }

    // A socket that holds no such session is NOT_FOUND and names the socket.
    let (ok, _, err) = argusctl(
        &c,
        &["capture", "n1", "work", "--socket", "/nonexistent.sock"],
    )?;
    assert!(!ok);
    assert!(
        err.contains("/nonexistent.sock") && err.contains("NotFound"),
        "{err}"
    );
    Ok(())
}
