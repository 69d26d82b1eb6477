//! A simulated fleet: N node agents x M sessions, each node holding a real `Attach` stream to a
//! real controller: Hello, Welcome, a full snapshot, heartbeats, changed-session reports at a
//! chosen rate, and scripted faults (a session dies, a node goes silent). A fault's decision
//! latency is measured end to end: from the moment the fault is handed to the node's stream to
//! the moment the controller's Restart command for that session arrives back on it.
//!
//! Streams share HTTP/2 connections `streams_per_conn` at a time (1: one TCP connection per node,
//! as real node agents do). Everything is bounded: node count, queue sizes, run time.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use argus_proto::v1 as pb;
use argus_proto::v1::node_agent_service_client::NodeAgentServiceClient;
use argus_shared::time::now_ms;
use hdrhistogram::Histogram;
use rand::Rng;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use super::{Latency, histogram, record, thousands};

/// Messages queued towards one stream before the node waits (backpressure from the controller
/// reaches the simulated node like it reaches a real one).
const OUT_QUEUE: usize = 16;
/// Attempts to attach one node before the fleet gives up on it.
const ATTACH_ATTEMPTS: u32 = 8;
/// The tmux socket every simulated session claims.
const SOCKET: &str = "/tmp/tmux-1000/default";

/// The simulated fleet's shape.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// The controller's URL.
    pub url: String,
    /// Simulated node agents.
    pub nodes: usize,
    /// Sessions per node.
    pub sessions: usize,
    /// Attach streams per HTTP/2 connection.
    pub streams_per_conn: usize,
    /// Heartbeat interval (2 s like the node agent).
    pub heartbeat: Duration,
    /// Interval of changed-session reports (the node agent's probe interval).
    pub report_every: Duration,
    /// Node ids are `PREFIX-00042`.
    pub node_prefix: String,
    /// Attaches in flight at once while the fleet starts.
    pub attach_parallelism: usize,
    /// Mutual TLS: the test PKI that issues each simulated node its own certificate (one node
    /// per connection, as the node identity requires).
    pub tls: Option<crate::spec::Pki>,
}

impl FleetConfig {
    /// A fleet of `nodes` x `sessions` against `url` with the node agent's intervals.
    pub fn new(url: String, nodes: usize, sessions: usize) -> Self {
        Self {
            url,
            nodes,
            sessions,
            streams_per_conn: 1,
            heartbeat: Duration::from_secs(2),
            report_every: Duration::from_secs(1),
            node_prefix: "sim".to_owned(),
            attach_parallelism: 64,
            tls: None,
        }
    }
}

/// How a scripted session death is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// An `Event` AGENT_EXITED, as the node agent's pidfd watch sends it.
    AgentExited,
    /// A report whose observation has `pane_dead` (exit status 137), as a probe round sees it.
    PaneDead,
}

enum Ctl {
    /// Changed-session observations per second for this node.
    Rate(f64),
    /// Kill one session; the latency goes to histogram `tag`.
    Fault {
        kind: FaultKind,
        tag: &'static str,
        done: Option<oneshot::Sender<()>>,
    },
    /// Stop (true) or resume (false) sending anything.
    Silent(bool),
}

/// Counters of what the fleet sent and received.
#[derive(Debug, Default)]
pub struct Counters {
    pub observations: AtomicU64,
    pub reports: AtomicU64,
    pub heartbeats: AtomicU64,
    pub faults: AtomicU64,
    pub restarts: AtomicU64,
    pub other_commands: AtomicU64,
    pub stream_errors: AtomicU64,
    pub attach_retries: AtomicU64,
}

/// A point-in-time copy of [`Counters`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Count {
    pub observations: u64,
    pub reports: u64,
    pub heartbeats: u64,
    pub faults: u64,
    pub restarts: u64,
    pub other_commands: u64,
    pub stream_errors: u64,
    pub attach_retries: u64,
}

impl Counters {
    /// The current values.
    pub fn read(&self) -> Count {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Count {
            observations: r(&self.observations),
            reports: r(&self.reports),
            heartbeats: r(&self.heartbeats),
            faults: r(&self.faults),
            restarts: r(&self.restarts),
            other_commands: r(&self.other_commands),
            stream_errors: r(&self.stream_errors),
            attach_retries: r(&self.attach_retries),
        }
    }
}

impl std::ops::Sub for Count {
    type Output = Count;
    fn sub(self, o: Count) -> Count {
        Count {
            observations: self.observations - o.observations,
            reports: self.reports - o.reports,
            heartbeats: self.heartbeats - o.heartbeats,
            faults: self.faults - o.faults,
            restarts: self.restarts - o.restarts,
            other_commands: self.other_commands - o.other_commands,
            stream_errors: self.stream_errors - o.stream_errors,
            attach_retries: self.attach_retries - o.attach_retries,
        }
    }
}

/// Counters, latency histograms (microseconds, by tag), the slowest faults and the first errors.
#[derive(Default)]
pub struct Stats {
    pub counters: Counters,
    latencies: Mutex<BTreeMap<&'static str, Histogram<u64>>>,
    slowest: Mutex<Vec<Slow>>,
    errors: Mutex<Vec<String>>,
}

/// One fault's decision, with wall-clock times to find it in the controller's log.
#[derive(Debug, Clone)]
pub struct Slow {
    pub took: Duration,
    pub tag: &'static str,
    pub node: String,
    pub session: String,
    /// Unix ms when the fault was handed to the stream.
    pub sent_ms: i64,
    /// Unix ms when the Restart arrived.
    pub arrived_ms: i64,
}

impl Stats {
    fn record(&self, tag: &'static str, d: Duration) {
        if let Ok(mut l) = self.latencies.lock() {
            record(l.entry(tag).or_insert_with(histogram), d);
        }
    }

    fn slow(&self, s: Slow) {
        if let Ok(mut v) = self.slowest.lock() {
            v.push(s);
            v.sort_by_key(|w| std::cmp::Reverse(w.took));
            v.truncate(5);
        }
    }

    /// The five slowest faults (to find them in the controller's log by wall-clock time).
    pub fn slowest(&self) -> Vec<Slow> {
        self.slowest.lock().map(|v| v.clone()).unwrap_or_default()
    }

    fn error(&self, e: String) {
        self.counters.stream_errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut errors) = self.errors.lock()
            && errors.len() < 10
        {
            errors.push(e);
        }
    }

    /// The latency summary of one tag.
    pub fn latency(&self, tag: &str) -> Latency {
        self.latencies
            .lock()
            .ok()
            .and_then(|l| l.get(tag).map(Latency::of))
            .unwrap_or_default()
    }

    /// The first stream errors seen.
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

/// A running simulated fleet.
pub struct SimFleet {
    ids: Vec<String>,
    ctl: Vec<mpsc::Sender<Ctl>>,
    /// What the fleet sent and received.
    pub stats: Arc<Stats>,
    tasks: JoinSet<()>,
    /// Time from the first dial to the last full snapshot handed to its stream.
    pub attach_time: Duration,
}

impl SimFleet {
    /// Dials every node, sends Hello and its full snapshot; returns once every node has done so
    /// (or fails when a node could not attach).
    pub async fn start(cfg: FleetConfig) -> anyhow::Result<Self> {
        anyhow::ensure!(
            cfg.streams_per_conn >= 1,
            "streams_per_conn must be at least 1"
        );
        anyhow::ensure!(
            cfg.tls.is_none() || cfg.streams_per_conn == 1,
            "with TLS each connection carries one node (its certificate names it)"
        );
        let started = Instant::now();
        let endpoint = Endpoint::from_shared(cfg.url.clone())?
            .connect_timeout(Duration::from_secs(10))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        let cfg = Arc::new(cfg);
        let stats = Arc::new(Stats::default());
        let gate = Arc::new(Semaphore::new(cfg.attach_parallelism.max(1)));
        let mut tasks = JoinSet::new();
        let mut ids = Vec::with_capacity(cfg.nodes);
        let mut ctl = Vec::with_capacity(cfg.nodes);
        let mut ready = Vec::with_capacity(cfg.nodes);
        let mut channel: Option<Channel> = None;
        for ix in 0..cfg.nodes {
            let id = format!("{}-{ix:05}", cfg.node_prefix);
            if ix % cfg.streams_per_conn == 0 {
                channel = Some(match &cfg.tls {
                    Some(pki) => endpoint
                        .clone()
                        .tls_config(pki.node(&id)?.tls_config()?)?
                        .connect_lazy(),
                    None => endpoint.connect_lazy(),
                });
            }
            let Some(ch) = channel.clone() else {
                unreachable!("a channel is made for the first node of each connection")
            };
            let (ctl_tx, ctl_rx) = mpsc::channel(64);
            let (ready_tx, ready_rx) = oneshot::channel();
            ids.push(id.clone());
            ctl.push(ctl_tx);
            ready.push(ready_rx);
            tasks.spawn(node(
                ix,
                id,
                ch,
                cfg.clone(),
                ctl_rx,
                stats.clone(),
                gate.clone(),
                ready_tx,
            ));
        }
        let mut failed = Vec::new();
        for (ix, r) in ready.into_iter().enumerate() {
            match r.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failed.push(format!("{}: {e:#}", ids[ix])),
                Err(_) => failed.push(format!("{}: node task ended", ids[ix])),
            }
        }
        if !failed.is_empty() {
            anyhow::bail!(
                "{} of {} nodes could not attach; first: {}",
                failed.len(),
                cfg.nodes,
                failed[..failed.len().min(3)].join("; ")
            );
        }
        Ok(Self {
            ids,
            ctl,
            stats,
            tasks,
            attach_time: started.elapsed(),
        })
    }

    /// Node ids, in order.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// Sets every node's changed-session observation rate (per node per second).
    pub async fn set_rate(&self, per_node: f64) {
        for c in &self.ctl {
            let _ = c.send(Ctl::Rate(per_node)).await;
        }
    }

    /// Silences (or resumes) node `ix`: it stops sending anything but keeps its stream open.
    pub async fn silence(&self, ix: usize, silent: bool) {
        if let Some(c) = self.ctl.get(ix) {
            let _ = c.send(Ctl::Silent(silent)).await;
        }
    }

    /// Kills one session of node `ix`; its latency goes to histogram `tag`.
    pub async fn fault(&self, ix: usize, kind: FaultKind, tag: &'static str) {
        if let Some(c) = self.ctl.get(ix) {
            let _ = c
                .send(Ctl::Fault {
                    kind,
                    tag,
                    done: None,
                })
                .await;
        }
    }

    /// A death on every node in `nodes` at once; returns when every Restart came back (or fails
    /// after `deadline`). Streams are ordered, so afterwards the controller has applied
    /// everything these nodes sent before. Latencies go to histogram `tag`.
    pub async fn barrier(
        &self,
        nodes: std::ops::Range<usize>,
        tag: &'static str,
        deadline: Duration,
    ) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let mut waits = Vec::new();
        for ix in nodes {
            let Some(c) = self.ctl.get(ix) else { continue };
            let (tx, rx) = oneshot::channel();
            let _ = c
                .send(Ctl::Fault {
                    kind: FaultKind::AgentExited,
                    tag,
                    done: Some(tx),
                })
                .await;
            waits.push(rx);
        }
        let total = waits.len();
        let all = async {
            for w in waits {
                let _ = w.await;
            }
        };
        tokio::time::timeout(deadline, all).await.map_err(|_| {
            anyhow::anyhow!("barrier over {total} nodes not done within {deadline:?}")
        })?;
        Ok(start.elapsed())
    }

    /// Scripted faults at `per_second` on random nodes (alternating kinds) for `duration`;
    /// nodes in `skip` are left alone.
    pub async fn fault_storm(
        &self,
        per_second: f64,
        duration: Duration,
        skip: &[usize],
        tags: (&'static str, &'static str),
    ) {
        if per_second <= 0.0 || self.ctl.is_empty() {
            tokio::time::sleep(duration).await;
            return;
        }
        let every = Duration::from_secs_f64(1.0 / per_second);
        let end = Instant::now() + duration;
        let mut tick = tokio::time::interval(every);
        let mut n = 0u64;
        while Instant::now() < end {
            tick.tick().await;
            let ix = rand::rng().random_range(0..self.ctl.len());
            if skip.contains(&ix) {
                continue;
            }
            n += 1;
            let (kind, tag) = if n.is_multiple_of(2) {
                (FaultKind::AgentExited, tags.0)
            } else {
                (FaultKind::PaneDead, tags.1)
            };
            self.fault(ix, kind, tag).await;
        }
    }

    /// Closes every stream and waits for the node tasks (at most `grace`).
    pub async fn stop(mut self, grace: Duration) {
        self.ctl.clear();
        let _ = tokio::time::timeout(grace, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        self.tasks.abort_all();
    }
}

// === One simulated node ===

struct Session {
    name: String,
    pid: u32,
    start_time: u64,
    cpu_ms: u64,
    screen: u64,
    /// Dead, waiting for its restart.
    dead: bool,
}

struct Pending {
    at: Instant,
    at_ms: i64,
    tag: &'static str,
    done: Option<oneshot::Sender<()>>,
}

struct Node {
    id: String,
    sessions: Vec<Session>,
    tx: mpsc::Sender<pb::AgentMessage>,
    stats: Arc<Stats>,
    rate: f64,
    carry: f64,
    next_change: usize,
    next_fault: usize,
    pending: HashMap<String, Pending>,
    silent: bool,
    held: Vec<pb::AgentMessage>,
}

#[allow(clippy::too_many_arguments)]
async fn node(
    ix: usize,
    id: String,
    channel: Channel,
    cfg: Arc<FleetConfig>,
    mut ctl: mpsc::Receiver<Ctl>,
    stats: Arc<Stats>,
    gate: Arc<Semaphore>,
    ready: oneshot::Sender<anyhow::Result<()>>,
) {
    let mut n = Node::new(ix, id, cfg.sessions, stats);
    // Like the node agent: a refused or failed attach is retried with full-jitter backoff.
    let mut delay = Duration::from_millis(250);
    let mut attempt = 1;
    let mut inbound = loop {
        let attached = {
            let _permit = gate.acquire().await;
            n.attach(channel.clone()).await
        };
        match attached {
            Ok(s) => {
                let _ = ready.send(Ok(()));
                break s;
            }
            Err(e) if attempt == ATTACH_ATTEMPTS => {
                let _ = ready.send(Err(e.context(format!("{ATTACH_ATTEMPTS} attempts"))));
                return;
            }
            Err(_) => {
                n.stats
                    .counters
                    .attach_retries
                    .fetch_add(1, Ordering::Relaxed);
                let ms = rand::rng().random_range(0..=delay.as_millis() as u64);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                delay = (delay * 2).min(Duration::from_secs(10));
                attempt += 1;
            }
        }
    };
    let jitter = |every: Duration| {
        let ms = every.as_millis().max(1) as u64;
        tokio::time::Instant::now() + Duration::from_millis(rand::rng().random_range(0..ms))
    };
    let mut heartbeat = tokio::time::interval_at(jitter(cfg.heartbeat), cfg.heartbeat);
    let mut report = tokio::time::interval_at(jitter(cfg.report_every), cfg.report_every);
    for t in [&mut heartbeat, &mut report] {
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    let per_tick = cfg.report_every.as_secs_f64();
    loop {
        let ok = tokio::select! {
            c = ctl.recv() => match c {
                None => break,
                Some(c) => n.control(c).await,
            },
            _ = heartbeat.tick(), if !n.silent => n.heartbeat().await,
            _ = report.tick(), if !n.silent && n.rate > 0.0 => n.report(per_tick).await,
            m = inbound.message() => match m {
                Ok(Some(m)) => n.controller(m).await,
                Ok(None) => {
                    n.stats.error(format!("{}: controller closed the stream", n.id));
                    break;
                }
                Err(s) => {
                    n.stats.error(format!("{}: stream broke: {}", n.id, s.message()));
                    break;
                }
            },
        };
        if !ok {
            n.stats.error(format!("{}: outbound stream closed", n.id));
            break;
        }
    }
}

impl Node {
    fn new(ix: usize, id: String, sessions: usize, stats: Arc<Stats>) -> Self {
        let base = 100_000 + (ix as u32 % 20_000) * 40;
        let sessions = (0..sessions)
            .map(|j| Session {
                name: format!("agent-{j:02}"),
                pid: base + j as u32,
                start_time: 1_000_000 + j as u64,
                cpu_ms: 0,
                screen: 0,
                dead: false,
            })
            .collect();
        Self {
            id,
            sessions,
            // Replaced by every attach.
            tx: mpsc::channel(1).0,
            stats,
            rate: 0.0,
            carry: 0.0,
            next_change: 0,
            next_fault: 0,
            pending: HashMap::new(),
            silent: false,
            held: Vec::new(),
        }
    }

    async fn attach(
        &mut self,
        channel: Channel,
    ) -> anyhow::Result<tonic::Streaming<pb::ControllerMessage>> {
        let (tx, rx) = mpsc::channel(OUT_QUEUE);
        self.tx = tx;
        let hello = pb::Hello {
            node_id: self.id.clone(),
            hostname: self.id.clone(),
            agent_version: "loadgen".to_owned(),
            boot_id: "00000000-0000-0000-0000-000000000000".to_owned(),
            last_epoch: 0,
            probe_interval_ms: 1000,
        };
        self.tx
            .send(msg(pb::agent_message::Msg::Hello(hello)))
            .await
            .context("queueing Hello")?;
        let mut client = NodeAgentServiceClient::new(channel)
            .max_decoding_message_size(argus_proto::MAX_AGENT_MESSAGE)
            .max_encoding_message_size(argus_proto::MAX_AGENT_MESSAGE);
        let mut inbound = client
            .attach(ReceiverStream::new(rx))
            .await
            .context("Attach refused")?
            .into_inner();
        match inbound.message().await.context("waiting for Welcome")? {
            Some(pb::ControllerMessage {
                msg: Some(pb::controller_message::Msg::Welcome(_)),
            }) => {}
            other => anyhow::bail!("expected Welcome, got {other:?}"),
        }
        let sessions = self.sessions.iter().map(observation).collect::<Vec<_>>();
        let n = sessions.len() as u64;
        self.tx
            .send(msg(pb::agent_message::Msg::Report(pb::Report {
                full_snapshot: true,
                sessions,
                gone: Vec::new(),
                sent_at_ms: now_ms(),
            })))
            .await
            .context("queueing the full snapshot")?;
        self.stats
            .counters
            .observations
            .fetch_add(n, Ordering::Relaxed);
        self.stats.counters.reports.fetch_add(1, Ordering::Relaxed);
        Ok(inbound)
    }

    /// Sends (or, while silent, holds) one message; false when the stream is gone.
    async fn send(&mut self, m: pb::AgentMessage) -> bool {
        if self.silent {
            self.held.push(m);
            return true;
        }
        self.tx.send(m).await.is_ok()
    }

    async fn heartbeat(&mut self) -> bool {
        self.stats
            .counters
            .heartbeats
            .fetch_add(1, Ordering::Relaxed);
        self.send(msg(pb::agent_message::Msg::Heartbeat(pb::Heartbeat {
            sent_at_ms: now_ms(),
        })))
        .await
    }

    /// One probe round's worth of changed sessions.
    async fn report(&mut self, per_tick: f64) -> bool {
        self.carry += self.rate * per_tick;
        let want = (self.carry.floor() as usize).min(self.sessions.len());
        self.carry -= want as f64;
        let mut changed = Vec::with_capacity(want);
        let now = now_ms();
        let mut tries = 0;
        while changed.len() < want && tries < self.sessions.len() {
            tries += 1;
            let j = self.next_change % self.sessions.len();
            self.next_change += 1;
            let s = &mut self.sessions[j];
            if s.dead {
                continue;
            }
            s.screen += 1;
            s.cpu_ms += 120;
            let mut o = observation(s);
            o.last_output_ms = now;
            changed.push(o);
        }
        if changed.is_empty() {
            return true;
        }
        let n = changed.len() as u64;
        let ok = self
            .send(msg(pb::agent_message::Msg::Report(pb::Report {
                full_snapshot: false,
                sessions: changed,
                gone: Vec::new(),
                sent_at_ms: now,
            })))
            .await;
        self.stats
            .counters
            .observations
            .fetch_add(n, Ordering::Relaxed);
        self.stats.counters.reports.fetch_add(1, Ordering::Relaxed);
        ok
    }

    async fn control(&mut self, c: Ctl) -> bool {
        match c {
            Ctl::Rate(r) => {
                self.rate = r;
                true
            }
            Ctl::Silent(true) => {
                self.silent = true;
                true
            }
            Ctl::Silent(false) => {
                self.silent = false;
                for m in std::mem::take(&mut self.held) {
                    if self.tx.send(m).await.is_err() {
                        return false;
                    }
                }
                true
            }
            Ctl::Fault { kind, tag, done } => self.fault(kind, tag, done).await,
        }
    }

    async fn fault(
        &mut self,
        kind: FaultKind,
        tag: &'static str,
        done: Option<oneshot::Sender<()>>,
    ) -> bool {
        let count = self.sessions.len();
        let Some(j) = (0..count)
            .map(|k| (self.next_fault + k) % count)
            .find(|&j| !self.sessions[j].dead)
        else {
            // Every session is already dead: nothing to kill; release a waiting barrier.
            if let Some(d) = done {
                let _ = d.send(());
            }
            return true;
        };
        self.next_fault = j + 1;
        let s = &mut self.sessions[j];
        s.dead = true;
        let m = match kind {
            FaultKind::AgentExited => pb::agent_message::Msg::Event(pb::Event {
                kind: pb::EventKind::AgentExited as i32,
                tmux_socket: SOCKET.to_owned(),
                session_name: s.name.clone(),
                process: Some(pb::Incarnation {
                    pid: s.pid,
                    start_time: s.start_time,
                }),
                at_ms: now_ms(),
                detail: format!("agent process exited (pid {})", s.pid),
                ..Default::default()
            }),
            FaultKind::PaneDead => {
                let mut o = observation(s);
                o.pane_dead = true;
                o.exit_status = 137;
                o.agent = None;
                o.agent_name.clear();
                pb::agent_message::Msg::Report(pb::Report {
                    full_snapshot: false,
                    sessions: vec![o],
                    gone: Vec::new(),
                    sent_at_ms: now_ms(),
                })
            }
        };
        let name = s.name.clone();
        self.stats.counters.faults.fetch_add(1, Ordering::Relaxed);
        self.pending.insert(
            name,
            Pending {
                at: Instant::now(),
                at_ms: now_ms(),
                tag,
                done,
            },
        );
        self.send(msg(m)).await
    }

    /// A message from the controller: answer commands; a Restart of a killed session ends that
    /// fault's latency and brings the session back with a new agent.
    async fn controller(&mut self, m: pb::ControllerMessage) -> bool {
        let Some(pb::controller_message::Msg::Command(cmd)) = m.msg else {
            return true;
        };
        let arrived = Instant::now();
        let is_restart = matches!(cmd.action, Some(pb::command::Action::Restart(_)));
        let mut back = None;
        if is_restart && let Some(p) = self.pending.remove(&cmd.session_name) {
            self.stats.record(p.tag, arrived - p.at);
            // Barriers kill every node at once: not the single-fault latency looked for.
            if p.done.is_none() {
                self.stats.slow(Slow {
                    took: arrived - p.at,
                    tag: p.tag,
                    node: self.id.clone(),
                    session: cmd.session_name.clone(),
                    sent_ms: p.at_ms,
                    arrived_ms: now_ms(),
                });
            }
            if let Some(d) = p.done {
                let _ = d.send(());
            }
            if let Some(s) = self
                .sessions
                .iter_mut()
                .find(|s| s.name == cmd.session_name)
            {
                s.dead = false;
                s.pid += 20;
                s.start_time += 1000;
                s.screen += 1;
                back = Some(observation(s));
            }
        }
        let counter = if is_restart {
            &self.stats.counters.restarts
        } else {
            &self.stats.counters.other_commands
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let result = msg(pb::agent_message::Msg::Result(pb::CommandResult {
            command_id: cmd.command_id,
            status: pb::CommandStatus::Ok as i32,
            message: String::new(),
            output: String::new(),
            ..Default::default()
        }));
        if !self.send(result).await {
            return false;
        }
        match back {
            Some(o) => {
                self.send(msg(pb::agent_message::Msg::Report(pb::Report {
                    full_snapshot: false,
                    sessions: vec![o],
                    gone: Vec::new(),
                    sent_at_ms: now_ms(),
                })))
                .await
            }
            None => true,
        }
    }
}

fn msg(m: pb::agent_message::Msg) -> pb::AgentMessage {
    pb::AgentMessage { msg: Some(m) }
}

/// What a node agent reports for a busy coding agent: thinking (so never idle), with a
/// restart label (so a death is restarted under `restart_on_death = "labelled"`).
fn observation(s: &Session) -> pb::SessionObservation {
    pb::SessionObservation {
        tmux_socket: SOCKET.to_owned(),
        session_name: s.name.clone(),
        session_id: format!("${}", s.pid % 1000),
        pane_id: format!("%{}", s.pid % 1000),
        pane_pid: s.pid,
        pane_dead: false,
        agent: Some(pb::Incarnation {
            pid: s.pid,
            start_time: s.start_time,
        }),
        agent_name: "claude".to_owned(),
        agent_cpu_ms: s.cpu_ms,
        screen_hash: format!(
            "{:016x}",
            s.screen.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ s.pid as u64
        ),
        condition: pb::Condition::Thinking as i32,
        rate_limit_reset_at: 0,
        last_output_ms: now_ms(),
        attached_clients: 0,
        start_command: "claude".to_owned(),
        cwd: format!("/home/dev/work/{}", s.name),
        labels: [
            ("profile".to_owned(), "claude".to_owned()),
            ("restart".to_owned(), "claude --continue".to_owned()),
        ]
        .into_iter()
        .collect(),
        profile: "claude".to_owned(),
        exit_status: -1,
        ..Default::default()
    }
}

// === The standalone load generator (`argus-loadgen`) ===

/// One run of `argus-loadgen` against a controller that is already running.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub fleet: FleetConfig,
    /// Changed-session observations per node per second.
    pub rate: f64,
    /// Scripted session deaths per second across the fleet.
    pub faults_per_second: f64,
    /// How long the load runs.
    pub duration: Duration,
}

/// Runs the simulated fleet against a running controller and prints what it measured.
pub async fn run(cfg: RunConfig) -> anyhow::Result<()> {
    let sessions = cfg.fleet.nodes * cfg.fleet.sessions;
    let fleet = SimFleet::start(cfg.fleet.clone()).await?;
    println!(
        "attached {} nodes x {} sessions in {:.1} s",
        cfg.fleet.nodes,
        cfg.fleet.sessions,
        fleet.attach_time.as_secs_f64()
    );
    let synced = fleet
        .barrier(0..cfg.fleet.nodes, "attach", Duration::from_secs(300))
        .await?;
    println!(
        "controller applied every snapshot {:.1} s later",
        synced.as_secs_f64()
    );
    fleet.set_rate(cfg.rate).await;
    let c0 = fleet.stats.counters.read();
    let start = Instant::now();
    fleet
        .fault_storm(
            cfg.faults_per_second,
            cfg.duration,
            &[],
            ("event", "pane_dead"),
        )
        .await;
    let sent = fleet.stats.counters.read() - c0;
    fleet.set_rate(0.0).await;
    let drain = fleet
        .barrier(0..cfg.fleet.nodes, "drain", Duration::from_secs(300))
        .await?;
    let elapsed = start.elapsed();
    println!(
        "{} sessions: {} observations in {:.1} s + {:.1} s drain = {} observations/s accepted",
        thousands(sessions as u64),
        thousands(sent.observations),
        cfg.duration.as_secs_f64(),
        drain.as_secs_f64(),
        thousands((sent.observations as f64 / elapsed.as_secs_f64()) as u64)
    );
    for tag in ["event", "pane_dead", "drain"] {
        let l = fleet.stats.latency(tag);
        println!(
            "fault -> Restart ({tag}): n={} p50/p99/max {}",
            l.count,
            l.triple()
        );
    }
    let errors = fleet.stats.errors();
    if !errors.is_empty() {
        println!("stream errors: {errors:?}");
    }
    fleet.stop(Duration::from_secs(5)).await;
    Ok(())
}
