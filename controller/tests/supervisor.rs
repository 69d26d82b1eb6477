//! In-process tests of the supervisor: the decision core's effects carried out against the live
//! fleet, the in-memory store and a node's link (a channel standing for its Attach stream), on a
//! simulated clock. No tmux, no network, no database file.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use argus_controller::fleet::{Health, NodeEntry};
use argus_controller::supervisor::Supervisor;
use argus_decide::detect::{Input, Observation};
use argus_decide::policy::Policy;
use argus_proto::v1 as pb;
use argus_shared::ids::{Incarnation, SessionRef};
use argus_shared::profile::Condition;
use argus_shared::time::now_ms;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

type LinkRx = mpsc::Receiver<Result<pb::ControllerMessage, tonic::Status>>;

/// A supervisor with one attached node `n1`, and the node's end of the link.
struct Rig {
    sup: Arc<Supervisor>,
    link: LinkRx,
    stop: CancellationToken,
    /// Simulated time (starts at the real clock, so the fleet budget's refill is consistent).
    now: i64,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Rig {
    async fn start(policy: Policy) -> anyhow::Result<Self> {
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let sup = Supervisor::in_memory(policy, &tasks, stop.clone()).await?;
        let (tx, link) = mpsc::channel(1024);
        let now = now_ms();
        sup.fleet.attach_node(NodeEntry {
            node_id: "n1".into(),
            hostname: "host".into(),
            agent_version: "test".into(),
            epoch: 1,
            last_seen_ms: now,
            back_ms: now,
            health: Health::Up,
            link: Some(tx),
            stream_id: 1,
            probe_ms: 1000,
            synced: true,
        });
        Ok(Self {
            sup,
            link,
            stop,
            now,
        })
    }

    fn key(name: &str) -> SessionRef {
        SessionRef {
            node_id: "n1".into(),
            tmux_socket: "/tmp/tmux-test/default".into(),
            session_name: name.into(),
        }
    }

    async fn observe(&self, name: &str, o: Observation) {
        self.sup
            .apply(&Self::key(name), Input::Observed(Box::new(o)), self.now)
            .await;
    }

    /// Advances the clock in 500 ms ticks for `d`, the node heartbeating all along.
    async fn run_for(&mut self, d: Duration) {
        let end = self.now + d.as_millis() as i64;
        while self.now < end {
            self.now += 500;
            self.sup.fleet.heard_from("n1", 1, self.now);
            self.sup.health_tick(self.now).await;
            self.sup.tick(self.now).await;
        }
    }

    /// Commands sent to the node so far: (session, action name, restart command or nudge text).
    fn commands(&mut self) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        while let Ok(Ok(m)) = self.link.try_recv() {
            let Some(pb::controller_message::Msg::Command(c)) = m.msg else {
                continue;
            };
            let (name, arg) = match c.action {
                Some(pb::command::Action::Nudge(n)) => ("nudge", n.text),
                Some(pb::command::Action::Restart(r)) => ("restart", r.command),
                Some(pb::command::Action::Kill(_)) => ("kill", String::new()),
                Some(pb::command::Action::Interrupt(_)) => ("interrupt", String::new()),
                Some(pb::command::Action::Capture(_)) => ("capture", String::new()),
                Some(pb::command::Action::Gate(g)) => ("gate", g.command),
                Some(pb::command::Action::Checkpoint(_)) => ("checkpoint", String::new()),
                None => ("none", String::new()),
            };
            out.push((c.session_name, name.to_owned(), arg));
        }
        out
    }
}

fn obs(profile: &str, condition: Condition, labels: &[(&str, &str)]) -> Observation {
    Observation {
        pane_id: "%1".into(),
        exit_status: -1,
        agent: Some(Incarnation {
            pid: 4242,
            start_time: 7,
        }),
        agent_name: profile.into(),
        profile: profile.into(),
        screen_hash: "screen".into(),
        condition,
        start_command: "\"npm run dev\"".into(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
        ..Default::default()
    }
}

#[tokio::test]
async fn an_idle_agent_is_nudged_and_a_program_that_is_not_an_agent_is_never_touched()
-> anyhow::Result<()> {
    let mut rig = Rig::start(Policy {
        nudge_dwell: Duration::from_secs(5),
        restart_on_death: argus_decide::policy::RestartOnDeath::Always,
        ..Policy::default()
    })
    .await?;
    rig.observe("claude-1", obs("claude", Condition::AtPrompt, &[]))
        .await;
    // A dev server that logged an error and went quiet, in the same tmux server.
    rig.observe("devserver", obs("shell", Condition::Error, &[]))
        .await;
    rig.run_for(Duration::from_secs(21)).await;
    let sent = rig.commands();
    let nudges = sent
        .iter()
        .filter(|(s, a, _)| s == "claude-1" && a == "nudge")
        .count();
    assert_eq!(nudges, 3, "the nudge budget, then triage: {sent:?}");
    assert!(
        sent.iter().all(|(s, _, _)| s != "devserver"),
        "nothing typed into or done to a program that is not an agent: {sent:?}"
    );
    // An hour later and after its death: still nothing.
    rig.run_for(Duration::from_secs(3600)).await;
    rig.sup
        .apply(&Rig::key("devserver"), Input::PaneDied(0), rig.now)
        .await;
    rig.run_for(Duration::from_secs(120)).await;
    let sent = rig.commands();
    assert!(sent.iter().all(|(s, _, _)| s != "devserver"), "{sent:?}");
    let state = rig
        .sup
        .fleet
        .session(&Rig::key("devserver"), |t| t.state)
        .expect("still listed");
    assert_eq!(state.as_str(), "dead");
    Ok(())
}

#[tokio::test]
async fn the_fleet_budget_delays_restarts_but_never_drops_one() -> anyhow::Result<()> {
    let mut rig = Rig::start(Policy {
        fleet_destructive_per_minute: 1,
        mass_death_deaths: 10,
        ..Policy::default()
    })
    .await?;
    let names = ["a1", "a2", "a3"];
    for name in names {
        rig.observe(
            name,
            obs("claude", Condition::None, &[("restart", "claude -c")]),
        )
        .await;
    }
    // All three die at once; the budget holds one token and earns one a minute.
    for name in names {
        rig.sup
            .apply(&Rig::key(name), Input::PaneDied(0), rig.now)
            .await;
    }
    // Each restart works: its session reports a new agent before the next phase.
    let mut pid = 5000;
    let mut phase = async |rig: &mut Rig, secs: u64| {
        rig.run_for(Duration::from_secs(secs)).await;
        // Only the restarts: a restarted agent left idle meets its ladder meanwhile.
        let sent: Vec<_> = rig
            .commands()
            .into_iter()
            .filter(|(_, a, _)| a == "restart")
            .collect();
        for (name, _, _) in &sent {
            pid += 1;
            let mut o = obs("claude", Condition::None, &[("restart", "claude -c")]);
            if let Some(a) = &mut o.agent {
                a.pid = pid;
            }
            rig.observe(name, o).await;
        }
        sent
    };
    let first = phase(&mut rig, 50).await;
    assert_eq!(first.len(), 1, "one token per minute: {first:?}");
    let second = phase(&mut rig, 60).await;
    assert_eq!(second.len(), 1, "{second:?}");
    let third = phase(&mut rig, 60).await;
    assert_eq!(third.len(), 1, "{third:?}");
    let mut restarted: Vec<String> = [first, second, third]
        .into_iter()
        .flatten()
        .map(|(s, a, cmd)| {
            assert_eq!((a.as_str(), cmd.as_str()), ("restart", "claude -c"));
            s
        })
        .collect();
    restarted.sort();
    assert_eq!(restarted, names, "every held restart was sent in the end");
    Ok(())
}

/// Among replicas a provider's cooldown is the leader's, fleet-wide: a replica records its
/// sessions' rate-limit episodes (once each, not per report) instead of opening incidents of its
/// own, and a session's resume waits for the open fleet-wide incident's cooldown exactly as a
/// single controller's session waits for its correlator's.
#[tokio::test]
async fn among_replicas_rate_limits_are_recorded_and_the_fleet_cooldown_holds_the_resume()
-> anyhow::Result<()> {
    let mut rig = Rig::start(Policy::default()).await?;
    let replica = argus_controller::replica::Replica::unconnected(
        "postgres://argus@127.0.0.1:1/none",
        "ctl-test",
        "http://127.0.0.1:1",
    )?;
    let _ = rig.sup.replica.set(Arc::new(replica));
    let team = [("provider", "anthropic"), ("account", "team")];
    let reset_s = rig.now / 1000 + 60;
    let limited = |labels: &[(&str, &str)]| {
        let mut o = obs("claude", Condition::RateLimited, labels);
        o.rate_limit_reset_at = reset_s;
        o
    };
    // Two sessions of one scope (a single controller would open an incident) and one of another.
    for name in ["a", "b"] {
        rig.observe(name, limited(&team)).await;
        // An unchanged report records nothing more.
        rig.observe(name, limited(&team)).await;
    }
    rig.observe("other", limited(&[("provider", "openai")]))
        .await;
    assert!(
        rig.sup.open_incident_kinds().is_empty(),
        "no incident of the replica's own"
    );
    let store = rig.sup.store.clone();
    let episodes = || async {
        let mut e: Vec<(String, String, i64)> = store
            .rate_limits()
            .await
            .map(|rows| {
                rows.into_iter()
                    .map(|r| (r.session.session_name, r.scope, r.until_ms))
                    .collect()
            })
            .unwrap_or_default();
        e.sort();
        e
    };
    let want = vec![
        ("a".to_owned(), "anthropic/team".to_owned(), reset_s * 1000),
        ("b".to_owned(), "anthropic/team".to_owned(), reset_s * 1000),
        ("other".to_owned(), "openai/".to_owned(), reset_s * 1000),
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while episodes().await != want {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "episodes recorded: {:?}",
            episodes().await
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The leader's fleet-wide incident of the team's scope holds its sessions for 10 minutes;
    // the other scope's session is resumed after its own reset.
    rig.sup
        .set_fleet_limits(vec![argus_decide::correlate::fleet::OpenLimit {
            id: "inc-fleet-1".into(),
            scope: "anthropic/team".into(),
            sessions: 2,
            until_ms: rig.now + 600_000,
        }]);
    rig.run_for(Duration::from_secs(90)).await;
    let resumed: Vec<String> = rig
        .commands()
        .into_iter()
        .filter(|(_, a, _)| a == "nudge")
        .map(|(s, _, _)| s)
        .collect();
    assert_eq!(resumed, ["other"], "only the other scope's session resumed");
    // A limit that ends is forgotten.
    rig.observe("a", obs("claude", Condition::AtPrompt, &team))
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while episodes().await.iter().any(|(s, _, _)| s == "a") {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the ended episode is still recorded"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}
