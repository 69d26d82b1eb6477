//! The binaries' configuration as an operator meets it: a file, `ARGUS_*` variables and flags,
//! in that order of precedence; `--print-config` prints what would run, and its output loads
//! back unchanged; an unknown key or a bad value is refused with the key named.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use argus_tests::binary;

/// Runs `program ARGS` with only the `env` given among `ARGUS_*` variables; its exit status,
/// stdout and stderr. Killed if it has not exited within 20 s.
async fn run(
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<(bool, String, String)> {
    let mut cmd = tokio::process::Command::new(binary(program)?);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ARGUS_") {
            cmd.env_remove(key);
        }
    }
    cmd.args(args)
        .envs(env.iter().copied())
        .env("RUST_BACKTRACE", "0")
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .with_context(|| format!("{program} {args:?} did not exit within 20 s"))??;
    Ok((
        out.status.success(),
        String::from_utf8(out.stdout)?,
        String::from_utf8(out.stderr)?,
    ))
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

#[tokio::test]
async fn node_agent_file_then_env_then_flags() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("node.toml");
    std::fs::write(
        &file,
        "insecure = true\nnode_id = \"from-file\"\nprobe_interval = \"3s\"\nheartbeat = \"4s\"\nstate_dir = \"/from/file\"\n",
    )?;
    let (ok, out, err) = run(
        "argus-node-agent",
        &[
            "--config",
            &path(&file),
            "--node-id",
            "from-flag",
            "--print-config",
        ],
        &[
            ("ARGUS_NODE_ID", "from-env"),
            ("ARGUS_PROBE_INTERVAL", "5s"),
        ],
    )
    .await?;
    assert!(ok, "{err}");
    let c: argus_node_agent::Config = toml::from_str(&out)?;
    assert_eq!(c.node_id.as_deref(), Some("from-flag"), "flag over env");
    assert_eq!(c.probe_interval, Duration::from_secs(5), "env over file");
    assert_eq!(c.heartbeat, Duration::from_secs(4), "file over default");
    assert_eq!(c.state_dir, Path::new("/from/file"));
    assert_eq!(
        c.event_buffer,
        argus_node_agent::Config::default().event_buffer
    );

    // The printed configuration loads back to the same configuration.
    assert_round_trip("argus-node-agent", dir.path(), &out).await
}

#[tokio::test]
async fn controller_file_then_env_then_flags_with_its_local_node_agent() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("controller.toml");
    std::fs::write(
        &file,
        "insecure = true\ntick = \"2s\"\ndb = \"sqlite://from-file.db\"\nwebhooks = [\"https://file/hook\"]\n\n[local]\nprobe_interval = \"3s\"\nstate_dir = \"/from/file\"\n",
    )?;
    let (ok, out, err) = run(
        "argus-controller",
        &[
            "--config",
            &path(&file),
            "--tick",
            "100ms",
            "--state-dir",
            "/from/flag",
            "--print-config",
        ],
        &[
            ("ARGUS_TICK", "1s"),
            ("ARGUS_DB", "sqlite://from-env.db"),
            ("ARGUS_PROBE_INTERVAL", "5s"),
        ],
    )
    .await?;
    assert!(ok, "{err}");
    let c: argus_controller::Config = toml::from_str(&out)?;
    assert_eq!(c.tick, Duration::from_millis(100), "flag over env");
    assert_eq!(c.db, "sqlite://from-env.db", "env over file");
    assert_eq!(c.webhooks, vec!["https://file/hook".to_owned()]);
    let local = c
        .local
        .context("the [local] table runs the local node agent")?;
    assert_eq!(local.state_dir, Path::new("/from/flag"));
    assert_eq!(local.probe_interval, Duration::from_secs(5));
    assert_eq!(local.controller, "http://127.0.0.1:7070");

    assert_round_trip("argus-controller", dir.path(), &out).await
}

/// `printed` (a `--print-config` output of `binary`), loaded with `--config`, prints itself again.
async fn assert_round_trip(binary: &str, dir: &Path, printed: &str) -> anyhow::Result<()> {
    let file = dir.join("printed.toml");
    std::fs::write(&file, printed)?;
    let (ok, again, err) = run(binary, &["--config", &path(&file), "--print-config"], &[]).await?;
    assert!(ok, "{err}");
    assert_eq!(again, printed);
    Ok(())
}

#[tokio::test]
async fn unknown_keys_are_refused_naming_the_key_and_the_file() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("typo.toml");
    std::fs::write(&file, "insecure = true\nprobe_intervall = \"1s\"\n")?;
    let (ok, _, err) = run("argus-node-agent", &["--config", &path(&file)], &[]).await?;
    assert!(!ok);
    assert!(err.contains(&path(&file)), "{err}");
    assert!(err.contains("unknown field `probe_intervall`"), "{err}");

    std::fs::write(&file, "insecure = true\n[local]\nheartbeet = \"1s\"\n")?;
    let (ok, _, err) = run("argus-controller", &["--config", &path(&file)], &[]).await?;
    assert!(!ok);
    assert!(err.contains("unknown field `heartbeet`"), "{err}");
    Ok(())
}

#[tokio::test]
async fn bad_values_are_refused_naming_the_key() -> anyhow::Result<()> {
    let (ok, _, err) = run(
        "argus-node-agent",
        &["--insecure", "--probe-interval", "0s"],
        &[],
    )
    .await?;
    assert!(!ok);
    assert!(
        err.contains("invalid configuration: probe_interval: must be longer than 0s"),
        "{err}"
    );
    let (ok, _, err) = run("argus-controller", &[], &[]).await?;
    assert!(!ok);
    assert!(
        err.contains("invalid configuration: tls_cert: is required to serve TLS (--tls-cert"),
        "{err}"
    );
    let (ok, _, err) = run(
        "argus-controller",
        &["--insecure", "--local", "--node-id", "not a node id"],
        &[],
    )
    .await?;
    assert!(!ok);
    assert!(err.contains("local.node_id: \"not a node id\""), "{err}");
    Ok(())
}
