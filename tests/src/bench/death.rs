//! Death detection and restart: fake agents (`fake-agent quiet`) in a private tmux server under
//! the real node agent and controller; each is SIGKILLed at a random moment, and the benchmark
//! times, from the kill, the controller's `transition` event for that session (to zombie or
//! dead) and the transition back to working with a new agent pid (the restart, `@argus-restart`
//! set and the policy allowing an immediate restart). Sessions are killed concurrently, each
//! again once its new agent runs.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use argus_proto::v1 as pb;
use hdrhistogram::Histogram;
use rand::Rng;
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinSet;

use super::procs;
use super::report::{Machine, Row, Section, table};
use super::{
    Controller, EventTap, IMMEDIATE_RESTART, Latency, Scale, Tmux, histogram, policy, record,
};
use crate::eventually;
use crate::spec::{ControllerSpec, NodeAgentSpec, Pki};

fn transport(plan: &Plan) -> &'static str {
    if plan.tls { "mTLS" } else { "plaintext" }
}

/// One configuration: probe interval, sessions, kills, and whether panes stay after their
/// process dies (`remain-on-exit`: the restart respawns the pane) or the session closes with it
/// (the restart must create the session anew).
#[derive(Debug, Clone, Copy)]
struct Plan {
    probe: Duration,
    sessions: usize,
    kills: usize,
    remain_on_exit: bool,
    /// Node agent and admin client over mutual TLS (the controller serves TLS 1.3).
    tls: bool,
}

fn plans(scale: Scale) -> Vec<Plan> {
    match scale {
        Scale::Full => vec![
            Plan {
                probe: Duration::from_millis(250),
                sessions: 20,
                kills: 200,
                remain_on_exit: true,
                tls: false,
            },
            // The same, over mutual TLS, measured in the same run.
            Plan {
                probe: Duration::from_millis(250),
                sessions: 20,
                kills: 200,
                remain_on_exit: true,
                tls: true,
            },
            Plan {
                probe: Duration::from_secs(1),
                sessions: 20,
                kills: 200,
                remain_on_exit: true,
                tls: false,
            },
            Plan {
                probe: Duration::from_millis(250),
                sessions: 10,
                kills: 10,
                remain_on_exit: false,
                tls: false,
            },
        ],
        Scale::Smoke => [false, true]
            .into_iter()
            .map(|tls| Plan {
                probe: Duration::from_millis(250),
                sessions: 3,
                kills: 10,
                remain_on_exit: true,
                tls,
            })
            .collect(),
    }
}

/// What one configuration measured.
struct Figures {
    plan: Plan,
    detect: Histogram<u64>,
    restart: Histogram<u64>,
    kills: usize,
    /// Kills whose death the controller never reported (within 10 s).
    unnoticed: usize,
    /// Kills whose restart never showed (within 15 s); such a session is not killed again.
    not_restarted: usize,
    wall: Duration,
}

impl Figures {
    fn new(plan: Plan) -> Self {
        Self {
            plan,
            detect: histogram(),
            restart: histogram(),
            kills: 0,
            unnoticed: 0,
            not_restarted: 0,
            wall: Duration::ZERO,
        }
    }
}

/// Runs the death benchmark and returns its report section.
pub async fn run(scale: Scale, machine: &Machine) -> anyhow::Result<Section> {
    let mut all = Vec::new();
    for plan in plans(scale) {
        let f = measure(plan)
            .await
            .with_context(|| format!("death detection at probe interval {:?}", plan.probe))?;
        println!(
            "death: probe {:?}, remain-on-exit {}, {}: {} kills in {:.1} s; noticed p50/p99/max {}; restarted {} ({} unnoticed, {} not restarted)",
            plan.probe,
            plan.remain_on_exit,
            transport(&plan),
            f.kills,
            f.wall.as_secs_f64(),
            Latency::of(&f.detect).triple(),
            Latency::of(&f.restart).triple(),
            f.unnoticed,
            f.not_restarted
        );
        all.push(f);
    }
    Ok(section(&all, machine))
}

type Tx = mpsc::Sender<(Instant, pb::FleetEvent)>;

async fn measure(plan: Plan) -> anyhow::Result<Figures> {
    let dir = super::workdir("death")?;
    let pki = if plan.tls {
        Some(Pki::new(&dir.path().join("pki"))?)
    } else {
        None
    };
    let mut spec = ControllerSpec::new()
        .policy(&policy(IMMEDIATE_RESTART))
        .quiet();
    if let Some(pki) = &pki {
        spec = spec.tls(pki);
    }
    let controller = spec.start(dir.path()).await?;
    let tmux = Tmux::new();
    let agent_cmd = crate::cluster::fake_agent("quiet");
    let names: Vec<String> = (0..plan.sessions)
        .map(|i| format!("victim-{i:02}"))
        .collect();
    for name in &names {
        tmux.session(name, &agent_cmd, &[("restart", &agent_cmd)])?;
        if plan.remain_on_exit {
            tmux.run(&[
                "set-option",
                "-w",
                "-t",
                &format!("={name}:"),
                "remain-on-exit",
                "on",
            ])?;
        }
    }
    let node = "death-node".to_owned();
    let mut agent_spec = NodeAgentSpec::new(&node, &controller.url(), tmux.socket());
    if let Some(pki) = &pki {
        agent_spec = agent_spec.tls(&controller.url(), &pki.node(&node)?);
    }
    let mut agent = agent_spec
        .state_dir("state")
        .probe_interval(plan.probe)
        .env("RUST_LOG", "info")
        .quiet()
        .start(dir.path())?;
    let ready = eventually(
        "every victim running under the controller's eye",
        Duration::from_secs(30),
        || async {
            let s = controller.sessions(&node).await.unwrap_or_default();
            Ok((s.len() == plan.sessions && s.iter().all(|s| s.agent_pid > 0)).then_some(()))
        },
    )
    .await;
    if let Err(e) = ready {
        agent.check_alive()?;
        return Err(e);
    }

    // Transition events, routed to the task of their session.
    let mut tap = EventTap::subscribe(&controller, &node).await?;
    let mut routes: HashMap<String, Tx> = HashMap::new();
    let mut inboxes = Vec::new();
    for name in &names {
        let (tx, rx) = mpsc::channel(256);
        routes.insert(name.clone(), tx);
        inboxes.push((name.clone(), rx));
    }
    let mut tasks = JoinSet::new();
    tasks.spawn(async move {
        while let Some((at, e)) = tap.rx.recv().await {
            if e.kind == "transition"
                && let Some(tx) = routes.get(&e.session_name)
            {
                let _ = tx.try_send((at, e));
            }
        }
    });

    let left = Arc::new(AtomicUsize::new(plan.kills));
    let results = Arc::new(Mutex::new(Figures::new(plan)));
    let controller = Arc::new(controller);
    let start = Instant::now();
    let mut killers = JoinSet::new();
    for (name, inbox) in inboxes {
        killers.spawn(killer(
            controller.clone(),
            node.clone(),
            name,
            inbox,
            left.clone(),
            results.clone(),
        ));
    }
    let mut first_error = None;
    while let Some(r) = killers.join_next().await {
        if let Ok(Err(e)) = r {
            first_error.get_or_insert(e);
        }
    }
    agent.check_alive()?;
    let mut f = std::mem::replace(&mut *results.lock().await, Figures::new(plan));
    f.wall = start.elapsed();
    if let Some(e) = first_error {
        anyhow::ensure!(f.kills > 0, "no kill measured: {e:#}");
        println!("death: a victim stopped early: {e:#}");
    }
    Ok(f)
}

/// Kills one session again and again (while kills are left), timing each.
async fn killer(
    controller: Arc<Controller>,
    node: String,
    name: String,
    mut inbox: mpsc::Receiver<(Instant, pb::FleetEvent)>,
    left: Arc<AtomicUsize>,
    results: Arc<Mutex<Figures>>,
) -> anyhow::Result<()> {
    let mut last_pid = 0;
    loop {
        // The current agent, once the controller knows it (alive, a new pid).
        let pid = eventually(
            &format!("{name} running a new agent"),
            Duration::from_secs(20),
            || async {
                let s = controller.sessions(&node).await?;
                Ok(s.iter()
                    .find(|s| s.session_name == name)
                    .filter(|s| {
                        s.agent_pid > 0
                            && s.agent_pid != last_pid
                            && matches!(
                                s.state(),
                                pb::SessionState::Working | pb::SessionState::Stalled
                            )
                    })
                    .map(|s| s.agent_pid))
            },
        )
        .await?;
        last_pid = pid;
        if left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_err()
        {
            return Ok(());
        }
        // A random moment.
        let wait = rand::rng().random_range(0..700);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        while inbox.try_recv().is_ok() {}
        anyhow::ensure!(
            procs::start_time(pid).is_some(),
            "agent {pid} of {name} vanished before its kill"
        );
        let killed = Instant::now();
        procs::sigkill(pid)?;

        let dead = wait_transition(&mut inbox, killed, Duration::from_secs(10), |s| {
            matches!(s, pb::SessionState::Zombie | pb::SessionState::Dead)
        })
        .await;
        let back = wait_transition(&mut inbox, killed, Duration::from_secs(15), |s| {
            s == pb::SessionState::Working
        })
        .await;
        let mut r = results.lock().await;
        r.kills += 1;
        match dead {
            Some(at) => record(&mut r.detect, at - killed),
            None => r.unnoticed += 1,
        }
        match back {
            Some(at) => record(&mut r.restart, at - killed),
            None => {
                // Not coming back by itself: this session is out of the run.
                r.not_restarted += 1;
                return Ok(());
            }
        }
    }
}

/// The arrival time of the first transition into a state matching `want`, received after
/// `since`.
async fn wait_transition(
    inbox: &mut mpsc::Receiver<(Instant, pb::FleetEvent)>,
    since: Instant,
    deadline: Duration,
    want: impl Fn(pb::SessionState) -> bool,
) -> Option<Instant> {
    let wait = async {
        while let Some((at, e)) = inbox.recv().await {
            let state = pb::SessionState::try_from(e.state).unwrap_or_default();
            if at >= since && want(state) {
                return Some(at);
            }
        }
        None
    };
    tokio::time::timeout(deadline, wait).await.ok().flatten()
}

fn section(all: &[Figures], machine: &Machine) -> Section {
    let mut body = String::from("## Death detection and restart\n\n");
    let _ = writeln!(
        body,
        "Machine: {}.\n\nThe real controller (tick 500 ms) and node agent against a private \
         tmux server; each session runs `fake-agent quiet` as the pane's own process, with \
         `@argus-restart` set to the same command. With `remain-on-exit on` the dead pane stays \
         and the restart respawns it; without it (tmux's default) the kill closes the session \
         and the restart has to create it anew. Sessions are SIGKILLed at random moments (0-700 ms after their agent is \
         known), concurrently; each is killed again once its new agent runs. *Noticed*: kill to \
         the controller's `transition` event (to zombie or dead) arriving on `WatchEvents`. \
         *Restarted*: kill to the `transition` event back to working with the new agent. \
         Policy: `restart_on_death = \"labelled\"` and, so that every death is restarted at once \
         and on its own, `restart_backoff_min = \"0s\"` with the crash-loop, mass-death and \
         fleet-budget brakes lifted. *mTLS*: the node agent and this benchmark's admin client \
         over mutual TLS 1.3 (certificates from `argus_controller::pki`), measured in the same \
         run as the plaintext row above it.\n",
        machine.line()
    );
    let mut rows = Vec::new();
    let mut detail = String::from(
        "| probe interval | remain-on-exit | transport | sessions | kills | noticed p50 / p99 / max | restarted p50 / p99 / max | unnoticed | not restarted |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for f in all {
        let d = Latency::of(&f.detect);
        let r = Latency::of(&f.restart);
        let _ = writeln!(
            detail,
            "| {} ms | {} | {} | {} | {} | {} | {} | {} | {} |",
            f.plan.probe.as_millis(),
            if f.plan.remain_on_exit { "on" } else { "off" },
            transport(&f.plan),
            f.plan.sessions,
            f.kills,
            d.triple(),
            r.triple(),
            f.unnoticed,
            f.not_restarted
        );
        let probe = format!(
            "probe {} ms, remain-on-exit {}, {}",
            f.plan.probe.as_millis(),
            if f.plan.remain_on_exit { "on" } else { "off" },
            transport(&f.plan)
        );
        rows.push(Row::target(
            format!(
                "death noticed by the controller, p99 ({probe}, {} kills)",
                f.kills
            ),
            super::ms(d.p99),
            "< 100 ms p99",
            d.count > 0 && d.p99 < Duration::from_millis(100) && f.unnoticed == 0,
        ));
        let restarted = if f.not_restarted > 0 {
            format!(
                "{} ({} of {} kills never restarted)",
                super::ms(r.p50),
                f.not_restarted,
                f.kills
            )
        } else {
            super::ms(r.p50)
        };
        rows.push(Row::target(
            format!("restarted agent running, p50 ({probe})"),
            restarted,
            "< 1 s p50",
            r.count > 0 && r.p50 < Duration::from_secs(1) && f.not_restarted == 0,
        ));
    }
    body.push_str(&table(&rows));
    body.push('\n');
    body.push_str(&detail);
    Section { key: "death", body }
}
