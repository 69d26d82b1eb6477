//! Checkpoints before every destructive step, and handoffs: real tmux, real git repositories, the
//! real controller and node agent processes, the fake agent.
//!
//! - A stalled agent in a git work tree with uncommitted edits (tracked, staged and untracked) is
//!   restarted by the policy: the checkpoint holds the branch, HEAD and the file list, its ref
//!   holds the edits, the work tree and the index are untouched, the new agent receives the resume
//!   message and the handoff completes.
//! - A kill with a git that hangs still happens within the checkpoint's limit, and the hung git's
//!   children are gone.
//! - A handoff left incomplete by a controller restart is found and finished by the next one.
//! - `argusctl checkpoint`, `checkpoints` and `handoffs`.
//! - Measured by hand (ignored): checkpoint time on 10,000 files with 50 modified, and the delay it
//!   adds to a kill.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use argus_proto::v1 as pb;
use argus_tests::cluster::{TestCluster, fake_agent, sref};
use argus_tests::tmux::TestTmux;
use argus_tests::{binary, eventually};

const WAIT: Duration = Duration::from_secs(40);

/// Runs git in `dir`; fails on a non-zero exit. `GIT_OPTIONAL_LOCKS=0`: the test's own `git
/// status` must not refresh the index it checks.
fn git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_OPTIONAL_LOCKS", "0")
        .env("GIT_AUTHOR_NAME", "test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A repository on branch `feature/parser` with two commits, and uncommitted work on top: a
/// modified tracked file, a staged new file, a deleted file and an untracked file in a new
/// directory (plus an ignored one, which is never saved).
fn repo_with_work(dir: &Path) -> anyhow::Result<()> {
    git(dir, &["init", "-q", "-b", "main"])?;
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::write(dir.join("src/parse.rs"), "pub fn parse() {}\n")?;
    std::fs::write(dir.join("README.md"), "readme\n")?;
    std::fs::write(dir.join("old.txt"), "old\n")?;
    std::fs::write(dir.join(".gitignore"), "target/\n")?;
    git(dir, &["add", "-A"])?;
    git(dir, &["commit", "-q", "-m", "initial"])?;
    git(dir, &["checkout", "-q", "-b", "feature/parser"])?;
    std::fs::write(dir.join("README.md"), "readme\nparser notes\n")?;
    git(dir, &["commit", "-q", "-am", "parser: plan"])?;
    // The work in progress.
    std::fs::write(
        dir.join("src/parse.rs"),
        "pub fn parse() {}\npub fn tokens() -> usize { 42 }\n",
    )?;
    std::fs::write(dir.join("src/lexer.rs"), "pub struct Lexer;\n")?;
    git(dir, &["add", "src/lexer.rs"])?;
    std::fs::remove_file(dir.join("old.txt"))?;
    std::fs::create_dir_all(dir.join("notes"))?;
    std::fs::write(dir.join("notes/todo.md"), "- finish tokens\n")?;
    std::fs::create_dir_all(dir.join("target"))?;
    std::fs::write(dir.join("target/build.log"), "ignored\n")?;
    Ok(())
}

/// Everything a checkpoint must leave as it was: the index file, what `git status` says, the
/// files' contents, and no stash.
fn work_tree_state(dir: &Path) -> anyhow::Result<(Vec<u8>, String, Vec<String>, String)> {
    let files = ["src/parse.rs", "src/lexer.rs", "notes/todo.md", "README.md"]
        .iter()
        .map(|f| std::fs::read_to_string(dir.join(f)).unwrap_or_default())
        .collect();
    Ok((
        std::fs::read(dir.join(".git/index"))?,
        git(dir, &["status", "--porcelain=v1", "--untracked-files=all"])?,
        files,
        git(dir, &["stash", "list"])?,
    ))
}

/// The whole visible screen of a session, wrapped lines joined.
fn screen(tmux: &TestTmux, name: &str) -> anyhow::Result<String> {
    tmux.run(&["capture-pane", "-p", "-J", "-t", &format!("={name}:")])
}

async fn handoffs(c: &TestCluster) -> anyhow::Result<Vec<pb::Handoff>> {
    Ok(c.admin()
        .await?
        .list_handoffs(pb::ListHandoffsRequest {
            include_ended: true,
            node_id: String::new(),
            limit: 100,
        })
        .await?
        .into_inner()
        .handoffs)
}

async fn checkpoint(c: &TestCluster, id: &str) -> anyhow::Result<pb::Checkpoint> {
    c.admin()
        .await?
        .get_checkpoint(pb::GetCheckpointRequest { id: id.to_owned() })
        .await?
        .into_inner()
        .checkpoint
        .context("no checkpoint in the record")
}

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

/// Processes whose command line holds `needle` (NUL-separated arguments).
fn processes_with(needle: &str) -> usize {
    std::fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
                .filter(|c| String::from_utf8_lossy(c).contains(needle))
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_agent_is_restarted_with_its_work_saved_and_resumed() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let repo = work.path();
    repo_with_work(repo)?;
    let head = git(repo, &["rev-parse", "HEAD"])?.trim().to_owned();
    let before = work_tree_state(repo)?;

    let tmux = TestTmux::new();
    let agent = format!("cd {} && exec {}", repo.display(), fake_agent("resumable"));
    tmux.session(
        "agent-1",
        &agent,
        &[
            ("profile", "claude"),
            ("restart", &agent),
            ("task", "T-42 write the parser"),
        ],
    )?;
    // Idle at its prompt: stalled after 3 probe intervals, restarted at the hard limit (no nudge
    // comes first: the ladder's dwell is longer).
    let mut c = TestCluster::with_policy("hard_stall = \"2s\"\nconfirm_after = \"1s\"").await?;
    c.start_agent("n1", tmux.socket())?;
    let first = c
        .wait_session("n1", "agent-1", "agent working", WAIT, |s| s.agent_pid > 0)
        .await?;

    let done = eventually("the handoff to complete", WAIT, || async {
        let h = handoffs(&c).await?;
        Ok(h.into_iter().find(|h| h.state == "completed"))
    })
    .await
    .with_context(|| c.controller_log())?;
    assert_eq!(done.reason, "stall", "{done:?}");
    assert_eq!(done.session_name, "agent-1");
    assert_eq!(done.from.map(|a| a.pid), Some(first.agent_pid), "{done:?}");
    assert!(
        done.to.is_some_and(|a| a.pid != first.agent_pid),
        "{done:?}"
    );
    assert_eq!((done.restarts, done.resume_attempts), (1, 1), "{done:?}");

    // The checkpoint: branch, HEAD, the files, the labels, the screen.
    let ck = checkpoint(&c, &done.checkpoint_id).await?;
    assert_eq!(ck.trigger, "restart");
    assert_eq!(
        ck.labels.get("task").map(String::as_str),
        Some("T-42 write the parser")
    );
    assert!(
        ck.screen.iter().any(|l| l.contains("? for shortcuts")),
        "{:?}",
        ck.screen
    );
    assert!(ck.problems.is_empty(), "{:?}", ck.problems);
    let g = ck.git.context("a git work tree")?;
    assert_eq!(g.branch, "feature/parser");
    assert_eq!(g.head, head);
    assert_eq!(g.head_subject, "parser: plan");
    let mut files: Vec<(&str, &str)> = g
        .files
        .iter()
        .map(|f| (f.path.as_str(), f.status.as_str()))
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            ("notes/todo.md", "??"),
            ("old.txt", "D"),
            ("src/lexer.rs", "A"),
            ("src/parse.rs", "M"),
        ]
    );
    assert_eq!((g.insertions, g.deletions), (3, 1), "{:?}", g.files);
    // The saved ref holds the edits, tracked and untracked, on top of HEAD.
    let saved = &g.saved_ref;
    assert_eq!(saved, &format!("refs/argus/checkpoints/agent-1/{}", ck.id));
    assert_eq!(
        git(repo, &["show", &format!("{saved}:src/parse.rs")])?,
        "pub fn parse() {}\npub fn tokens() -> usize { 42 }\n"
    );
    assert_eq!(
        git(repo, &["show", &format!("{saved}:notes/todo.md")])?,
        "- finish tokens\n"
    );
    assert_eq!(
        git(repo, &["show", &format!("{saved}:src/lexer.rs")])?,
        "pub struct Lexer;\n"
    );
    let tree = git(repo, &["ls-tree", "-r", "--name-only", saved])?;
    assert!(
        !tree.contains("old.txt") && !tree.contains("target/"),
        "{tree}"
    );
    assert_eq!(
        git(repo, &["rev-parse", &format!("{saved}^")])?.trim(),
        head
    );
    // Nothing of the work tree, the index, HEAD or the stash changed.
    assert_eq!(
        work_tree_state(repo)?,
        before,
        "the checkpoint touched the work tree or the index"
    );
    assert_eq!(git(repo, &["rev-parse", "HEAD"])?.trim(), head);

    // The new agent got the resume message, once.
    let text = screen(&tmux, "agent-1")?;
    assert_eq!(text.matches("received: ").count(), 1, "{text}");
    for part in [
        "received: [argus] This session was restarted (stall)",
        "Task: T-42 write the parser",
        "Branch: feature/parser",
        "src/parse.rs (modified)",
        "notes/todo.md (new)",
        saved.as_str(),
    ] {
        assert!(text.contains(part), "{part:?} not on the screen:\n{text}");
    }

    // The session's history refers to both.
    let h = c
        .admin()
        .await?
        .get_session(pb::GetSessionRequest {
            session: sref("n1", "agent-1"),
            history_limit: 100,
        })
        .await?
        .into_inner();
    assert!(h.handoffs.iter().any(|x| x.id == done.id), "{h:?}");
    assert!(
        h.checkpoints
            .iter()
            .any(|k| k.checkpoint.as_ref().is_some_and(|c| c.id == ck.id)),
        "{h:?}"
    );
    let restart = h
        .commands
        .iter()
        .find(|k| k.command_id == done.restart_command_id)
        .context("the restart in the audit")?;
    assert!(restart.result_message.contains(&ck.id), "{restart:?}");
    assert!(
        h.commands
            .iter()
            .any(|k| k.action == "nudge" && k.reason.contains(&done.id)),
        "{:?}",
        h.commands
    );

    // argusctl: take one now, list them, list the handoffs.
    let (ok, out, err) = argusctl(&c, &["checkpoint", "n1", "agent-1"])?;
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("on branch feature/parser") && out.contains("notes/todo.md"),
        "{out}"
    );
    assert!(out.contains("before manual"), "{out}");
    let (ok, out, err) = argusctl(&c, &["checkpoints", "n1", "agent-1"])?;
    assert!(ok, "{out}\n{err}");
    assert_eq!(
        out.matches("refs/argus/checkpoints/agent-1/").count(),
        2,
        "{out}"
    );
    let (ok, out, err) = argusctl(&c, &["checkpoints", "--id", &ck.id])?;
    assert!(
        ok && out.contains("| ") && out.contains("??  notes/todo.md"),
        "{out}\n{err}"
    );
    let (ok, out, _) = argusctl(&c, &["handoffs"])?;
    assert!(ok && !out.contains(&done.id), "only incomplete ones: {out}");
    let (ok, out, _) = argusctl(&c, &["handoffs", "--all"])?;
    assert!(
        ok && out.contains(&done.id) && out.contains("completed"),
        "{out}"
    );
    assert_eq!(work_tree_state(repo)?, before);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_with_a_hung_git_happens_within_the_limit() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    repo_with_work(work.path())?;
    // A git that hangs: first on the node agent's PATH, and its child sleeps on.
    let bin = tempfile::tempdir()?;
    let marker = format!("{}", 31_000 + std::process::id() % 1000);
    std::fs::write(
        bin.path().join("git"),
        format!("#!/bin/sh\nsleep {marker}\n"),
    )?;
    std::fs::set_permissions(
        bin.path().join("git"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );

    let tmux = TestTmux::new();
    let agent = format!(
        "cd {} && exec {}",
        work.path().display(),
        fake_agent("quiet")
    );
    tmux.session("victim", &agent, &[("profile", "claude")])?;
    let mut c = TestCluster::start(TestCluster::spec()).await?;
    let limit = Duration::from_millis(1000);
    let mut spec = c.agent_spec("n1", tmux.socket()).env("PATH", &path);
    spec.config.checkpoint.timeout = limit;
    c.agents.push(spec.start(c.dir.path())?);
    c.wait_session("n1", "victim", "agent working", WAIT, |s| s.agent_pid > 0)
        .await?;

    let grace = Duration::from_millis(200);
    let started = Instant::now();
    let r = c
        .admin()
        .await?
        .kill(pb::KillRequest {
            session: sref("n1", "victim"),
            grace_ms: grace.as_millis() as u32,
        })
        .await?
        .into_inner();
    let took = started.elapsed();
    assert_eq!(r.status(), pb::CommandStatus::Ok, "{r:?}");
    assert!(!tmux.has_session("victim"), "not killed");
    // The checkpoint waited for git up to its limit, no longer.
    assert!(
        took >= limit,
        "{took:?}: the kill did not wait for the checkpoint"
    );
    assert!(
        took < limit + grace + Duration::from_millis(1500),
        "the kill took {took:?} with a {limit:?} checkpoint limit"
    );
    let ck = r.checkpoint.context("a checkpoint with the kill")?;
    assert!(
        ck.problems
            .iter()
            .any(|p| p.contains("did not finish within the checkpoint's time limit")),
        "{:?}",
        ck.problems
    );
    assert!(ck.git.is_none(), "{ck:?}");
    assert!(
        !ck.screen.is_empty(),
        "the screen is taken before git: {ck:?}"
    );
    assert!(ck.took_ms >= 1000 && ck.took_ms < 1500, "{ck:?}");
    // Stored, and the hung git is gone with its child.
    let stored = checkpoint(&c, &ck.id).await?;
    assert_eq!(stored.trigger, "kill");
    eventually(
        "the hung git's children to be gone",
        Duration::from_secs(5),
        || async { Ok((processes_with(&format!("sleep\0{marker}")) == 0).then_some(())) },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incomplete_handoff_is_finished_after_a_controller_restart() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    repo_with_work(work.path())?;
    let tmux = TestTmux::new();
    let dir = work.path().display().to_string();
    let agent = format!("cd {dir} && exec {}", fake_agent("resumable"));
    // The new agent takes 6 s to show its prompt: the controller restarts meanwhile.
    let slow = format!("cd {dir} && exec {}", fake_agent("resumable 6"));
    tmux.session("slow", &agent, &[("profile", "claude"), ("restart", &slow)])?;
    let mut c = TestCluster::start(TestCluster::spec()).await?;
    c.start_agent("n1", tmux.socket())?;
    let first = c
        .wait_session("n1", "slow", "agent working", WAIT, |s| s.agent_pid > 0)
        .await?;

    let r = c
        .admin()
        .await?
        .restart(pb::RestartRequest {
            session: sref("n1", "slow"),
            command: String::new(),
        })
        .await?
        .into_inner();
    assert_eq!(r.status(), pb::CommandStatus::Ok, "{r:?}");
    let ck = r.checkpoint.context("a checkpoint with the restart")?;
    let waiting = eventually("the handoff recorded", WAIT, || async {
        let h = handoffs(&c).await?;
        Ok(h.into_iter().find(|h| h.state == "waiting"))
    })
    .await?;
    assert_eq!(
        (waiting.reason.as_str(), waiting.checkpoint_id.as_str()),
        ("operator", ck.id.as_str())
    );

    c.stop_controller();
    c.start_controller().await?;
    // Listed as incomplete by the new controller before it finishes it.
    let (ok, out, _) = argusctl(&c, &["handoffs"])?;
    assert!(ok && out.contains(&waiting.id), "{out}");

    let done = eventually(
        "the handoff finished by the new controller",
        WAIT,
        || async {
            let h = handoffs(&c).await?;
            Ok(h.into_iter()
                .find(|h| h.id == waiting.id && h.state == "completed"))
        },
    )
    .await
    .with_context(|| c.controller_log())?;
    assert!(
        done.to.is_some_and(|a| a.pid != first.agent_pid),
        "{done:?}"
    );
    let text = screen(&tmux, "slow")?;
    assert_eq!(text.matches("received: ").count(), 1, "{text}");
    assert!(
        text.contains("received: [argus] This session was restarted (operator)"),
        "{text}"
    );
    Ok(())
}

// === measured by hand ===

/// Checkpoint time on a repository of 10,000 files with 50 modified (45 tracked, 5 untracked),
/// p50 and p99 over 200 checkpoints, and the delay a checkpoint adds to a kill through the whole
/// system (admin API -> controller -> node agent -> tmux), with and without checkpoints. Prints
/// the figures (docs/performance.md quotes them).
///
/// `cargo test --release -p argus-tests --test checkpoints -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand"]
async fn checkpoint_cost_on_a_large_repository() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let repo = work.path();
    git(repo, &["init", "-q", "-b", "main"])?;
    for d in 0..100 {
        let dir = repo.join(format!("pkg{d:02}"));
        std::fs::create_dir_all(&dir)?;
        for f in 0..100 {
            std::fs::write(
                dir.join(format!("file{f:03}.rs")),
                format!("// package {d} file {f}\npub fn f{f}() -> u32 {{ {f} }}\n"),
            )?;
        }
    }
    git(repo, &["add", "-A"])?;
    git(repo, &["commit", "-q", "-m", "10,000 files"])?;
    for i in 0..45 {
        let p = repo.join(format!("pkg{:02}/file{:03}.rs", i * 2, i));
        let mut text = std::fs::read_to_string(&p)?;
        text.push_str(&format!("pub fn edited{i}() {{}}\n"));
        std::fs::write(&p, text)?;
    }
    for i in 0..5 {
        std::fs::write(
            repo.join(format!("pkg{i:02}/new{i}.rs")),
            "pub fn new() {}\n",
        )?;
    }
    let files = git(repo, &["ls-files"])?.lines().count();
    let changed = git(repo, &["status", "--porcelain"])?.lines().count();
    println!("repository: {files} files tracked, {changed} changed");

    let cfg = argus_node_agent::checkpoint::CheckpointConfig::default();
    let target = argus_node_agent::checkpoint::Target {
        session_name: "bench".into(),
        cwd: repo.display().to_string(),
        trigger: "kill",
        ..Default::default()
    };
    let mut took = Vec::new();
    for i in 0..210 {
        let started = Instant::now();
        let c = argus_node_agent::checkpoint::take(None, &target, &cfg).await;
        let t = started.elapsed();
        anyhow::ensure!(c.problems.is_empty(), "{:?}", c.problems);
        let g = c.git.context("git")?;
        anyhow::ensure!(g.files_total == 50 && !g.saved_ref.is_empty(), "{g:?}");
        if i >= 10 {
            took.push(t);
        }
    }
    took.sort();
    let pct = |p: f64| took[((took.len() as f64 * p) as usize).min(took.len() - 1)];
    println!(
        "checkpoint (in process, 200 runs): p50 {:?}, p99 {:?}, max {:?}",
        pct(0.50),
        pct(0.99),
        took[took.len() - 1]
    );

    // Through the whole system: kill latency with and without the checkpoint.
    for enabled in [false, true] {
        let tmux = TestTmux::new();
        let mut c = TestCluster::start(TestCluster::spec()).await?;
        let mut spec = c.agent_spec("n1", tmux.socket());
        spec.config.checkpoint.enabled = enabled;
        c.agents.push(spec.start(c.dir.path())?);
        let agent = format!("cd {} && exec {}", repo.display(), fake_agent("quiet"));
        let mut kills = Vec::new();
        for i in 0..40 {
            let name = format!("k{i}");
            tmux.session(&name, &agent, &[("profile", "claude")])?;
            c.wait_session("n1", &name, "agent", WAIT, |s| s.agent_pid > 0)
                .await?;
            let started = Instant::now();
            let r = c
                .admin()
                .await?
                .kill(pb::KillRequest {
                    session: sref("n1", &name),
                    grace_ms: 100,
                })
                .await?
                .into_inner();
            kills.push(started.elapsed());
            anyhow::ensure!(r.status() == pb::CommandStatus::Ok, "{r:?}");
            anyhow::ensure!(enabled == r.checkpoint.is_some(), "{r:?}");
        }
        kills.sort();
        let pct = |p: f64| kills[((kills.len() as f64 * p) as usize).min(kills.len() - 1)];
        println!(
            "kill through the admin API, checkpoints {}: p50 {:?}, p99 {:?} (40 kills, 100 ms grace)",
            if enabled { "on " } else { "off" },
            pct(0.50),
            pct(0.99)
        );
    }
    Ok(())
}
