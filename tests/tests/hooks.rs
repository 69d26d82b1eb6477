//! The agents' own hooks, with the real controller, node agent and argusctl: a hook run inside
//! the session (`argusctl self event --from claude`, the command `argusctl hooks install` writes)
//! decides the session's condition before its screen shows it, and once the hooks stop, the
//! screen decides again after the hook window. A hook never fails its agent.

use std::time::Duration;

use argus_proto::v1 as pb;
use argus_tests::cluster::TestCluster;
use argus_tests::tmux::TestTmux;

const WAIT: Duration = Duration::from_secs(30);

const PERMISSION: &str = r#"{"hook_event_name":"Notification","notification_type":"permission_prompt","message":"Claude needs your permission to use Bash"}"#;

fn now_ms() -> i64 {
    argus_shared::time::now_ms()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_decides_before_the_screen_and_the_screen_takes_over_when_it_stops()
-> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let dir = work.path().display().to_string();
    let claude = work.path().join("claude");
    std::os::unix::fs::symlink(argus_tests::binary("fake-agent")?, &claude)?;
    let argusctl = argus_tests::binary("argusctl")?.display().to_string();
    std::fs::write(work.path().join("payload.json"), PERMISSION)?;
    // The session's agent works (a busy screen) the whole time; when the test says so, a hook
    // fires as Claude Code runs it: the payload on stdin.
    let script = format!(
        r#"
{claude} working & w=$!
while [ ! -e {dir}/go ]; do sleep 0.02; done
date +%s%3N > {dir}/fired.ms
{argusctl} self event --from claude < {dir}/payload.json 2> {dir}/hook.err
echo $? > {dir}/hook.rc
wait $w
"#,
        claude = claude.display()
    );
    std::fs::write(work.path().join("agent.sh"), script)?;
    let tmux = TestTmux::new();
    tmux.session(
        "worker",
        &format!("bash {dir}/agent.sh"),
        &[("profile", "claude")],
    )?;
    let mut c = TestCluster::with_policy("nudge_dwell = \"1h\"").await?;
    let mut spec = c.agent_spec("n1", tmux.socket());
    spec.config.hook_fresh = Duration::from_secs(3);
    c.agents.push(spec.start(c.dir.path())?);

    let s = c
        .wait_session("n1", "worker", "busy by its screen", WAIT, |s| {
            s.condition() == pb::Condition::Thinking
        })
        .await?;
    assert_eq!(s.decided_by, "screen", "{s:?}");

    std::fs::write(work.path().join("go"), "")?;
    let s = c
        .wait_session(
            "n1",
            "worker",
            "waiting for permission by its hook",
            WAIT,
            |s| s.condition() == pb::Condition::WaitingPermission,
        )
        .await?;
    let seen = now_ms();
    assert_eq!(s.decided_by, "hook", "{s:?}");
    let fired: i64 = std::fs::read_to_string(work.path().join("fired.ms"))?
        .trim()
        .parse()?;
    assert_eq!(
        std::fs::read_to_string(work.path().join("hook.rc"))?.trim(),
        "0"
    );
    eprintln!(
        "FIGURE hook to the controller's view: {} ms (the screen still showed the busy line)",
        seen - fired
    );

    // No more hooks: after its window the screen decides again.
    let s = c
        .wait_session("n1", "worker", "the screen deciding again", WAIT, |s| {
            s.condition() == pb::Condition::Thinking
        })
        .await?;
    assert_eq!(s.decided_by, "screen", "{s:?}");
    let back = now_ms() - fired;
    assert!(
        back >= 3_000,
        "the hook's report was dropped after {back} ms, before its 3 s window"
    );
    Ok(())
}

#[test]
fn a_hook_outside_any_session_exits_0_and_a_person_gets_the_error() -> anyhow::Result<()> {
    let argusctl = argus_tests::binary("argusctl")?;
    let run = |args: &[&str]| -> anyhow::Result<std::process::Output> {
        let mut child = std::process::Command::new(&argusctl)
            .args(args)
            .env("ARGUS_NODE_SOCKET", "/nonexistent/node.sock")
            .env_remove("TMUX")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        std::io::Write::write_all(
            &mut child.stdin.take().expect("stdin"),
            PERMISSION.as_bytes(),
        )?;
        Ok(child.wait_with_output()?)
    };
    // As a hook: never a failure the CLI would act on, and nothing on stdout (Gemini CLI reads
    // a hook's stdout as JSON).
    let out = run(&["self", "event", "--from", "claude"])?;
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ignored"),
        "{out:?}"
    );
    // By hand: the error.
    let out = run(&["self", "event", "waiting-permission"])?;
    assert!(!out.status.success(), "{out:?}");
    Ok(())
}

#[test]
fn hooks_install_keeps_existing_hooks_is_idempotent_and_dry_run_writes_nothing()
-> anyhow::Result<()> {
    let argusctl = argus_tests::binary("argusctl")?;
    let dir = tempfile::tempdir()?;
    let settings = dir.path().join("settings.json");
    let existing = r#"{"hooks":{"Stop":[{"matcher":"","hooks":[{"type":"command","command":"say done"}]}]},"theme":"dark"}"#;
    std::fs::write(&settings, existing)?;
    let install = |extra: &[&str]| -> anyhow::Result<String> {
        let out = std::process::Command::new(&argusctl)
            .args(["hooks", "install", "--agent", "claude", "--settings"])
            .arg(&settings)
            .args(extra)
            .output()?;
        anyhow::ensure!(out.status.success(), "{out:?}");
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let said = install(&["--dry-run"])?;
    assert!(said.contains("would add"), "{said}");
    assert_eq!(std::fs::read_to_string(&settings)?, existing);

    let said = install(&[])?;
    assert!(said.contains("added"), "{said}");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&settings)?)?;
    assert_eq!(v["theme"], "dark");
    let stop: Vec<&str> = v["hooks"]["Stop"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| g["hooks"][0]["command"].as_str())
        .collect();
    assert_eq!(stop.len(), 2, "{stop:?}");
    assert_eq!(stop[0], "say done");
    assert!(stop[1].ends_with("self event --from claude"), "{stop:?}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("settings.json.argus-backup"))?,
        existing
    );

    let once = std::fs::read_to_string(&settings)?;
    let said = install(&[])?;
    assert!(said.contains("nothing changed"), "{said}");
    assert_eq!(std::fs::read_to_string(&settings)?, once);
    Ok(())
}
