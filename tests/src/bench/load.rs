//! One controller under a simulated fleet (`loadgen`): attach N nodes x M sessions, check that a
//! heartbeat-only phase writes nothing durable, time session deaths on a quiet fleet, then run
//! changed-session reports at the target rate with deaths and silent nodes mixed in, and drain.
//! Reports observations/s accepted, fault-to-decision latency, controller CPU, memory per
//! session and peak RSS.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::seq::SliceRandom;

use super::loadgen::{Count, FleetConfig, SimFleet};
use super::procs::{self, CpuReading};
use super::report::{Machine, Row, Section, table};
use super::{EventTap, IMMEDIATE_RESTART, Latency, Scale, ms, policy, thousands, us};
use crate::eventually;
use crate::spec::{Controller, ControllerSpec};

/// The shape of one run.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub nodes: usize,
    pub sessions: usize,
    pub streams_per_conn: usize,
    /// Changed-session observations per node per second during the load phase.
    pub rate: f64,
    /// Deaths per second across the fleet during the load phase.
    pub faults: f64,
    pub load: Duration,
    pub heartbeat_only: Duration,
    /// Nodes that go silent during the load phase.
    pub silent: usize,
    /// Every simulated node over mutual TLS, with its own certificate.
    pub tls: bool,
    /// The controller records Prometheus metrics (`metrics = false`: every metric a no-op).
    pub metrics: bool,
}

impl Plan {
    /// The plans of a scale. The target is 10,000 nodes x 10 sessions at 5 changed sessions per
    /// node per second; on 2 cores, with the load generator beside the controller, that does not
    /// fit in a few minutes (docs/performance.md has the figures of `bench load --nodes 10000`).
    /// The full run measures many streams (2,000 x 10) and the observation rate (1,000 x 50 at
    /// 50,000 per second) separately.
    pub fn defaults(scale: Scale) -> Vec<Self> {
        let base = Self {
            nodes: 2_000,
            sessions: 10,
            streams_per_conn: 1,
            rate: 10.0,
            faults: 20.0,
            load: Duration::from_secs(20),
            heartbeat_only: Duration::from_secs(10),
            silent: 5,
            tls: false,
            metrics: true,
        };
        match scale {
            Scale::Full => vec![
                base,
                // The same over mutual TLS, in the same run.
                Self { tls: true, ..base },
                Self {
                    nodes: 1_000,
                    sessions: 50,
                    rate: 50.0,
                    load: Duration::from_secs(15),
                    ..base
                },
            ],
            Scale::Smoke => [false, true]
                .into_iter()
                .map(|tls| Self {
                    nodes: 50,
                    rate: 5.0,
                    faults: 5.0,
                    load: Duration::from_secs(3),
                    heartbeat_only: Duration::from_secs(2),
                    silent: 0,
                    tls,
                    ..base
                })
                .collect(),
        }
    }
}

/// What one run measured.
struct Figures {
    plan: Plan,
    nofile: u64,
    attach: Duration,
    synced: Duration,
    rss_idle_kib: u64,
    rss_fleet_kib: u64,
    peak_kib: u64,
    hb_count: u64,
    hb_cpu: Duration,
    hb_wall: Duration,
    durable_unchanged: bool,
    db_change: String,
    sent: Count,
    load_wall: Duration,
    drain: Duration,
    load_cpu: Duration,
    loadgen_cpu: Duration,
    quiet: [Latency; 2],
    loaded: [Latency; 2],
    drain_latency: Latency,
    attach_latency: Latency,
    suspect: Vec<Duration>,
    down: Vec<Duration>,
    /// `self_suspect` incidents opened while a few nodes were silent.
    incidents: Vec<String>,
    stream_errors: u64,
    attach_retries: u64,
    /// One `GET /metrics` with the fleet attached: its time and size in bytes.
    scrape: Option<(Duration, usize)>,
}

/// Runs the controller load benchmark and returns its report section.
pub async fn run(scale: Scale, machine: &Machine, plan: Option<Plan>) -> anyhow::Result<Section> {
    // A plan over TLS is measured beside the same plan in plaintext, in the same run.
    let plans = plan.map_or_else(
        || Plan::defaults(scale),
        |p| {
            if p.tls {
                vec![Plan { tls: false, ..p }, p]
            } else if !p.metrics {
                // Metrics off is measured beside metrics on, in the same run.
                vec![Plan { metrics: true, ..p }, p]
            } else {
                vec![p]
            }
        },
    );
    let mut all = Vec::new();
    for p in plans {
        let f = measure(p).await.with_context(|| {
            format!(
                "{} nodes x {} sessions at {}/s",
                p.nodes, p.sessions, p.rate
            )
        })?;
        all.push(f);
    }
    Ok(section(&all, machine))
}

async fn measure(mut plan: Plan) -> anyhow::Result<Figures> {
    // Each stream is a socket here and one in the controller (which inherits this limit).
    let nofile = procs::raise_nofile()?;
    let conns = plan.nodes.div_ceil(plan.streams_per_conn) as u64;
    if conns + 512 > nofile {
        let fit = ((nofile.saturating_sub(512)) as usize) * plan.streams_per_conn;
        println!(
            "load: {} nodes need {conns} sockets but RLIMIT_NOFILE is {nofile}: running {fit} nodes",
            plan.nodes
        );
        plan.nodes = fit;
    }
    let dir = super::workdir("load")?;
    let pki = if plan.tls {
        Some(crate::spec::Pki::new(&dir.path().join("pki"))?)
    } else {
        None
    };
    let mut spec = ControllerSpec::new()
        .policy(&policy(IMMEDIATE_RESTART))
        .quiet();
    if let Some(pki) = &pki {
        spec = spec.tls(pki);
    }
    spec.config.metrics = plan.metrics;
    let http = spec.config.http;
    let controller = spec.start(dir.path()).await?;
    let pid = controller.proc.pid();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_idle_kib = procs::memory(pid)?.rss_kib;

    let mut cfg = FleetConfig::new(controller.url(), plan.nodes, plan.sessions);
    cfg.streams_per_conn = plan.streams_per_conn;
    cfg.node_prefix = "sim".into();
    cfg.tls = pki;
    let fleet = SimFleet::start(cfg)
        .await
        .context("attaching the simulated fleet")?;
    let attach = fleet.attach_time;
    let synced = fleet
        .barrier(0..plan.nodes, "attach", Duration::from_secs(600))
        .await
        .context("waiting for the controller to apply every snapshot")?;
    println!(
        "load: {} nodes x {} sessions attached in {:.1} s, applied {:.1} s later",
        plan.nodes,
        plan.sessions,
        attach.as_secs_f64(),
        synced.as_secs_f64()
    );
    // The attach wrote transitions (first seen -> working) and epochs: let the writer finish.
    quiet_db(&controller).await?;

    // Heartbeats only: nothing durable may change.
    let before = controller.db_files();
    let c0 = fleet.stats.counters.read();
    let cpu0 = CpuReading::of(pid)?;
    let hb_start = Instant::now();
    tokio::time::sleep(plan.heartbeat_only).await;
    let hb_wall = hb_start.elapsed();
    let hb_cpu = CpuReading::of(pid)?.since(&cpu0);
    let hb_count = (fleet.stats.counters.read() - c0).heartbeats;
    let after = controller.db_files();
    let durable_unchanged = before == after;
    let db_change = before
        .iter()
        .zip(&after)
        .map(|(b, a)| format!("{}: {} -> {} bytes", b.0, b.1, a.1))
        .collect::<Vec<_>>()
        .join(", ");
    let rss_fleet_kib = procs::memory(pid)?.rss_kib;
    println!(
        "load: heartbeat-only {:.1} s: {} heartbeats, controller CPU {}, durable files unchanged: {durable_unchanged} ({db_change}); RSS {} -> {} KiB",
        hb_wall.as_secs_f64(),
        hb_count,
        ms(hb_cpu),
        rss_idle_kib,
        rss_fleet_kib
    );

    // Deaths on a quiet fleet: the reference latency.
    fleet
        .fault_storm(
            plan.faults.min(10.0),
            Duration::from_secs(3),
            &[],
            ("quiet event", "quiet pane_dead"),
        )
        .await;

    // The load: changed sessions at the target rate, with deaths on random nodes.
    let mut tap = EventTap::subscribe(&controller, "").await?;
    fleet.set_rate(plan.rate).await;
    let c0 = fleet.stats.counters.read();
    let cpu0 = CpuReading::of(pid)?;
    let me0 = CpuReading::of(std::process::id())?;
    let start = Instant::now();
    fleet
        .fault_storm(
            plan.faults,
            plan.load,
            &[],
            ("load event", "load pane_dead"),
        )
        .await;
    let sent = fleet.stats.counters.read() - c0;
    let load_wall = start.elapsed();
    let drain = fleet
        .barrier(0..plan.nodes, "drain", Duration::from_secs(600))
        .await
        .context("draining the load")?;
    let load_cpu = CpuReading::of(pid)?.since(&cpu0);
    let loadgen_cpu = CpuReading::of(std::process::id())?.since(&me0);

    // A few nodes fall silent while the rest keep reporting: time to suspect and to down.
    let mut silent: Vec<usize> = (0..plan.nodes).collect();
    silent.shuffle(&mut rand::rng());
    silent.truncate(plan.silent.min(plan.nodes / 10));
    let mut silent_at = Vec::new();
    for &ix in &silent {
        fleet.silence(ix, true).await;
        silent_at.push((fleet.ids()[ix].clone(), Instant::now()));
    }
    let mut suspect = Vec::new();
    let mut down = Vec::new();
    let mut incidents = Vec::new();
    if !silent.is_empty() {
        let watch = async {
            while down.len() < silent.len() {
                let Some((at, e)) = tap.rx.recv().await else {
                    break;
                };
                if e.kind == "incident_opened" && e.message.starts_with("self_suspect") {
                    incidents.push(e.message.clone());
                }
                if let Some((_, t)) = silent_at.iter().find(|(n, _)| *n == e.node_id) {
                    match e.kind.as_str() {
                        "node_suspect" => suspect.push(at - *t),
                        "node_down" => down.push(at - *t),
                        _ => {}
                    }
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(40), watch).await;
    }
    fleet.set_rate(0.0).await;
    for &ix in &silent {
        fleet.silence(ix, false).await;
    }
    let peak_kib = procs::memory(pid)?.peak_kib;
    // One scrape with the whole fleet attached (its gauges walk every session); over TLS it
    // would need a token.
    let mut scrape = None;
    if let (true, Some(addr)) = (plan.metrics && !plan.tls, http) {
        let start = Instant::now();
        let (status, body) = crate::monitoring::get(addr, "/metrics", &[]).await?;
        anyhow::ensure!(status == 200, "/metrics answered {status}");
        scrape = Some((start.elapsed(), body.len()));
        println!(
            "load: GET /metrics with {} sessions: {} ({} bytes)",
            plan.nodes * plan.sessions,
            ms(start.elapsed()),
            body.len()
        );
    }

    let stats = &fleet.stats;
    let f = Figures {
        plan,
        nofile,
        attach,
        synced,
        rss_idle_kib,
        rss_fleet_kib,
        peak_kib,
        hb_count,
        hb_cpu,
        hb_wall,
        durable_unchanged,
        db_change,
        sent,
        load_wall,
        drain,
        load_cpu,
        loadgen_cpu,
        quiet: [
            stats.latency("quiet event"),
            stats.latency("quiet pane_dead"),
        ],
        loaded: [stats.latency("load event"), stats.latency("load pane_dead")],
        drain_latency: stats.latency("drain"),
        attach_latency: stats.latency("attach"),
        suspect,
        down,
        incidents,
        stream_errors: stats.counters.read().stream_errors,
        attach_retries: stats.counters.read().attach_retries,
        scrape,
    };
    for w in stats.slowest() {
        println!(
            "load: slow decision: {} {} {}: sent at {} ms, Restart back at {} ms ({})",
            w.tag,
            w.node,
            w.session,
            w.sent_ms,
            w.arrived_ms,
            ms(w.took)
        );
    }
    let errors = stats.errors();
    if !errors.is_empty() {
        println!("load: stream errors (first ones): {errors:?}");
    }
    println!(
        "load: {} observations in {:.1} s + drain {:.1} s = {} /s; controller CPU {}; deaths under load p50/p99/max {} (event) {} (pane_dead); quiet {} / {}",
        thousands(f.sent.observations),
        load_wall.as_secs_f64(),
        drain.as_secs_f64(),
        thousands(f.accepted_rate() as u64),
        ms(load_cpu),
        f.loaded[0].triple(),
        f.loaded[1].triple(),
        f.quiet[0].triple(),
        f.quiet[1].triple(),
    );
    fleet.stop(Duration::from_secs(10)).await;
    Ok(f)
}

impl Figures {
    fn accepted_rate(&self) -> f64 {
        self.sent.observations as f64 / (self.load_wall + self.drain).as_secs_f64().max(1e-3)
    }
    fn sessions(&self) -> u64 {
        (self.plan.nodes * self.plan.sessions) as u64
    }
}

/// Waits until the SQLite files stop changing for 2 s (at most 2 minutes).
async fn quiet_db(c: &Controller) -> anyhow::Result<()> {
    let mut last = c.db_files();
    let mut since = Instant::now();
    eventually("the store to settle", Duration::from_secs(120), || {
        let now = c.db_files();
        if now != last {
            last = now;
            since = Instant::now();
        }
        let settled = since.elapsed() >= Duration::from_secs(2);
        async move { Ok(settled.then_some(())) }
    })
    .await
}

fn section(all: &[Figures], machine: &Machine) -> Section {
    let mut body = String::from("## Controller under a simulated fleet\n\n");
    let _ = writeln!(
        body,
        "Machine: {}.\n\nOne real `argus-controller` (SQLite, tick 500 ms, `RUST_LOG` unset = \
         info, logging to a file) and the load generator (`argus-loadgen`'s fleet, in the bench \
         process, sharing the same {} CPUs) on loopback. Each node sends Hello, a full snapshot, a heartbeat every 2 s and, during the \
         load phase, one report per second with its changed sessions (busy agents: `thinking`, \
         so never idle). Deaths are scripted on random nodes, alternating an `Event` \
         AGENT_EXITED and a report with `pane_dead`; the sessions carry a `restart` label and \
         the policy restarts at once (`restart_backoff_min = \"0s\"`, fleet brakes lifted), so \
         a death's decision is a Restart command back on the node's stream: latency = command \
         arrival - fault handed to the stream, end to end. *Accepted* counts observations sent \
         during the load phase over the phase plus the drain (a death on every node; streams \
         are ordered, so when all Restarts are back the controller has applied everything). \
         *Memory per session* is (RSS with the fleet attached - RSS idle) / sessions, streams \
         and connections included.\n",
        machine.line(),
        machine.cpus,
    );
    for f in all {
        plan_section(&mut body, f);
    }
    Section { key: "load", body }
}

fn plan_section(body: &mut String, f: &Figures) {
    let p = &f.plan;
    let _ = writeln!(
        body,
        "\n### {} nodes x {} sessions, {} changed sessions per node per second{}\n\n{} Attach \
         stream(s) per HTTP/2 connection; RLIMIT_NOFILE {}; {} deaths per second in the load \
         phase, which lasts {} s.\n",
        thousands(p.nodes as u64),
        p.sessions,
        p.rate,
        match (p.tls, p.metrics) {
            (true, _) => ", mutual TLS (each node its own certificate)",
            (false, false) => ", metrics off (`metrics = false`)",
            (false, true) => "",
        },
        p.streams_per_conn,
        f.nofile,
        p.faults,
        p.load.as_secs(),
    );
    let mem_per_session = (f.rss_fleet_kib.saturating_sub(f.rss_idle_kib)) as f64 * 1024.0
        / f.sessions().max(1) as f64;
    let rate = f.accepted_rate();
    let load_secs = (f.load_wall + f.drain).as_secs_f64();
    let cpu_share = f.load_cpu.as_secs_f64() / load_secs.max(1e-3);
    let cpu_per_obs = f.load_cpu.div_f64(f.sent.observations.max(1) as f64);
    let worst = if f.loaded[0].p99 > f.loaded[1].p99 {
        f.loaded[0]
    } else {
        f.loaded[1]
    };
    let quiet = if f.quiet[0].p99 > f.quiet[1].p99 {
        f.quiet[0]
    } else {
        f.quiet[1]
    };
    let rows = vec![
        Row::target(
            "simulated node streams / sessions",
            format!(
                "{} / {}",
                thousands(p.nodes as u64),
                thousands(f.sessions())
            ),
            "10,000 / 100,000",
            p.nodes >= 10_000 && f.sessions() >= 100_000,
        ),
        Row::target(
            "observations/s accepted",
            thousands(rate as u64),
            ">= 50,000",
            rate >= 50_000.0,
        ),
        Row::target(
            "report-to-decision p99 under load (worst kind)",
            ms(worst.p99),
            "< 50 ms",
            worst.count > 0 && worst.p99 < Duration::from_millis(50),
        )
        .baseline(format!("{} on a quiet fleet", ms(quiet.p99))),
        Row::target(
            "memory per session",
            format!("{:.2} KiB", mem_per_session / 1024.0),
            "< 2 KiB",
            mem_per_session < 2048.0,
        ),
        Row::target(
            "durable writes during the heartbeat-only phase",
            if f.durable_unchanged {
                format!("none ({} heartbeats)", thousands(f.hb_count))
            } else {
                format!("files changed: {}", f.db_change)
            },
            "no durable write per heartbeat",
            f.durable_unchanged,
        ),
        Row::info(
            "controller CPU during load + drain",
            format!(
                "{:.0}% of one core, {} per observation",
                cpu_share * 100.0,
                us(cpu_per_obs)
            ),
        ),
        Row::info(
            "controller peak RSS (VmHWM)",
            format!("{:.0} MiB", f.peak_kib as f64 / 1024.0),
        ),
    ];
    let mut rows = rows;
    if let Some((took, bytes)) = f.scrape {
        rows.push(Row::info(
            "one GET /metrics with the fleet attached",
            format!("{} ({} KiB)", ms(took), bytes / 1024),
        ));
    }
    body.push_str(&table(&rows));
    let _ = writeln!(body, "\nDetails:\n");
    let _ = writeln!(
        body,
        "- attach: {} nodes with their full snapshots handed to their streams in {:.1} s ({} \
         attaches refused and retried with backoff); the controller had applied them all (a \
         barrier death per node answered) {:.1} s later (p50 / p99 / max of those barrier \
         decisions: {}).",
        thousands(p.nodes as u64),
        f.attach.as_secs_f64(),
        f.attach_retries,
        f.synced.as_secs_f64(),
        f.attach_latency.triple()
    );
    let _ = writeln!(
        body,
        "- heartbeat-only phase: {:.1} s, {} heartbeats; controller CPU {} ({:.0}% of one core: \
         heartbeats plus the 500 ms tick); SQLite files {}; RSS idle {:.1} \
         MiB, with the fleet {:.1} MiB.",
        f.hb_wall.as_secs_f64(),
        thousands(f.hb_count),
        ms(f.hb_cpu),
        f.hb_cpu.as_secs_f64() / f.hb_wall.as_secs_f64().max(1e-3) * 100.0,
        if f.durable_unchanged {
            format!("unchanged in size and mtime ({})", f.db_change)
        } else {
            format!("changed ({})", f.db_change)
        },
        f.rss_idle_kib as f64 / 1024.0,
        f.rss_fleet_kib as f64 / 1024.0,
    );
    let _ = writeln!(
        body,
        "- load phase: {:.1} s offered {} observations/s ({} reports, {} heartbeats, {} deaths, \
         {} restarts received in the phase); drain {:.1} s; load generator CPU {} over the \
         phase; stream errors {}.",
        f.load_wall.as_secs_f64(),
        thousands((p.rate * p.nodes as f64) as u64),
        thousands(f.sent.reports),
        thousands(f.sent.heartbeats),
        thousands(f.sent.faults),
        thousands(f.sent.restarts),
        f.drain.as_secs_f64(),
        ms(f.loadgen_cpu),
        f.stream_errors,
    );
    let _ = writeln!(
        body,
        "- death to Restart, p50 / p99 / max (count): quiet fleet: event {} ({}), pane_dead {} \
         ({}); under load: event {} ({}), pane_dead {} ({}); drain barrier (a death on every \
         node at once) {} ({}).",
        f.quiet[0].triple(),
        f.quiet[0].count,
        f.quiet[1].triple(),
        f.quiet[1].count,
        f.loaded[0].triple(),
        f.loaded[0].count,
        f.loaded[1].triple(),
        f.loaded[1].count,
        f.drain_latency.triple(),
        f.drain_latency.count,
    );
    if !f.suspect.is_empty() || !f.down.is_empty() {
        let list = |v: &[Duration]| v.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(", ");
        let _ = writeln!(
            body,
            "- after the drain, {} of {} nodes fell silent (streams open, nothing sent) while \
             the others kept reporting: `node_suspect` after {}; `node_down` after {}.",
            p.silent,
            thousands(p.nodes as u64),
            list(&f.suspect),
            list(&f.down)
        );
    }
    for i in &f.incidents {
        let _ = writeln!(
            body,
            "- **while those few nodes were silent the controller opened `{i}`**: every kill \
             and restart in the fleet was frozen until they came back."
        );
    }
}
