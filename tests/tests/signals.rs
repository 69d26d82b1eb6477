//! Signals beside the screen, with the real controller and node agent and fake agents in a
//! private tmux server: a hang whose spinner keeps moving is found and triaged, a slow answer
//! that keeps printing never is; the pane title settles a screen that says nothing.

use std::path::Path;
use std::time::Duration;

use argus_proto::v1 as pb;
use argus_tests::cluster::{TestCluster, sref, wait_event};
use argus_tests::eventually;
use argus_tests::tmux::TestTmux;

const WAIT: Duration = Duration::from_secs(30);

/// A short hang time, so that the test sees one; the rest as in production.
const HANG_POLICY: &str = r#"
animated_hang = "4s"
nudge_dwell = "1s"
"#;

/// A Claude-like busy screen: the task, then a spinner line whose glyph, verb timer and token
/// counter move five times a second. With `every` > 0 a new output line appears that often.
const ANIMATE: &str = r#"
import sys, time
every = float(sys.argv[1])
glyphs = "✻✽✶✳✢·"
w = sys.stdout.write
w("❯ Reply with one line please.\n\n")
start = time.time()
last = start
n = 0
i = 0
while True:
    now = time.time()
    if every > 0 and now - last >= every:
        n += 1
        last = now
        w("\r\033[K● answer line %d\n" % n)
    w("\r\033[K%s Galloping… (%ds · ↓ %d tokens · esc to interrupt)" % (glyphs[i % len(glyphs)], now - start, i * 7))
    sys.stdout.flush()
    i += 1
    time.sleep(0.2)
"#;

/// Prose with no status line (a screen that says nothing recognised) under a title the test
/// changes by writing a word into a file: `busy` or `idle` (no title at all with `-`).
const TITLED: &str = r#"
import os, sys, time
ctl = sys.argv[1]
sys.stdout.write("The change touches three files and keeps the public API as it is.\n")
sys.stdout.flush()
shown = None
while True:
    try:
        want = open(ctl).read().strip()
    except OSError:
        want = "busy"
    if want != shown and ctl != "-":
        title = "\u25d0 Claude Code" if want == "busy" else "\u2733 Claude Code"
        sys.stdout.write("\033]2;%s\033\\" % title)
        sys.stdout.flush()
        shown = want
    time.sleep(0.1)
"#;

fn script(dir: &Path, name: &str, text: &str) -> anyhow::Result<String> {
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path.display().to_string())
}

async fn history(c: &TestCluster, name: &str) -> anyhow::Result<pb::GetSessionResponse> {
    Ok(c.admin()
        .await?
        .get_session(pb::GetSessionRequest {
            session: sref("n1", name),
            history_limit: 200,
        })
        .await?
        .into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spinner_over_no_new_output_is_hung_and_triaged_a_slow_answer_never() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let animate = script(dir.path(), "animate.py", ANIMATE)?;
    let tmux = TestTmux::new();
    let claude = [("profile", "claude")];
    tmux.session("hung", &format!("python3 {animate} 0"), &claude)?;
    tmux.session("slow", &format!("python3 {animate} 1.5"), &claude)?;
    let mut c = TestCluster::with_policy(HANG_POLICY).await?;
    let mut events = c
        .admin()
        .await?
        .watch_events(pb::WatchEventsRequest::default())
        .await?
        .into_inner();
    c.start_agent("n1", tmux.socket())?;

    // Both are busy by their screens at first.
    for name in ["hung", "slow"] {
        c.wait_session("n1", name, "busy and working", WAIT, |s| {
            s.state() == pb::SessionState::Working && s.condition() == pb::Condition::Thinking
        })
        .await?;
    }
    // The spinner alone: stalled with its own reason once `animated_hang` has passed.
    let hung = c
        .wait_session("n1", "hung", "the animated hang reported", WAIT, |s| {
            s.state() == pb::SessionState::Stalled
        })
        .await?;
    assert!(
        hung.reason.starts_with("animated but no progress"),
        "{hung:?}"
    );
    assert_eq!(hung.condition(), pb::Condition::Thinking, "{hung:?}");
    // Triage decides, after the dwell: the built-in heuristic calls a person.
    let triage = wait_event(&mut events, "triage of the hung session", WAIT, |e| {
        e.session_name == "hung" && e.kind == "triage"
    })
    .await?;
    assert!(triage.message.contains("NeedsHuman"), "{triage:?}");
    wait_event(&mut events, "a person called", WAIT, |e| {
        e.session_name == "hung" && e.kind == "needs_human"
    })
    .await?;

    // By now the slow answer has been busy for longer than the hang time and the dwell, with a
    // new line every 1.5 s: never stalled, never a command. The hung one got none either but
    // triage's reading of its screen (no nudge typed into a busy agent, no interrupt, no
    // restart).
    for name in ["slow", "hung"] {
        let h = history(&c, name).await?;
        assert!(
            h.commands.iter().all(|k| k.action == "capture"),
            "{name}: {:?}",
            h.commands
        );
        if name == "slow" {
            assert!(
                h.transitions
                    .iter()
                    .all(|t| t.to() != pb::SessionState::Stalled),
                "the slow answer was marked stalled: {:?}",
                h.transitions
            );
        }
    }
    let slow = c.session("n1", "slow").await?.expect("slow");
    assert_eq!(slow.state(), pb::SessionState::Working, "{slow:?}");
    assert_eq!(slow.decided_by, "screen");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pane_title_settles_a_screen_that_says_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let titled = script(dir.path(), "titled.py", TITLED)?;
    let ctl = dir.path().join("title");
    std::fs::write(&ctl, "busy")?;
    let tmux = TestTmux::new();
    let claude = [("profile", "claude")];
    tmux.session(
        "titled",
        &format!("python3 {titled} {}", ctl.display()),
        &claude,
    )?;
    tmux.session("plain", &format!("python3 {titled} -"), &claude)?;
    let mut c = TestCluster::with_policy("nudge_dwell = \"1h\"").await?;
    c.start_agent("n1", tmux.socket())?;

    let s = c
        .wait_session("n1", "titled", "busy by its title", WAIT, |s| {
            s.condition() == pb::Condition::Thinking
        })
        .await?;
    assert_eq!(s.decided_by, "title", "{s:?}");
    // The title says it waits: at its prompt, by the title.
    std::fs::write(&ctl, "idle")?;
    let s = c
        .wait_session("n1", "titled", "at its prompt by its title", WAIT, |s| {
            s.condition() == pb::Condition::AtPrompt
        })
        .await?;
    assert_eq!(s.decided_by, "title", "{s:?}");

    // A title the profile does not know leaves the screen to decide.
    tmux.run(&["select-pane", "-t", "=plain:", "-T", "build-host"])?;
    eventually("the plain session read from its screen", WAIT, || async {
        Ok(c.session("n1", "plain").await?.filter(|s| {
            s.decided_by == "screen"
                && s.condition() == pb::Condition::Unspecified
                && s.agent_pid > 0
        }))
    })
    .await?;
    Ok(())
}
