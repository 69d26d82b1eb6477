//! The node agent never takes down the tmux server it watches. tmux 3.3a (and, upstream reports, up to
//! 3.7c) crashes the whole server when a session or window notification reaches a control client that is still
//! attaching; under session churn that was about 1 attach in 22 here. The node agent attaches
//! its control client only to a server whose sessions hold still, and spawns commands until then.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use argus_proto::v1 as pb;
use argus_tests::cluster::{TestCluster, fake_agent as agent};
use argus_tests::eventually;
use argus_tests::tmux::TestTmux;

const WAIT: Duration = Duration::from_secs(20);
const SEP: char = '\u{1f}';

/// The node agent's control clients: (client name, the session it sits on).
fn control_clients(tmux: &TestTmux) -> Vec<(String, String)> {
    let format = format!("#{{client_name}}{SEP}#{{client_session}}{SEP}#{{client_control_mode}}");
    tmux.run(&["list-clients", "-F", &format])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(SEP).collect();
            (f.len() == 3 && f[2] == "1").then(|| (f[0].to_owned(), f[1].to_owned()))
        })
        .collect()
}

fn server_pid(tmux: &TestTmux) -> anyhow::Result<String> {
    Ok(tmux
        .run(&["display-message", "-p", "#{pid}"])?
        .trim()
        .to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_client_waits_for_a_still_server_and_sits_on_its_oldest_session()
-> anyhow::Result<()> {
    let tmux = Arc::new(TestTmux::new());
    tmux.session("keep", &agent("quiet"), &[])?;
    tmux.session("second", &agent("quiet"), &[])?;
    let pid = server_pid(&tmux)?;
    let mut c = TestCluster::with_policy("nudge_dwell = \"1h\"").await?;
    c.start_agent("n1", tmux.socket())?;
    c.wait_session("n1", "keep", "keep reported", WAIT, |s| s.agent_pid > 0)
        .await?;
    let first = eventually("a control client", WAIT, || async {
        Ok(control_clients(&tmux).into_iter().next())
    })
    .await?;
    assert_eq!(first.1, "keep", "not on the oldest session: {first:?}");

    // Sessions come and go every 40 ms; the control client is sent away meanwhile.
    let churning = Arc::new(AtomicBool::new(true));
    let churn = {
        let (tmux, churning) = (tmux.clone(), churning.clone());
        std::thread::spawn(move || {
            let mut i = 0u32;
            while churning.load(Ordering::Relaxed) {
                i += 1;
                let name = format!("churn-{}", i % 4);
                let _ = tmux.run(&["new-session", "-d", "-s", &name, "sleep 0.1"]);
                std::thread::sleep(Duration::from_millis(40));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    tmux.run(&["detach-client", "-t", &first.0])?;
    let until = Instant::now() + Duration::from_secs(6);
    let mut attached_while_churning = Vec::new();
    while Instant::now() < until {
        attached_while_churning.extend(control_clients(&tmux));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    churning.store(false, Ordering::Relaxed);
    churn
        .join()
        .map_err(|_| anyhow::anyhow!("churn thread panicked"))?;
    assert!(
        attached_while_churning.is_empty(),
        "a control client attached while sessions changed: {attached_while_churning:?}"
    );

    // Still, the same server: supervision went on by spawned commands, and a control client
    // comes back once the server holds still.
    assert_eq!(server_pid(&tmux)?, pid, "the tmux server was replaced");
    let again = eventually("a control client again", WAIT, || async {
        Ok(control_clients(&tmux).into_iter().next())
    })
    .await?;
    assert_eq!(again.1, "keep", "not on the oldest session: {again:?}");
    tmux.run(&["kill-session", "-t", "second"])?;
    c.wait_session("n1", "second", "second seen closed", WAIT, |s| {
        s.state() == pb::SessionState::Dead
    })
    .await?;
    Ok(())
}

/// What a clear pushed into the history is not on screen: an agent that showed a rate limit,
/// retried (a spinner), and then redrew its screen stuck mid-turn is no longer limited or
/// retrying (those lines sit in the pane's history, above the screen). The chaos runs' fake
/// agent draws like this, and the limit read from the history held its restarts for hours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_pushed_off_by_a_clear_are_not_read_as_on_screen() -> anyhow::Result<()> {
    let tmux = TestTmux::new();
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("screens.py");
    std::fs::write(
        &script,
        r#"import os, sys, time
rule = "\u2500" * 100
def draw(lines):
    os.write(1, ("\x1b[2J\x1b[H" + "\r\n".join(lines)).encode())
def wait(name):
    while not os.path.exists(os.path.join(sys.argv[1], name)):
        time.sleep(0.05)
draw(["\u23fa Working on it.", "  \u23bf  Claude AI usage limit reached|%d" % (int(time.time()) + 3600),
      "", rule, "> ", rule])
wait("think")
for step in range(20):
    draw(["\u23fa Reading the code.", "",
          "\u2736 Cooking\u2026 (%ds \u00b7 \u2193 %d tokens \u00b7 esc to interrupt)" % (step, step),
          "", rule, "> ", rule])
    time.sleep(0.1)
wait("hang")
draw(["\u23fa Update(src/lib.rs)", "  \u23bf  Updated src/lib.rs with 3 additions", "",
      "waiting for the build lock"])
time.sleep(3600)
"#,
    )?;
    let claude = dir.path().join("claude");
    std::os::unix::fs::symlink("/usr/bin/python3", &claude)?;
    tmux.session(
        "limited",
        &format!(
            "{} {} {}",
            claude.display(),
            script.display(),
            dir.path().display()
        ),
        &[("profile", "claude")],
    )?;
    let mut c = TestCluster::with_policy("nudge_dwell = \"1h\"").await?;
    c.start_agent("n1", tmux.socket())?;
    c.wait_session("n1", "limited", "the limit seen", WAIT, |s| {
        s.condition() == pb::Condition::RateLimited
    })
    .await?;
    std::fs::write(dir.path().join("think"), "")?;
    c.wait_session("n1", "limited", "the retry seen", WAIT, |s| {
        s.condition() == pb::Condition::Thinking
    })
    .await?;
    std::fs::write(dir.path().join("hang"), "")?;
    c.wait_session("n1", "limited", "neither limited nor retrying", WAIT, |s| {
        s.condition() == pb::Condition::Unspecified
    })
    .await?;
    let history = tmux.run(&["capture-pane", "-p", "-S", "-200", "-t", "=limited:"])?;
    assert!(
        history.contains("usage limit reached") && history.contains("Cooking"),
        "the limit and the spinner are still in the pane's history: {history}"
    );
    Ok(())
}
