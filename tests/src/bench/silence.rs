//! Host silence: a real node agent reaches the controller through the fault-injecting proxy,
//! beside a simulated fleet of a few sizes. The benchmark black-holes the real agent's link and
//! silences some simulated nodes (streams open, nothing sent), at random moments relative to
//! their heartbeats, and times the controller's `node_suspect` and `node_down` events from the
//! moment of silence; then restores them and waits until they are back.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use rand::Rng;
use rand::seq::SliceRandom;

use super::loadgen::{FleetConfig, SimFleet};
use super::proxy::Proxy;
use super::report::{Machine, Row, Section, table};
use super::{EventTap, IMMEDIATE_RESTART, Latency, Scale, Tmux, histogram, ms, policy, record};
use crate::eventually;
use crate::spec::{ControllerSpec, NodeAgentSpec};

/// One fleet size.
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// Simulated nodes beside the real one.
    sim_nodes: usize,
    /// Rounds of silence.
    trials: usize,
    /// Simulated nodes silenced per trial (besides the real one).
    silenced: usize,
}

struct Settings {
    plans: Vec<Plan>,
    /// Policy lines and the node agent's heartbeat.
    policy: &'static str,
    heartbeat: Duration,
    suspect_target: Duration,
    down_target: Duration,
}

fn settings(scale: Scale) -> Settings {
    match scale {
        Scale::Full => Settings {
            plans: vec![
                Plan {
                    sim_nodes: 0,
                    trials: 2,
                    silenced: 0,
                },
                Plan {
                    sim_nodes: 1000,
                    trials: 1,
                    silenced: 7,
                },
                Plan {
                    sim_nodes: 5000,
                    trials: 1,
                    silenced: 7,
                },
            ],
            policy: "",
            heartbeat: Duration::from_secs(2),
            suspect_target: Duration::from_secs(6),
            down_target: Duration::from_secs(15),
        },
        // Short thresholds: the smoke run checks the path, not the defaults.
        Scale::Smoke => Settings {
            plans: vec![Plan {
                sim_nodes: 20,
                trials: 1,
                silenced: 1,
            }],
            policy: "node_suspect_after = \"1s\"\nnode_down_after = \"2s\"\n",
            heartbeat: Duration::from_millis(300),
            suspect_target: Duration::from_secs(1),
            down_target: Duration::from_secs(2),
        },
    }
}

struct Figures {
    plan: Plan,
    suspect: Histogram<u64>,
    down: Histogram<u64>,
    missed: usize,
    /// `self_suspect` incidents opened during the trials (with how many nodes were silent).
    incidents: Vec<String>,
}

/// The real node agent's id.
const REAL: &str = "real-node";

/// Runs the host-silence benchmark and returns its report section.
pub async fn run(scale: Scale, machine: &Machine) -> anyhow::Result<Section> {
    let s = settings(scale);
    let mut all = Vec::new();
    for plan in &s.plans {
        let f = measure(*plan, &s)
            .await
            .with_context(|| format!("host silence beside {} simulated nodes", plan.sim_nodes))?;
        println!(
            "silence: fleet of {}: suspect p50/p99/max {}, down {} ({} samples, {} missed)",
            plan.sim_nodes + 1,
            Latency::of(&f.suspect).triple(),
            Latency::of(&f.down).triple(),
            f.suspect.len(),
            f.missed
        );
        all.push(f);
    }
    Ok(section(&s, &all, machine))
}

async fn measure(plan: Plan, s: &Settings) -> anyhow::Result<Figures> {
    let dir = super::workdir("silence")?;
    // The simulated fleet's attach barrier is a death per node: restarts must go out at once.
    let rules = format!("{IMMEDIATE_RESTART}{}", s.policy);
    let controller = ControllerSpec::new()
        .policy(&policy(&rules))
        .quiet()
        .start(dir.path())
        .await?;
    let proxy = Proxy::start(format!("127.0.0.1:{}", controller.port).parse()?).await?;
    let tmux = Tmux::new();
    let agent_cmd = crate::cluster::fake_agent("quiet");
    tmux.session("a", &agent_cmd, &[])?;
    tmux.session("b", &agent_cmd, &[])?;
    let mut agent = NodeAgentSpec::new(REAL, &format!("http://{}", proxy.addr()), tmux.socket())
        .state_dir("state")
        .heartbeat(s.heartbeat)
        .env("RUST_LOG", "info")
        .quiet()
        .start(dir.path())?;
    let up = eventually(
        "the real node agent attached",
        Duration::from_secs(30),
        || async {
            Ok((controller.sessions(REAL).await.unwrap_or_default().len() == 2).then_some(()))
        },
    )
    .await;
    if let Err(e) = up {
        agent.check_alive()?;
        return Err(e);
    }
    let fleet = if plan.sim_nodes > 0 {
        let mut cfg = FleetConfig::new(controller.url(), plan.sim_nodes, 10);
        cfg.heartbeat = s.heartbeat;
        let fleet = SimFleet::start(cfg).await?;
        fleet
            .barrier(0..plan.sim_nodes, "attach", Duration::from_secs(120))
            .await?;
        fleet.set_rate(0.5).await;
        Some(fleet)
    } else {
        None
    };

    let mut f = Figures {
        plan,
        suspect: histogram(),
        down: histogram(),
        missed: 0,
        incidents: Vec::new(),
    };
    let mut tap = EventTap::subscribe(&controller, "").await?;
    for _ in 0..plan.trials {
        // Who goes silent: the real node and some simulated ones, each at a random moment
        // within one heartbeat interval.
        let mut victims: Vec<Option<usize>> = vec![None];
        let mut pool: Vec<usize> = (0..plan.sim_nodes).collect();
        pool.shuffle(&mut rand::rng());
        victims.extend(pool.into_iter().take(plan.silenced).map(Some));
        let name = |v: &Option<usize>| match (v, &fleet) {
            (None, _) => REAL.to_owned(),
            (Some(ix), Some(fl)) => fl.ids()[*ix].clone(),
            (Some(ix), None) => format!("sim-{ix}"),
        };
        let mut offsets: Vec<(Duration, Option<usize>)> = victims
            .iter()
            .map(|v| {
                let ms = rand::rng().random_range(0..s.heartbeat.as_millis() as u64);
                (Duration::from_millis(ms), *v)
            })
            .collect();
        offsets.sort_by_key(|(d, _)| *d);
        while tap.rx.try_recv().is_ok() {}
        let t0 = Instant::now();
        let mut silent_at: HashMap<String, Instant> = HashMap::new();
        for (offset, v) in &offsets {
            tokio::time::sleep_until((t0 + *offset).into()).await;
            match (v, &fleet) {
                (None, _) => proxy.black_hole(),
                (Some(ix), Some(fl)) => fl.silence(*ix, true).await,
                _ => {}
            }
            silent_at.insert(name(v), Instant::now());
        }
        let mut suspect: HashMap<String, Instant> = HashMap::new();
        let mut down: HashMap<String, Instant> = HashMap::new();
        let mut incidents = Vec::new();
        let deadline = s.down_target * 2 + Duration::from_secs(10);
        let collect = async {
            while down.len() < silent_at.len() {
                let Some((at, e)) = tap.rx.recv().await else {
                    break;
                };
                if e.kind == "incident_opened" && e.message.starts_with("self_suspect") {
                    incidents.push(format!(
                        "{} (fleet of {}, {} silenced)",
                        e.message,
                        plan.sim_nodes + 1,
                        silent_at.len()
                    ));
                }
                if !silent_at.contains_key(&e.node_id) {
                    continue;
                }
                match e.kind.as_str() {
                    "node_suspect" => {
                        suspect.entry(e.node_id).or_insert(at);
                    }
                    "node_down" => {
                        down.entry(e.node_id).or_insert(at);
                    }
                    _ => {}
                }
            }
        };
        let _ = tokio::time::timeout(deadline, collect).await;
        f.incidents.extend(incidents);
        for (node, at) in &silent_at {
            match (suspect.get(node), down.get(node)) {
                (Some(s), Some(d)) => {
                    record(&mut f.suspect, *s - *at);
                    record(&mut f.down, *d - *at);
                }
                _ => f.missed += 1,
            }
        }

        // Back to life, and wait until the controller hears every one of them again.
        while tap.rx.try_recv().is_ok() {}
        proxy.restore();
        if let Some(fl) = &fleet {
            for v in victims.iter().flatten() {
                fl.silence(*v, false).await;
            }
        }
        let mut back: HashMap<String, bool> =
            silent_at.keys().map(|k| (k.clone(), false)).collect();
        let wait_back = async {
            while back.values().any(|b| !b) {
                let Some((_, e)) = tap.rx.recv().await else {
                    break;
                };
                if matches!(e.kind.as_str(), "node_up" | "node_attached")
                    && let Some(b) = back.get_mut(&e.node_id)
                {
                    *b = true;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(40), wait_back)
            .await
            .context("silenced nodes did not come back within 40 s")?;
    }
    agent.check_alive()?;
    if let Some(fl) = fleet {
        fl.stop(Duration::from_secs(5)).await;
    }
    Ok(f)
}

fn section(s: &Settings, all: &[Figures], machine: &Machine) -> Section {
    let mut body = String::from("## Host silence\n\n");
    let _ = writeln!(
        body,
        "Machine: {}.\n\nThe real controller (tick 500 ms, `node_suspect_after` {}, \
         `node_down_after` {}) with one real node agent (heartbeat {}) connected through a \
         loopback TCP proxy, beside simulated nodes (10 sessions each, heartbeat {}, 0.5 \
         changed observations per node per second). Each trial silences the real node (the proxy \
         stops forwarding in both directions without closing) and some simulated nodes (their \
         streams stay open, they send nothing), each at a random moment within one heartbeat \
         interval, and times `node_suspect` and `node_down` on `WatchEvents` from that moment. \
         Silence starts up to one heartbeat after the last message, so the figures sit up to \
         one heartbeat below the thresholds, plus up to one tick above.\n",
        machine.line(),
        ms(s.suspect_target),
        ms(s.down_target),
        ms(s.heartbeat),
        ms(s.heartbeat),
    );
    let mut rows = Vec::new();
    let mut detail = String::from(
        "| fleet (nodes) | silenced | suspect p50 / p99 / max | down p50 / p99 / max | missed |\n| --- | --- | --- | --- | --- |\n",
    );
    for f in all {
        let su = Latency::of(&f.suspect);
        let dn = Latency::of(&f.down);
        let _ = writeln!(
            detail,
            "| {} | {} | {} | {} | {} |",
            f.plan.sim_nodes + 1,
            f.suspect.len() + f.missed as u64,
            su.triple(),
            dn.triple(),
            f.missed
        );
        let fleet = f.plan.sim_nodes + 1;
        rows.push(Row::target(
            format!("host suspect after silence, p99 (fleet of {fleet})"),
            ms(su.p99),
            format!("within {} p99", ms(s.suspect_target)),
            su.count > 0 && su.p99 <= s.suspect_target && f.missed == 0,
        ));
        rows.push(Row::target(
            format!("host down after silence, p99 (fleet of {fleet})"),
            ms(dn.p99),
            format!("within {} p99", ms(s.down_target)),
            dn.count > 0 && dn.p99 <= s.down_target && f.missed == 0,
        ));
    }
    body.push_str(&table(&rows));
    body.push('\n');
    body.push_str(&detail);
    for f in all {
        for i in &f.incidents {
            let _ = writeln!(body, "\n- the controller opened `{i}`.");
        }
    }
    Section {
        key: "silence",
        body,
    }
}
