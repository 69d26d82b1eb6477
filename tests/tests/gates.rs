//! Quality gates through the real controller and node agent, on a private tmux server with a
//! fake agent working in a real git repository: the gate runs at the agent's finish point in its
//! working directory, a failure comes back to the agent as specific feedback (read from the
//! pane), the last failure opens one incident and nothing more is typed.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use argus_proto::v1 as pb;
use argus_tests::cluster::{TestCluster, fake_agent, sref, wait_event};
use argus_tests::eventually;
use argus_tests::tmux::TestTmux;

const WAIT: Duration = Duration::from_secs(60);

/// The idle ladder stays out of the way: only gate feedback is typed.
const POLICY: &str = "nudge_dwell = \"10m\"\n";

fn git(repo: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .arg("-C")
        .arg(repo)
        .args(args)
        .output()?;
    anyhow::ensure!(out.status.success(), "git {args:?}: {out:?}");
    Ok(())
}

/// A git repository with `gate.sh` committed: it counts its runs in `.gate-runs`, records where
/// it ran in `.gate-cwd`, prints `body`'s output and exits as `body` says.
fn repo(body: &str) -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new().prefix("argus-gate-").tempdir()?;
    let script = format!(
        "n=$(cat .gate-runs 2>/dev/null || echo 0); n=$((n+1)); echo $n > .gate-runs\npwd > .gate-cwd\necho 'running 12 tests'\n{body}\n"
    );
    std::fs::write(dir.path().join("gate.sh"), script)?;
    std::fs::write(dir.path().join(".gitignore"), ".gate-*\n")?;
    git(dir.path(), &["init", "-q"])?;
    git(dir.path(), &["add", "."])?;
    git(dir.path(), &["commit", "-qm", "init"])?;
    Ok(dir)
}

fn runs(repo: &Path) -> u32 {
    std::fs::read_to_string(repo.join(".gate-runs"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// A Claude-shaped fake agent at its prompt in `repo`, gated by `sh gate.sh`.
fn start_worker(tmux: &TestTmux, repo: &Path) -> anyhow::Result<()> {
    start_in(tmux, repo, "sh gate.sh")
}

fn start_in(tmux: &TestTmux, repo: &Path, gate: &str) -> anyhow::Result<()> {
    let dir = repo.display().to_string();
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "worker",
        "-x",
        "200",
        "-y",
        "50",
        "-c",
        &dir,
        &fake_agent("idle"),
        ";",
        "set-option",
        "-t",
        "=worker:",
        "@argus-profile",
        "claude",
        ";",
        "set-option",
        "-t",
        "=worker:",
        "@argus-gate",
        gate,
    ])
    .map(drop)
}

/// The pane's whole history, wrapped lines joined.
fn pane(tmux: &TestTmux) -> anyhow::Result<String> {
    tmux.run(&["capture-pane", "-p", "-J", "-S", "-500", "-t", "=worker:"])
}

/// The feedback lines the agent received.
fn feedback(tmux: &TestTmux) -> anyhow::Result<Vec<String>> {
    Ok(pane(tmux)?
        .lines()
        .filter(|l| l.starts_with("received: The quality gate"))
        .map(str::to_owned)
        .collect())
}

async fn started(
    tmux: &TestTmux,
) -> anyhow::Result<(TestCluster, tonic::Streaming<pb::FleetEvent>)> {
    started_with(tmux, POLICY).await
}

async fn started_with(
    tmux: &TestTmux,
    policy: &str,
) -> anyhow::Result<(TestCluster, tonic::Streaming<pb::FleetEvent>)> {
    let mut c = TestCluster::with_policy(policy).await?;
    c.start_agent("n1", tmux.socket())?;
    c.wait_session("n1", "worker", "agent known", WAIT, |s| s.agent_pid > 0)
        .await?;
    let mut admin = c.admin().await?;
    let events = admin
        .watch_events(pb::WatchEventsRequest::default())
        .await?
        .into_inner();
    // The task: the agent works on it (its screen moves), then sits at its prompt again.
    let r = admin
        .nudge(pb::NudgeRequest {
            session: sref("n1", "worker"),
            text: "implement add() in src/lib.rs".into(),
        })
        .await?
        .into_inner();
    anyhow::ensure!(r.status() == pb::CommandStatus::Ok, "{r:?}");
    Ok((c, events))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_that_fails_twice_sends_the_failure_back_then_passes() -> anyhow::Result<()> {
    let repo = repo(
        "if [ $n -le 2 ]; then echo \"test_add FAILED: expected 4, got $n\"; exit 1; fi\necho 'all 12 tests passed'",
    )?;
    let tmux = TestTmux::new();
    start_worker(&tmux, repo.path())?;
    let (c, mut events) = started(&tmux).await?;

    let failed = std::cell::RefCell::new(Vec::new());
    // From each finish point (the turn to stalled at the prompt) to the gate's verdict.
    let stalled_at = std::cell::Cell::new(0i64);
    let delays = std::cell::RefCell::new(Vec::new());
    let passed = wait_event(&mut events, "gate_passed", WAIT, |e| {
        if e.kind == "transition" && e.message.contains("-> stalled") {
            stalled_at.set(e.at_ms);
        }
        if e.kind == "gate_failed" || e.kind == "gate_passed" {
            delays.borrow_mut().push(e.at_ms - stalled_at.get());
        }
        if e.kind == "gate_failed" {
            failed.borrow_mut().push(e.message.clone());
        }
        e.kind == "gate_passed"
    })
    .await;
    let failed = failed.into_inner();
    eprintln!(
        "finish point to gate verdict (ms): {:?}",
        delays.into_inner()
    );
    let passed = passed.map_err(|e| anyhow::anyhow!("{e}\n{}", c.controller_log()))?;
    assert_eq!(passed.session_name, "worker");
    assert!(passed.message.contains("attempt 3"), "{passed:?}");
    assert_eq!(failed.len(), 2, "{failed:?}");

    // The agent received the two failures' own text, in order, as typed feedback.
    let got = feedback(&tmux)?;
    assert_eq!(got.len(), 2, "{}", pane(&tmux)?);
    for (i, line) in got.iter().enumerate() {
        let n = i + 1;
        assert!(
            line.contains(&format!("test_add FAILED: expected 4, got {n}")),
            "{line}"
        );
        assert!(line.contains(&format!("attempt {n} of 3")), "{line}");
        assert!(
            line.contains("`sh gate.sh` failed with exit status 1"),
            "{line}"
        );
    }
    assert_eq!(runs(repo.path()), 3);
    // It ran in the session's working directory.
    let cwd = std::fs::read_to_string(repo.path().join(".gate-cwd"))?;
    assert_eq!(
        Path::new(cwd.trim()).canonicalize()?,
        repo.path().canonicalize()?
    );

    // Recorded: the three runs and the two feedback nudges in the session's audit.
    let mut admin = c.admin().await?;
    let history = eventually("the gate runs recorded", WAIT, || {
        let mut admin = admin.clone();
        async move {
            let s = admin
                .get_session(pb::GetSessionRequest {
                    session: sref("n1", "worker"),
                    history_limit: 50,
                })
                .await?
                .into_inner();
            let gates: Vec<_> = s
                .commands
                .iter()
                .filter(|k| k.action == "gate" && !k.result_message.is_empty())
                .cloned()
                .collect();
            Ok((gates.len() == 3).then_some(s))
        }
    })
    .await?;
    let feedback_nudges = history
        .commands
        .iter()
        .filter(|k| k.action == "nudge" && k.reason.contains("quality gate failed"))
        .count();
    assert_eq!(feedback_nudges, 2);
    assert!(
        history
            .commands
            .iter()
            .any(|k| k.action == "gate" && k.result_message.contains("exited with status 0")),
        "{:?}",
        history.commands
    );
    let incidents = admin
        .list_incidents(pb::ListIncidentsRequest {
            include_closed: true,
            limit: 100,
        })
        .await?
        .into_inner();
    assert!(
        incidents.incidents.iter().all(|i| i.kind != "gate_failed"),
        "{incidents:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_that_always_fails_runs_three_times_then_calls_a_person_once() -> anyhow::Result<()>
{
    let repo = repo("echo \"error[E0308]: mismatched types (run $n)\"; exit 2")?;
    let tmux = TestTmux::new();
    start_worker(&tmux, repo.path())?;
    let (c, mut events) = started(&tmux).await?;

    let opened = wait_event(&mut events, "the gate incident", WAIT, |e| {
        e.kind == "incident_opened" && e.message.contains("gate_failed")
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", c.controller_log()))?;
    assert!(opened.message.contains("n1/worker"), "{opened:?}");
    assert!(
        opened.message.contains("mismatched types (run 3)"),
        "{opened:?}"
    );
    assert_eq!(runs(repo.path()), 3);
    let got = feedback(&tmux)?;
    assert_eq!(got.len(), 2, "{}", pane(&tmux)?);
    assert!(got[1].contains("mismatched types (run 2)"), "{}", got[1]);

    // The agent works and finishes once more: no fourth run, no more feedback, one incident.
    let mut admin = c.admin().await?;
    admin
        .nudge(pb::NudgeRequest {
            session: sref("n1", "worker"),
            text: "anything else?".into(),
        })
        .await?;
    wait_event(&mut events, "working again", WAIT, |e| {
        e.kind == "transition" && e.message.contains("-> working")
    })
    .await?;
    wait_event(&mut events, "at its prompt again", WAIT, |e| {
        e.kind == "transition" && e.message.contains("-> stalled")
    })
    .await?;
    let quiet = eventually("a fourth run", Duration::from_secs(3), || async {
        Ok((runs(repo.path()) > 3).then_some(()))
    })
    .await;
    assert!(
        quiet.is_err(),
        "the gate ran again after it called a person"
    );
    assert_eq!(feedback(&tmux)?.len(), 2);
    let incidents = admin
        .list_incidents(pb::ListIncidentsRequest {
            include_closed: true,
            limit: 100,
        })
        .await?
        .into_inner();
    let gate: Vec<_> = incidents
        .incidents
        .iter()
        .filter(|i| i.kind == "gate_failed")
        .collect();
    assert_eq!(gate.len(), 1, "{incidents:?}");
    assert_eq!(gate[0].scope, "n1/worker");
    assert_eq!(gate[0].closed_ms, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guarded_file_that_loses_its_marker_is_restored_and_the_agent_warned()
-> anyhow::Result<()> {
    const RULES: &str = "# Rules\nIRON_LAW: never change a test to make it pass\n";
    let repo = repo("exit 0")?;
    std::fs::write(repo.path().join("RULES.md"), RULES)?;
    git(repo.path(), &["add", "RULES.md"])?;
    git(repo.path(), &["commit", "-qm", "rules"])?;
    // The gate passes at once: it stays out of this test's way.
    let tmux = TestTmux::new();
    start_in(&tmux, repo.path(), "true")?;
    let policy = format!("{POLICY}[[guards]]\npath = \"RULES.md\"\nmarker = \"IRON_LAW\"\n");
    let (c, mut events) = started_with(&tmux, &policy).await?;
    eventually("the node agent guarding RULES.md", WAIT, || async {
        Ok(c.agents[0].log().contains("guarding file").then_some(()))
    })
    .await?;

    // The agent "relaxes" the rules: the marker is gone.
    let rules = repo.path().join("RULES.md");
    let edited = "# Rules\nbe pragmatic about tests\n";
    let start = std::time::Instant::now();
    std::fs::write(&rules, edited)?;
    // Read back every millisecond (for the figure), for at most 1 s.
    let took = loop {
        if std::fs::read_to_string(&rules)? == RULES {
            break start.elapsed();
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(1),
            "RULES.md not restored within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let e = wait_event(&mut events, "guard_restored", WAIT, |e| {
        e.kind == "guard_restored" && e.session_name == "worker"
    })
    .await?;
    assert!(
        e.message.contains("RULES.md") && e.message.contains("IRON_LAW"),
        "{e:?}"
    );
    // Nothing the agent wrote is lost: its version is kept aside.
    let kept = e
        .message
        .rsplit("kept in ")
        .next()
        .map(str::trim)
        .unwrap_or_default();
    assert_eq!(std::fs::read_to_string(kept)?, edited, "{e:?}");
    // The agent is warned in its pane, and the warning is in the audit.
    eventually("the warning in the pane", WAIT, || async {
        Ok(pane(&tmux)?
            .lines()
            .any(|l| l.starts_with("received: Argus restored RULES.md"))
            .then_some(()))
    })
    .await?;
    let mut admin = c.admin().await?;
    let s = admin
        .get_session(pb::GetSessionRequest {
            session: sref("n1", "worker"),
            history_limit: 50,
        })
        .await?
        .into_inner();
    assert!(
        s.commands
            .iter()
            .any(|k| k.action == "nudge" && k.reason.contains("guarded file restored")),
        "{:?}",
        s.commands
    );

    // Deleted: back too.
    std::fs::remove_file(&rules)?;
    eventually(
        "RULES.md back after a delete",
        Duration::from_secs(1),
        || async {
            Ok((std::fs::read_to_string(&rules).ok().as_deref() == Some(RULES)).then_some(()))
        },
    )
    .await?;
    eprintln!(
        "guarded file restored {} ms after the marker was removed",
        took.as_millis()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_uncommitted_work_gets_one_reminder_at_the_prompt_never_while_busy()
-> anyhow::Result<()> {
    let repo = repo("exit 0")?;
    // Uncommitted work, two hours old.
    let notes = repo.path().join("notes.txt");
    std::fs::write(&notes, "half done\n")?;
    let two_hours_ago = format!("@{}", argus_shared::time::now_ms() / 1000 - 7200);
    let out = Command::new("touch")
        .args(["-d", &two_hours_ago])
        .arg(&notes)
        .output()?;
    anyhow::ensure!(out.status.success(), "{out:?}");
    let tmux = TestTmux::new();
    start_in(&tmux, repo.path(), "true")?;
    let dir = repo.path().display().to_string();
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "busy",
        "-c",
        &dir,
        &fake_agent("working"),
        ";",
        "set-option",
        "-t",
        "=busy:",
        "@argus-profile",
        "claude",
    ])?;
    let policy = format!("{POLICY}commit_reminder_after = \"1h\"\n");
    let mut c = TestCluster::with_policy(&policy).await?;
    c.start_agent("n1", tmux.socket())?;
    let reminded = |tmux: &TestTmux, name: &str| -> anyhow::Result<usize> {
        let text = tmux.run(&[
            "capture-pane",
            "-p",
            "-J",
            "-S",
            "-500",
            "-t",
            &format!("={name}:"),
        ])?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with("received: You have uncommitted work"))
            .count())
    };
    eventually("the reminder in the idle agent's pane", WAIT, || async {
        Ok((reminded(&tmux, "worker")? == 1).then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", c.controller_log()))?;
    let mut admin = c.admin().await?;
    let s = admin
        .get_session(pb::GetSessionRequest {
            session: sref("n1", "worker"),
            history_limit: 50,
        })
        .await?
        .into_inner();
    assert!(
        s.commands
            .iter()
            .any(|k| k.action == "nudge" && k.reason.contains("reminder to commit")),
        "{:?}",
        s.commands
    );
    // One per window: no second one; and never into the agent that works.
    let more = eventually("a second reminder", Duration::from_secs(3), || async {
        Ok((reminded(&tmux, "worker")? > 1 || reminded(&tmux, "busy")? > 0).then_some(()))
    })
    .await;
    assert!(more.is_err(), "reminded again, or while busy");
    let busy = admin
        .get_session(pb::GetSessionRequest {
            session: sref("n1", "busy"),
            history_limit: 50,
        })
        .await?
        .into_inner();
    assert!(
        busy.commands.iter().all(|k| k.action != "nudge"),
        "{:?}",
        busy.commands
    );
    Ok(())
}
