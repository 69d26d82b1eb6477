//! Deployment that is checked: the systemd units pass `systemd-analyze verify` (pointed at the
//! built binaries) and carry `Type=notify`, a watchdog and their hardening, and the controller's
//! account comes out of `systemd-sysusers`; both real binaries
//! speak the notify protocol (`READY=1`, then `WATCHDOG=1` at half of `WATCHDOG_USEC`) to a
//! socket the test holds, and a node agent whose probe loop hangs (its tmux server stopped) stops
//! pinging until it goes round again; the Kubernetes manifests validate against the Kubernetes schemas
//! (`kubernetes-validate --strict`, installed by tests/run.sh), probe paths the controller serves,
//! and are all listed in kustomization.yaml.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use argus_tests::cluster::TestCluster;
use argus_tests::tmux::TestTmux;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_owned()
}

/// A tool the test needs, or a failure saying how to get it.
fn tool(name: &str) -> anyhow::Result<()> {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()?
        .status
        .success();
    anyhow::ensure!(
        found,
        "{name} is not installed: run tests/run.sh, which installs it"
    );
    Ok(())
}

/// The unit at `rel` (under deploy/systemd) copied into `dir` with its binaries pointed at the
/// ones this workspace built, so that the verifier finds them executable.
fn unit_copy(rel: &str, dir: &Path) -> anyhow::Result<(PathBuf, String)> {
    let text = std::fs::read_to_string(repo().join("deploy/systemd").join(rel))
        .with_context(|| format!("reading deploy/systemd/{rel}"))?;
    let bin = argus_tests::binary("argus-controller")?;
    let bin_dir = bin.parent().context("binary directory")?;
    let copy = text.replace("/usr/local/bin/", &format!("{}/", bin_dir.display()));
    let path = dir.join(Path::new(rel).file_name().context("unit name")?);
    std::fs::write(&path, &copy)?;
    Ok((path, text))
}

/// `systemd-analyze verify` (with `--user` for a user unit): it must succeed and say nothing,
/// since unknown keys and bad values are only warned about.
fn verify(unit: &Path, user: bool, runtime: &Path) -> anyhow::Result<()> {
    let mut cmd = Command::new("systemd-analyze");
    if user {
        cmd.arg("--user").env("XDG_RUNTIME_DIR", runtime);
    }
    let out = cmd.arg("verify").arg(unit).output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    anyhow::ensure!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify {} ({}):\n{said}",
        unit.display(),
        out.status
    );
    Ok(())
}

fn has_line(text: &str, prefix: &str) -> bool {
    text.lines().any(|l| l.trim_start().starts_with(prefix))
}

#[test]
fn systemd_units_verify_and_declare_notify_watchdog_and_hardening() -> anyhow::Result<()> {
    tool("systemd-analyze")?;
    let dir = tempfile::tempdir()?;
    let runtime = tempfile::tempdir()?;
    std::fs::create_dir(dir.path().join("user"))?;
    for (rel, user) in [
        ("argus-controller.service", false),
        ("argus-node-agent.service", false),
        ("user/argus-node-agent.service", true),
    ] {
        let (copy, text) = unit_copy(rel, &dir.path().join(if user { "user" } else { "" }))?;
        verify(&copy, user, runtime.path())?;
        for key in [
            "Type=notify",
            "WatchdogSec=",
            "NoNewPrivileges=yes",
            "Restart=always",
        ] {
            assert!(has_line(&text, key), "{rel} lacks {key}");
        }
        if !user {
            assert!(
                has_line(&text, "ProtectSystem="),
                "{rel} lacks ProtectSystem"
            );
        }
    }
    let controller =
        std::fs::read_to_string(repo().join("deploy/systemd/argus-controller.service"))?;
    assert!(
        has_line(&controller, "User=argus"),
        "the controller runs as its own user"
    );
    assert!(has_line(&controller, "ProtectSystem=strict"));
    // The controller's account, made by systemd-sysusers into a scratch root.
    let root = tempfile::tempdir()?;
    std::fs::create_dir(root.path().join("etc"))?;
    let out = Command::new("systemd-sysusers")
        .arg(format!("--root={}", root.path().display()))
        .arg(repo().join("deploy/systemd/argus.sysusers.conf"))
        .output()?;
    assert!(
        out.status.success(),
        "systemd-sysusers: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd"))?;
    assert!(
        passwd.lines().any(|l| l.starts_with("argus:")
            && l.contains(":/var/lib/argus:")
            && l.ends_with("nologin")),
        "{passwd}"
    );
    let user =
        std::fs::read_to_string(repo().join("deploy/systemd/user/argus-node-agent.service"))?;
    assert!(
        has_line(&user, "WantedBy=default.target"),
        "a user unit starts with the user's manager"
    );

    // The check has teeth: a misspelt key is reported.
    let (copy, text) = unit_copy("argus-controller.service", dir.path())?;
    let bad = dir.path().join("argus-bad.service");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&copy)?.replace("NoNewPrivileges=", "NoNewPrivilege="),
    )?;
    assert!(text.contains("NoNewPrivileges="));
    assert!(verify(&bad, false, runtime.path()).is_err());
    Ok(())
}

/// Reads notify datagrams from `sock` until `READY=1` and two `WATCHDOG=1` arrived.
async fn ready_and_two_pings(sock: &tokio::net::UnixDatagram, who: &str) -> anyhow::Result<()> {
    let mut buf = vec![0u8; 4096];
    let (mut ready, mut pings) = (false, 0);
    tokio::time::timeout(Duration::from_secs(20), async {
        while !(ready && pings >= 2) {
            let n = sock.recv(&mut buf).await?;
            let msg = String::from_utf8_lossy(&buf[..n]);
            ready |= msg.lines().any(|l| l == "READY=1");
            // A ping before READY=1 would be a bug: systemd ignores it.
            if ready && msg.lines().any(|l| l == "WATCHDOG=1") {
                pings += 1;
            }
        }
        anyhow::Ok(())
    })
    .await
    .with_context(|| format!("{who}: READY=1 {ready}, {pings} WATCHDOG=1 after READY"))?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_binaries_notify_ready_and_ping_the_watchdog() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (ctl_path, node_path) = (dir.path().join("ctl.sock"), dir.path().join("node.sock"));
    let ctl_sock = tokio::net::UnixDatagram::bind(&ctl_path)?;
    let node_sock = tokio::net::UnixDatagram::bind(&node_path)?;
    // A 1 s watchdog: pings every 500 ms.
    let spec = TestCluster::spec()
        .env("NOTIFY_SOCKET", &ctl_path.display().to_string())
        .env("WATCHDOG_USEC", "1000000");
    let mut c = TestCluster::start(spec).await?;
    ready_and_two_pings(&ctl_sock, "argus-controller")
        .await
        .with_context(|| c.controller_log())?;

    let tmux = TestTmux::new();
    tmux.session("work", "exec sleep 600", &[])?;
    let spec = c
        .agent_spec("n1", tmux.socket())
        .env("NOTIFY_SOCKET", &node_path.display().to_string())
        .env("WATCHDOG_USEC", "1000000");
    c.agents.push(spec.start(c.dir.path())?);
    ready_and_two_pings(&node_sock, "argus-node-agent").await?;

    // The probe loop hangs on a stopped tmux server: the pings stop, with a warning each period,
    // and come back once the server runs again.
    let server: u32 = tmux
        .run(&["display-message", "-p", "#{pid}"])?
        .trim()
        .parse()?;
    let stopped = Stopped::new(server)?;
    let warning = "no heartbeat for one watchdog period";
    let warned = |n: usize| {
        let log = c.agents[0].log();
        async move { Ok((log.matches(warning).count() >= n).then_some(())) }
    };
    argus_tests::eventually("a missed heartbeat", Duration::from_secs(10), || warned(1)).await?;
    drain(&node_sock);
    let before = c.agents[0].log().matches(warning).count();
    argus_tests::eventually("another missed heartbeat", Duration::from_secs(10), || {
        warned(before + 1)
    })
    .await?;
    assert_eq!(drain(&node_sock), 0, "pinged while the probe loop hung");
    drop(stopped);
    let mut buf = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let n = node_sock.recv(&mut buf).await?;
            if String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == "WATCHDOG=1")
            {
                return anyhow::Ok(());
            }
        }
    })
    .await
    .context("no ping after the tmux server runs again")??;

    // The probe paths the Kubernetes manifests use answer on the HTTP side port.
    let http = c.http().context("the test controller serves HTTP")?;
    for path in ["/healthz", "/readyz"] {
        let mut s = tokio::net::TcpStream::connect(http).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut answer = String::new();
        s.read_to_string(&mut answer).await?;
        assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
    }
    Ok(())
}

/// The `WATCHDOG=1` messages waiting on `sock`, read and counted.
fn drain(sock: &tokio::net::UnixDatagram) -> usize {
    let mut buf = [0u8; 4096];
    let mut pings = 0;
    while let Ok(n) = sock.try_recv(&mut buf) {
        pings += String::from_utf8_lossy(&buf[..n])
            .lines()
            .filter(|l| *l == "WATCHDOG=1")
            .count();
    }
    pings
}

/// A process stopped with SIGSTOP, continued when dropped (also when the test fails, so that
/// the tmux server can be killed).
struct Stopped(u32);

impl Stopped {
    fn new(pid: u32) -> anyhow::Result<Self> {
        signal(pid, "-STOP")?;
        Ok(Self(pid))
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = signal(self.0, "-CONT");
    }
}

fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()?
        .success();
    anyhow::ensure!(ok, "kill {sig} {pid} failed");
    Ok(())
}

#[test]
fn kubernetes_manifests_validate_against_the_schemas() -> anyhow::Result<()> {
    tool("kubernetes-validate")?;
    let k8s = repo().join("deploy/kubernetes");
    let kustomization = std::fs::read_to_string(k8s.join("kustomization.yaml"))?;
    let mut manifests: Vec<String> = std::fs::read_dir(&k8s)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    manifests.sort();
    for m in &manifests {
        assert!(
            kustomization.lines().any(|l| l.trim() == format!("- {m}")),
            "kustomization.yaml does not list {m}"
        );
    }
    let out = Command::new("kubernetes-validate")
        .arg("--strict")
        .args(manifests.iter().map(|m| k8s.join(m)))
        .output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "kubernetes-validate failed:\n{said}");
    for resource in [
        "namespace/argus",
        "deployment/argus-controller",
        "service/argus-controller",
        "poddisruptionbudget/argus-controller",
        "daemonset/argus-node-agent",
    ] {
        assert!(
            said.contains(&format!("passed for resource {resource}")),
            "{resource} was not validated:\n{said}"
        );
    }
    assert!(!said.contains("ERROR") && !said.contains("WARN"), "{said}");

    let controller = std::fs::read_to_string(k8s.join("controller.yaml"))?;
    for needed in [
        "path: /healthz",
        "path: /readyz",
        "secretKeyRef:",
        "name: ARGUS_DB",
    ] {
        assert!(
            controller.contains(needed),
            "controller.yaml lacks {needed}"
        );
    }
    let node = std::fs::read_to_string(k8s.join("node-agent.yaml"))?;
    for needed in ["kind: DaemonSet", "hostPID: true", "/tmp/tmux-1000"] {
        assert!(node.contains(needed), "node-agent.yaml lacks {needed}");
    }

    // The check has teeth: a misspelt field is refused.
    let dir = tempfile::tempdir()?;
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, controller.replace("  replicas: 3", "  replica: 3"))?;
    let out = Command::new("kubernetes-validate")
        .arg("--strict")
        .arg(&bad)
        .output()?;
    assert!(!out.status.success(), "a misspelt field passed");
    Ok(())
}
