//! Controller replicas on one PostgreSQL database behind the real haproxy
//! (`deploy/haproxy/haproxy.cfg`, run as a child process with a private config environment): a
//! node agent on a private tmux server dials haproxy; the replica that owns the node is
//! SIGKILLed again and again; the node reattaches to another replica each time, and nothing is
//! killed or restarted because of it. Commands given to a replica that does not own the node are
//! forwarded to the owner. Skipped loudly when PostgreSQL or haproxy is not installed
//! (`bash tests/run.sh` installs both).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use argus_proto::v1 as pb;
use argus_tests::cluster::{fake_agent, sref, wait_event};
use argus_tests::eventually;
use argus_tests::free_port;
use argus_tests::postgres::{PgServer, skip_notice};
use argus_tests::process::Proc;
use argus_tests::spec::admin;
use argus_tests::spec::{Controller, ControllerSpec, NodeAgentSpec, Pki, admin_tls};
use argus_tests::tmux::TestTmux;

const WAIT: Duration = Duration::from_secs(20);
/// Time given to the repeated failovers, so that the whole test stays near a minute.
const KILL_BUDGET: Duration = Duration::from_secs(30);
/// No policy nudge during the test: every nudge is the test's own.
const POLICY: &str = "nudge_dwell = \"1h\"\n";
const RUST_LOG: &str = "info,argus_controller=debug";

/// The haproxy binary, if installed.
fn haproxy() -> Option<PathBuf> {
    [
        "/usr/sbin/haproxy",
        "/usr/bin/haproxy",
        "/usr/local/sbin/haproxy",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// A PostgreSQL server of this test's own; `None` (after a loud notice) when PostgreSQL is not
/// installed.
async fn postgres(test: &str) -> anyhow::Result<Option<PgServer>> {
    let pg = tokio::task::spawn_blocking(PgServer::start)
        .await?
        .map_err(anyhow::Error::msg)?;
    if pg.is_none() {
        skip_notice(test);
    }
    Ok(pg)
}

/// [`postgres`], and haproxy installed; `None` (after a loud notice) when either is missing.
async fn postgres_and_haproxy(test: &str) -> anyhow::Result<Option<PgServer>> {
    if haproxy().is_none() {
        eprintln!(
            "\n*** SKIPPED {test}: haproxy is not installed (`bash tests/run.sh` installs it) ***\n"
        );
        return Ok(None);
    }
    postgres(test).await
}

/// One replica: its spec (fixed ports, so that a restart listens where haproxy checks), its run
/// directory and, while it runs, its process.
struct Replica {
    spec: ControllerSpec,
    dir: PathBuf,
    running: Option<Controller>,
}

impl Replica {
    /// The address it advertises (the controller's default: `https://localhost:PORT` with TLS).
    fn advertised(&self) -> String {
        if self.spec.config.insecure {
            format!("http://{}", self.spec.config.listen)
        } else {
            format!("https://localhost:{}", self.spec.config.listen.port())
        }
    }

    async fn start(&mut self) -> anyhow::Result<()> {
        self.running = Some(self.spec.start(&self.dir).await?);
        Ok(())
    }
}

/// The test's processes: PostgreSQL, the replicas, haproxy and the node agent.
struct Cluster {
    pg: PgServer,
    db: String,
    replicas: Vec<Replica>,
    lb: Option<Proc>,
    lb_port: u16,
    /// The replicas serve mutual TLS, and haproxy passes it through.
    tls: bool,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start(pg: PgServer, n: usize) -> anyhow::Result<Self> {
        Self::start_with(pg, n, None).await
    }

    /// `n` replicas, each posting incident changes to `webhook` when given.
    async fn start_with(pg: PgServer, n: usize, webhook: Option<&str>) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("argus-replicas-")
            .tempdir()?;
        Self::start_in(pg, n, webhook, None, dir).await
    }

    /// `n` replicas serving mutual TLS with `pki`'s certificates, behind haproxy passing TLS
    /// through (`deploy/haproxy/haproxy-mtls.cfg`).
    async fn start_tls(
        pg: PgServer,
        n: usize,
        pki: &Pki,
        dir: tempfile::TempDir,
    ) -> anyhow::Result<Self> {
        Self::start_in(pg, n, None, Some(pki), dir).await
    }

    async fn start_in(
        pg: PgServer,
        n: usize,
        webhook: Option<&str>,
        pki: Option<&Pki>,
        dir: tempfile::TempDir,
    ) -> anyhow::Result<Self> {
        let db = pg.create_database("replicas");
        let mut replicas = Vec::new();
        for i in 0..n {
            let mut spec = ControllerSpec::new()
                .policy(POLICY)
                .tick(Duration::from_millis(100))
                .env("RUST_LOG", RUST_LOG);
            spec.config.db = db.clone();
            if let Some(url) = webhook {
                spec = spec.webhook(url);
            }
            if let Some(pki) = pki {
                spec = spec.tls(pki);
            }
            let rdir = dir.path().join(format!("r{i}"));
            std::fs::create_dir_all(&rdir)?;
            replicas.push(Replica {
                spec,
                dir: rdir,
                running: None,
            });
        }
        for r in &mut replicas {
            r.start().await?;
        }
        let lb_port = free_port();
        let mut c = Self {
            pg,
            db,
            replicas,
            lb: None,
            lb_port,
            tls: pki.is_some(),
            _dir: dir,
        };
        let lb = std::sync::Mutex::new(c.start_haproxy()?);
        let addr = format!("127.0.0.1:{lb_port}");
        eventually("haproxy listening", WAIT, || async {
            lb.lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .check_alive()?;
            Ok(tokio::net::TcpStream::connect(&addr).await.ok().map(drop))
        })
        .await?;
        c.lb = Some(lb.into_inner().map_err(|_| anyhow::anyhow!("poisoned"))?);
        Ok(c)
    }

    /// haproxy with the deploy file, the addresses given in its environment.
    fn start_haproxy(&self) -> anyhow::Result<Proc> {
        let bin = haproxy().context("haproxy is not installed")?;
        let file = if self.tls {
            "haproxy-mtls.cfg"
        } else {
            "haproxy.cfg"
        };
        let cfg = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/haproxy")
            .join(file);
        let mut env = vec![(
            "ARGUS_LB_BIND".to_owned(),
            format!("127.0.0.1:{}", self.lb_port),
        )];
        for (i, r) in self.replicas.iter().enumerate() {
            let http = r.spec.config.http.context("replica without a side port")?;
            env.push((
                format!("ARGUS_R{}", i + 1),
                r.spec.config.listen.to_string(),
            ));
            env.push((format!("ARGUS_R{}_HTTP", i + 1), http.port().to_string()));
        }
        // The config names three servers: fewer replicas leave the last ones on a closed port
        // (always down).
        for i in self.replicas.len()..3 {
            env.push((
                format!("ARGUS_R{}", i + 1),
                format!("127.0.0.1:{}", free_port()),
            ));
            env.push((format!("ARGUS_R{}_HTTP", i + 1), free_port().to_string()));
        }
        let log = self._dir.path().join("haproxy.log");
        let args = vec!["-f".to_owned(), cfg.display().to_string(), "-db".to_owned()];
        Proc::start("haproxy", &bin, &args, &env, log)
    }

    fn lb_url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.lb_port)
        } else {
            format!("http://127.0.0.1:{}", self.lb_port)
        }
    }

    fn sql(&self, sql: &str) -> anyhow::Result<String> {
        self.pg
            .query(&self.db, sql)
            .map_err(|e| anyhow::anyhow!("{sql}: {e}"))
    }

    /// The replica that owns `node` as stored, and the epoch it holds it at.
    fn owner(&self, node: &str) -> anyhow::Result<Option<(usize, u64)>> {
        let row = self.sql(&format!(
            "SELECT owner_addr, epoch FROM nodes WHERE node_id = '{node}'"
        ))?;
        let Some((addr, epoch)) = row.trim().split_once('|') else {
            return Ok(None);
        };
        let i = self.replicas.iter().position(|r| r.advertised() == addr);
        Ok(i.map(|i| (i, epoch.parse().unwrap_or(0))))
    }

    fn admin_of(&self, i: usize) -> String {
        self.replicas[i].advertised()
    }

    /// The running replica that holds the leader lease, and its fencing token.
    fn leader(&self) -> anyhow::Result<Option<(usize, u64)>> {
        let row = self.sql("SELECT holder, token FROM leases WHERE name = 'leader'")?;
        let Some((holder, token)) = row.trim().split_once('|') else {
            return Ok(None);
        };
        let i = self.replicas.iter().position(|r| {
            r.running
                .as_ref()
                .is_some_and(|p| holder.starts_with(&format!("ctl-{}-", p.proc.pid())))
        });
        Ok(i.map(|i| (i, token.parse().unwrap_or(0))))
    }
}

/// The session as replica `url` sees it, if it has it from the node's live reports (the agent's
/// pid is known: a session restored from the store does not have it until the node reports).
async fn observed(url: &str, node: &str, name: &str) -> anyhow::Result<Option<pb::Session>> {
    let s = admin(url)
        .await?
        .get_session(pb::GetSessionRequest {
            session: sref(node, name),
            history_limit: 1,
        })
        .await?
        .into_inner()
        .session;
    Ok(s.filter(|s| s.agent_pid > 0))
}

async fn nudge(url: &str, text: &str) -> anyhow::Result<pb::CommandResponse> {
    Ok(admin(url)
        .await?
        .nudge(pb::NudgeRequest {
            session: sref("n1", "prompt"),
            text: text.to_owned(),
        })
        .await?
        .into_inner())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_dies_and_another_replica_takes_the_node_over() -> anyhow::Result<()> {
    const TEST: &str = "replicas::the_owner_dies_and_another_replica_takes_the_node_over";
    let Some(pg) = postgres_and_haproxy(TEST).await? else {
        return Ok(());
    };
    let started = Instant::now();
    let tmux = TestTmux::new();
    // A busy agent (its state must stay `working` through every failover) and one at its
    // prompt (the nudges' target).
    tmux.session("work", &fake_agent("working"), &[("profile", "claude")])?;
    tmux.session("prompt", &fake_agent("idle"), &[("profile", "claude")])?;
    let panes = (tmux.pane_pid("work")?, tmux.pane_pid("prompt")?);
    // A second node with a busy agent of its own.
    let tmux2 = TestTmux::new();
    tmux2.session("busy", &fake_agent("working"), &[("profile", "claude")])?;
    let pane2 = tmux2.pane_pid("busy")?;
    let mut c = Cluster::start(pg, 3).await?;
    let adir = c._dir.path().join("agent");
    std::fs::create_dir_all(&adir)?;
    let _agent = NodeAgentSpec::new("n1", &c.lb_url(), tmux.socket())
        .probe_interval(Duration::from_millis(250))
        .heartbeat(Duration::from_millis(500))
        .env("RUST_LOG", "info,argus_node_agent=debug")
        .start(&adir)?;
    let _agent2 = NodeAgentSpec::new("n2", &c.lb_url(), tmux2.socket())
        .probe_interval(Duration::from_millis(250))
        .heartbeat(Duration::from_millis(500))
        .start(&adir)?;
    eventually("the second node observed by its owner", WAIT, || async {
        let Some((o, _)) = c.owner("n2")? else {
            return Ok(None);
        };
        observed(&c.admin_of(o), "n2", "busy").await
    })
    .await?;

    // The node attaches through haproxy to one replica, which owns it.
    let (owner, _) = eventually("the node owned by a replica", WAIT, || async {
        c.owner("n1")
    })
    .await?;
    eventually("the session observed by its owner", WAIT, || async {
        observed(&c.admin_of(owner), "n1", "work").await
    })
    .await?;

    // A nudge given to a replica that does not own the node reaches the pane (forwarded), and
    // the owner's events reach a watcher on that replica.
    let other = (owner + 1) % c.replicas.len();
    let mut events = admin(&c.admin_of(other))
        .await?
        .watch_events(pb::WatchEventsRequest {
            node_id: "n1".into(),
        })
        .await?
        .into_inner();
    let before = nudge(&c.admin_of(other), "before the failovers").await?;
    assert_eq!(before.status(), pb::CommandStatus::Ok, "{before:?}");
    eventually("the forwarded nudge on the screen", WAIT, || async {
        Ok(tmux
            .capture("prompt")?
            .contains("received: before the failovers")
            .then_some(()))
    })
    .await?;
    // Audited by the owner (written behind: within a moment).
    let audit = format!(
        "SELECT action, status FROM commands WHERE command_id = '{}'",
        before.command_id
    );
    eventually("the nudge audited as answered", WAIT, || async {
        Ok((c.sql(&audit)? == "nudge|COMMAND_STATUS_OK").then_some(()))
    })
    .await?;
    let owner_id = c.sql("SELECT owner FROM nodes WHERE node_id = 'n1'")?;
    let result = wait_event(&mut events, "the owner's command event", WAIT, |e| {
        e.kind == "command_result" && e.session_name == "prompt"
    })
    .await?;
    assert_eq!(
        result.replica, owner_id,
        "relayed from the owner: {result:?}"
    );
    // The fleet from a replica that does not own the node: the node, its owner, its sessions.
    let mut a = admin(&c.admin_of(other)).await?;
    let nodes = a
        .list_nodes(pb::ListNodesRequest {})
        .await?
        .into_inner()
        .nodes;
    let n1 = nodes
        .iter()
        .find(|n| n.node_id == "n1")
        .context("n1 listed")?;
    assert!(n1.connected && n1.replica.starts_with("ctl-"), "{n1:?}");
    eventually("both sessions listed by a non-owner", WAIT, || {
        let mut a = a.clone();
        async move {
            let s = a
                .list_sessions(pb::ListSessionsRequest {
                    node_id: "n1".into(),
                })
                .await?
                .into_inner()
                .sessions;
            Ok((s.len() == 2).then_some(()))
        }
    })
    .await?;

    // SIGKILL the owner of a node (n1, then n2, in turn), again and again: the node reattaches
    // through haproxy to another replica (a higher epoch, stored) and its session is observed
    // there again; the other node too when it was on the same replica.
    let mut times = Vec::new();
    let kills_from = Instant::now();
    while kills_from.elapsed() < KILL_BUDGET && times.len() < 40 {
        let (node, session) = if times.len() % 2 == 0 {
            ("n1", "work")
        } else {
            ("n2", "busy")
        };
        let (victim, epoch) = c.owner(node)?.context("the node has an owner")?;
        let killed = Instant::now();
        if let Some(mut p) = c.replicas[victim].running.take() {
            p.proc.kill();
        }
        let (next, _) = eventually("another replica owns the node", WAIT, || async {
            Ok(c.owner(node)?.filter(|(i, e)| *i != victim && *e > epoch))
        })
        .await?;
        eventually("the session observed by the new owner", WAIT, || async {
            observed(&c.admin_of(next), node, session).await
        })
        .await?;
        times.push(killed.elapsed());
        for (node, session) in [("n1", "work"), ("n2", "busy")] {
            eventually(
                "both nodes owned and observed by a live replica",
                WAIT,
                || async {
                    let Some((o, _)) = c.owner(node)?.filter(|(o, _)| *o != victim) else {
                        return Ok(None);
                    };
                    observed(&c.admin_of(o), node, session).await
                },
            )
            .await?;
        }
        // The killed replica comes back (same ports): haproxy checks it in again.
        c.replicas[victim].start().await?;
    }

    // Another replica raises the node's epoch (as a takeover does) while the owner lives: the
    // owner finds the higher epoch, lets the node go, and the node attaches again through
    // haproxy, at a still higher epoch.
    let (holder, epoch) = c.owner("n1")?.context("owner")?;
    c.sql("UPDATE nodes SET epoch = epoch + 1, owner = 'ctl-elsewhere' WHERE node_id = 'n1'")?;
    eventually("the node let go and attached again", WAIT, || async {
        Ok(c.owner("n1")?.filter(|(_, e)| *e > epoch + 1))
    })
    .await?;
    let log = c.replicas[holder]
        .running
        .as_ref()
        .map(|p| p.proc.log())
        .unwrap_or_default();
    assert!(
        log.contains("another replica owns the node now: letting it go"),
        "the owner let it go"
    );

    // The leader (the lease row's holder) dies: another replica takes the lease over with a
    // higher fencing token within 10 s, and runs the fleet-wide duty: commands a dead replica
    // left pending on a node nobody took over are closed.
    let leader = |c: &Cluster| c.leader();
    let (old, token) = eventually("a leader", WAIT, || async { leader(&c) }).await?;
    let killed = Instant::now();
    if let Some(mut p) = c.replicas[old].running.take() {
        p.proc.kill();
    }
    let (new, new_token) = eventually("another leader", WAIT, || async {
        Ok(leader(&c)?.filter(|(i, t)| *i != old && *t > token))
    })
    .await?;
    let takeover = killed.elapsed();
    assert!(
        takeover < Duration::from_secs(10),
        "leader takeover {takeover:?}"
    );
    c.replicas[old].start().await?;
    c.sql(
        "INSERT INTO nodes (node_id, epoch, owner, owner_addr) VALUES ('ghost', 1, 'ctl-dead', 'http://127.0.0.1:1');
         INSERT INTO commands (command_id, node_id, tmux_socket, session_name, epoch, action, origin, reason, issued_at_ms)
         VALUES ('orphan', 'ghost', '/s', 'w', 1, 'nudge', 'admin', 'test',
                 (extract(epoch from clock_timestamp()) * 1000)::bigint - 60000)",
    )?;
    eventually(
        "the orphaned command closed by the leader",
        WAIT,
        || async {
            let s = c.sql("SELECT status FROM commands WHERE command_id = 'orphan'")?;
            Ok((s == "COMMAND_STATUS_UNKNOWN").then_some(()))
        },
    )
    .await?;
    eprintln!(
        "leader takeover: replica {old} -> {new}, token {token} -> {new_token}, in {takeover:?}"
    );

    // An alarm scheduled through a replica that does not own the node (forwarded to the owner,
    // stored), whose owner dies before it is due: the new owner takes it over with the node and
    // delivers it.
    let (owner, _) = c.owner("n1")?.context("owner")?;
    let other = (owner + 1) % c.replicas.len();
    let alarm = admin(&c.admin_of(other))
        .await?
        .schedule_nudge(pb::ScheduleNudgeRequest {
            session: sref("n1", "prompt"),
            in_ms: 1500,
            at_ms: 0,
            note: "alarm across a failover".into(),
        })
        .await?
        .into_inner();
    if let Some(mut p) = c.replicas[owner].running.take() {
        p.proc.kill();
    }
    eventually("the alarm delivered by the new owner", WAIT, || async {
        Ok(tmux
            .capture("prompt")?
            .contains("alarm across a failover")
            .then_some(()))
    })
    .await?;
    let state = format!("SELECT state FROM alarms WHERE id = '{}'", alarm.id);
    eventually("the alarm recorded as delivered", WAIT, || async {
        Ok((c.sql(&state)? == "delivered").then_some(()))
    })
    .await?;
    c.replicas[owner].start().await?;

    // A nudge on a replica that is not the current owner still reaches the pane.
    let (owner, _) = c.owner("n1")?.context("owner")?;
    let other = (owner + 1) % c.replicas.len();
    let after = nudge(&c.admin_of(other), "after the failovers").await?;
    assert_eq!(after.status(), pb::CommandStatus::Ok, "{after:?}");
    eventually("the second forwarded nudge on the screen", WAIT, || async {
        Ok(tmux
            .capture("prompt")?
            .contains("received: after the failovers")
            .then_some(()))
    })
    .await?;

    // Nothing was killed or restarted because of the failovers: the same pane process, no kill
    // or restart in the audit, no death recorded; the audit row from before is still there.
    assert!(tmux.has_session("work") && tmux.has_session("prompt") && tmux2.has_session("busy"));
    assert_eq!(
        (tmux.pane_pid("work")?, tmux.pane_pid("prompt")?),
        panes,
        "no agent was restarted"
    );
    assert_eq!(
        tmux2.pane_pid("busy")?,
        pane2,
        "no agent of n2 was restarted"
    );
    let destructive = c.sql(
        "SELECT count(*) FROM commands WHERE action NOT IN ('nudge', 'capture', 'checkpoint')",
    )?;
    assert_eq!(destructive, "0", "no kill, restart or interrupt");
    let deaths = c.sql(
        "SELECT count(*) FROM transitions WHERE to_state = 'dead' \
         OR (session_name IN ('work', 'busy') AND to_state <> 'working')",
    )?;
    assert_eq!(
        deaths, "0",
        "no death recorded, the busy agent always working"
    );
    // Both nudges audited, and every command of the node answered OK: no replica closed one as
    // unknown (a restarted replica adopts no other replica's commands). Written behind, so
    // checked until they settle.
    let audit = format!(
        "SELECT count(*) FROM commands WHERE command_id IN ('{}', '{}')",
        before.command_id, after.command_id
    );
    let settled = eventually("the audit settled", WAIT, || async {
        let wrong = c.sql(
            "SELECT count(*) FROM commands WHERE node_id = 'n1' \
             AND status <> 'COMMAND_STATUS_OK'",
        )?;
        Ok((c.sql(&audit)? == "2" && wrong == "0").then_some(()))
    })
    .await;
    let commands = c.sql("SELECT command_id, action, status FROM commands WHERE node_id = 'n1'")?;
    settled.with_context(|| format!("the node's commands:\n{commands}"))?;
    let host_down = c.sql("SELECT count(*) FROM incidents WHERE kind = 'host_silent'")?;

    let mut sorted = times.clone();
    sorted.sort();
    eprintln!(
        "failover (SIGKILL of the owner -> node reattached to another replica and its session \
         observed there), {} kills: p50 {:?}, p99 {:?}, min {:?}, max {:?}; host_silent \
         incidents: {host_down}; test time {:?}",
        sorted.len(),
        percentile(&sorted, 0.5),
        percentile(&sorted, 0.99),
        sorted[0],
        sorted[sorted.len() - 1],
        started.elapsed()
    );
    assert!(sorted.len() >= 3, "at least three failovers in the budget");
    assert!(
        percentile(&sorted, 0.5) < Duration::from_secs(10),
        "failover p50 {:?}",
        percentile(&sorted, 0.5)
    );
    Ok(())
}

/// Webhook posts of one incident's `event` (`incident_opened`, `incident_closed`, ...).
fn posts(received: &argus_tests::webhook::Received, id: &str, event: &str) -> usize {
    received
        .all()
        .iter()
        .filter(|b| b["event"] == event && b["incident"]["id"] == id)
        .count()
}

/// The leader posts incident changes, once each: a node agent dies, its owner opens a host
/// incident, the leader posts it; the leader is SIGKILLed, another replica takes the lease over
/// within 10 s, the incident is still open and is not posted again; the node comes back, and
/// the new leader posts the close, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_dies_and_no_webhook_is_sent_twice() -> anyhow::Result<()> {
    const TEST: &str = "replicas::the_leader_dies_and_no_webhook_is_sent_twice";
    let Some(pg) = postgres_and_haproxy(TEST).await? else {
        return Ok(());
    };
    let (hook, received) = argus_tests::webhook::start().await?;
    let tmux = TestTmux::new();
    tmux.session("work", &fake_agent("working"), &[("profile", "claude")])?;
    let mut c = Cluster::start_with(pg, 3, Some(&hook)).await?;
    let adir = c._dir.path().join("agent");
    std::fs::create_dir_all(&adir)?;
    let agent = NodeAgentSpec::new("n1", &c.lb_url(), tmux.socket())
        .probe_interval(Duration::from_millis(250))
        .heartbeat(Duration::from_millis(500))
        .env("RUST_LOG", "info,argus_node_agent=debug");
    let mut running = agent.start(&adir)?;
    let (owner, _) = eventually("the node owned by a replica", WAIT, || async {
        c.owner("n1")
    })
    .await?;
    eventually("the session observed by its owner", WAIT, || async {
        observed(&c.admin_of(owner), "n1", "work").await
    })
    .await?;

    // Each replica takes a third of the fleet destructive budget.
    for r in &c.replicas {
        eventually("the budget shared by three", WAIT, || async {
            let log = r.running.as_ref().map(|p| p.proc.log()).unwrap_or_default();
            Ok(log
                .contains("live replicas changed: this replica takes 1/3")
                .then_some(()))
        })
        .await?;
    }
    // The node agent dies: its owner finds the node suspect (6 s of silence) and opens a host
    // incident; the leader posts it.
    running.kill();
    let opened = eventually(
        "the host incident posted",
        Duration::from_secs(40),
        || async {
            Ok(received
                .all()
                .iter()
                .find(|b| b["event"] == "incident_opened" && b["incident"]["scope"] == "n1")
                .and_then(|b| b["incident"]["id"].as_str().map(str::to_owned)))
        },
    )
    .await?;
    let (old, token) = eventually("a leader", WAIT, || async { c.leader() }).await?;
    assert_eq!(posts(&received, &opened, "incident_opened"), 1);
    // An incident open for 9 h, past two `notify_repeat` periods (4 h): the leader posts its
    // opening and one reminder, the current one (`reminder-2`), not one per replica.
    let nine_hours_ago = argus_shared::time::now_ms() - 9 * 3600 * 1000;
    c.sql(&format!(
        "INSERT INTO incidents (id, kind, scope, opened_ms, summary) VALUES
           ('inc-old', 'store_failing', 'old', {nine_hours_ago}, 'open for hours')"
    ))?;
    eventually("the reminder posted", WAIT, || async {
        Ok((posts(&received, "inc-old", "incident_reminder") == 1).then_some(()))
    })
    .await?;
    let reminders = "SELECT change, token FROM notified WHERE incident_id = 'inc-old' \
                     AND change LIKE 'reminder-%'";
    assert_eq!(c.sql(reminders)?, format!("reminder-2|{token}"));

    // SIGKILL the leader: another replica takes the lease over, with a higher token.
    let killed = Instant::now();
    if let Some(mut p) = c.replicas[old].running.take() {
        p.proc.kill();
    }
    let (new, new_token) = eventually("another leader", WAIT, || async {
        Ok(c.leader()?.filter(|(i, t)| *i != old && *t > token))
    })
    .await?;
    let takeover = killed.elapsed();
    assert!(
        takeover < Duration::from_secs(10),
        "leader takeover {takeover:?}"
    );
    // Still open in the store, and what the new leader's outbox finds there is already marked.
    let open = format!("SELECT closed_ms FROM incidents WHERE id = '{opened}'");
    assert_eq!(c.sql(&open)?, "0", "the incident is still open");
    let marks = format!("SELECT change, sent, token FROM notified WHERE incident_id = '{opened}'");
    assert_eq!(
        c.sql(&marks)?,
        format!("opened|1|{token}"),
        "marked by the old leader"
    );

    // The new leader took over the open incidents' Alertmanager re-sends (posting nothing):
    // the host incident's and the old one's.
    let log = || {
        c.replicas[new]
            .running
            .as_ref()
            .map(|p| p.proc.log())
            .unwrap_or_default()
    };
    eventually("the open incident's alert taken over", WAIT, || async {
        Ok(log()
            .contains("open incidents' alerts taken over by the new leader incidents=2")
            .then_some(()))
    })
    .await?;
    // The node comes back: the incident closes, and the new leader posts the close, once. By
    // then its outbox has run many rounds: the opening was not posted again.
    let _running = agent.start(&adir)?;
    eventually(
        "the close posted by the new leader",
        Duration::from_secs(30),
        || async { Ok((posts(&received, &opened, "incident_closed") > 0).then_some(())) },
    )
    .await?;
    let closed_mark =
        format!("SELECT token FROM notified WHERE incident_id = '{opened}' AND change = 'closed'");
    assert_eq!(
        c.sql(&closed_mark)?,
        new_token.to_string(),
        "closed by the new leader"
    );
    // The new leader's outbox read the incident in the pass that posted the close (and would
    // have queued a second opening before it): none came.
    assert_eq!(
        posts(&received, &opened, "incident_opened"),
        1,
        "opened posted once"
    );
    assert_eq!(
        posts(&received, &opened, "incident_closed"),
        1,
        "closed posted once"
    );
    // The new leader's rounds found the reminder already claimed: not posted again.
    assert_eq!(posts(&received, "inc-old", "incident_reminder"), 1);
    assert_eq!(posts(&received, "inc-old", "incident_opened"), 1);
    c.sql("UPDATE incidents SET closed_ms = 1 WHERE id = 'inc-old'")?;
    let hits = received
        .all()
        .iter()
        .filter(|b| b["incident"]["id"] == opened.as_str())
        .count();

    // Two replicas each open an incident of one kind and scope (each finds its own store
    // writes failing; recorded here as they would record them): posted once, under the first
    // one's id, and closed once, when the last of them closes. (Provider incidents are the
    // leader's alone: see `a_provider_limit_over_two_replicas_is_one_incident`.)
    c.sql(
        "INSERT INTO incidents (id, kind, scope, opened_ms, summary) VALUES
           ('inc-a', 'store_failing', 'controller', 1000, 'failing on replica a'),
           ('inc-b', 'store_failing', 'controller', 2000, 'failing on replica b')",
    )?;
    eventually("the group posted", WAIT, || async {
        Ok((posts(&received, "inc-a", "incident_opened") == 1).then_some(()))
    })
    .await?;
    let folded = "SELECT sent, sent_as FROM notified WHERE incident_id = 'inc-b'";
    eventually("the second one folded in", WAIT, || async {
        Ok((c.sql(folded)? == "0|inc-a").then_some(()))
    })
    .await?;
    c.sql("UPDATE incidents SET closed_ms = 3000 WHERE id = 'inc-a'")?;
    let held = "SELECT sent FROM notified WHERE incident_id = 'inc-a' AND change = 'closed'";
    eventually("the first close held back", WAIT, || async {
        Ok((c.sql(held)? == "0").then_some(()))
    })
    .await?;
    assert_eq!(posts(&received, "inc-a", "incident_closed"), 0);
    c.sql("UPDATE incidents SET closed_ms = 4000 WHERE id = 'inc-b'")?;
    eventually("the group's close posted", WAIT, || async {
        Ok((posts(&received, "inc-a", "incident_closed") == 1).then_some(()))
    })
    .await?;
    assert_eq!(posts(&received, "inc-b", "incident_opened"), 0);
    assert_eq!(posts(&received, "inc-a", "incident_opened"), 1);
    eprintln!(
        "leader takeover with an open incident: replica {old} -> {new}, token {token} -> \
         {new_token}, in {takeover:?}; webhook posts of incident {opened}: {hits} (opened and \
         closed, once each)"
    );
    Ok(())
}

/// Every incident replica `url` lists, closed ones included.
async fn incidents(url: &str) -> anyhow::Result<Vec<pb::Incident>> {
    Ok(admin(url)
        .await?
        .list_incidents(pb::ListIncidentsRequest {
            include_closed: true,
            limit: 100,
        })
        .await?
        .into_inner()
        .incidents)
}

/// Provider incidents are the leader's, over the whole fleet: two node agents, each attached to
/// another replica, each with one session rate limited on one provider scope (below
/// `provider_incident_sessions`, 2, on either replica; at it together). Exactly one incident is
/// stored, every replica lists it, its webhook is posted once; it closes, posted once, when the
/// limits clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_limit_over_two_replicas_is_one_incident() -> anyhow::Result<()> {
    const TEST: &str = "replicas::a_provider_limit_over_two_replicas_is_one_incident";
    let Some(pg) = postgres_and_haproxy(TEST).await? else {
        return Ok(());
    };
    let (hook, received) = argus_tests::webhook::start().await?;
    let labels = [
        ("profile", "claude"),
        ("provider", "anthropic"),
        ("account", "team"),
    ];
    let (t1, t2) = (TestTmux::new(), TestTmux::new());
    t1.session("a", &fake_agent("ratelimit 600"), &labels)?;
    t2.session("b", &fake_agent("ratelimit 900"), &labels)?;
    let c = Cluster::start_with(pg, 2, Some(&hook)).await?;
    // Each node agent dials its replica directly (not through haproxy): each replica owns one.
    let mut agents = Vec::new();
    for (i, (node, tmux)) in [("n1", &t1), ("n2", &t2)].into_iter().enumerate() {
        let dir = c._dir.path().join(node);
        std::fs::create_dir_all(&dir)?;
        let agent = NodeAgentSpec::new(node, &c.admin_of(i), tmux.socket())
            .probe_interval(Duration::from_millis(250))
            .heartbeat(Duration::from_millis(500))
            .env("RUST_LOG", "info,argus_node_agent=debug");
        agents.push(agent.start(&dir)?);
    }
    for (i, node) in [(0, "n1"), (1, "n2")] {
        eventually("each node owned by its replica", WAIT, || async {
            Ok(c.owner(node)?.filter(|(owner, _)| *owner == i))
        })
        .await?;
    }
    // Alone, neither replica has enough limited sessions for an incident; the leader counts
    // both replicas' recorded episodes.
    let opened = eventually("the provider incident posted", WAIT, || async {
        Ok(received
            .all()
            .iter()
            .find(|b| b["event"] == "incident_opened" && b["incident"]["kind"] == "provider_limit")
            .and_then(|b| b["incident"]["id"].as_str().map(str::to_owned)))
    })
    .await?;
    let episodes = "SELECT count(*) FROM rate_limits WHERE scope = 'anthropic/team'";
    assert_eq!(c.sql(episodes)?.trim(), "2", "one episode per replica");
    for i in 0..c.replicas.len() {
        let listed: Vec<pb::Incident> = incidents(&c.admin_of(i))
            .await?
            .into_iter()
            .filter(|x| x.kind == "provider_limit")
            .collect();
        assert_eq!(listed.len(), 1, "replica {i}: {listed:?}");
        let x = &listed[0];
        assert_eq!(
            (x.id.as_str(), x.scope.as_str(), x.sessions, x.closed_ms),
            (opened.as_str(), "anthropic/team", 2, 0),
            "replica {i}: {x:?}"
        );
        assert!(
            x.until_ms >= argus_shared::time::now_ms() + 800_000,
            "the fleet's cooldown is the latest session's: {x:?}"
        );
    }
    // Any replica acknowledges it (none holds it in its correlator).
    for i in 0..c.replicas.len() {
        let acked = admin(&c.admin_of(i))
            .await?
            .ack_incident(pb::AckIncidentRequest {
                id: opened.clone(),
                by: format!("ops{i}"),
            })
            .await?
            .into_inner();
        assert_eq!(
            (acked.id.as_str(), acked.acked_by.as_str()),
            (opened.as_str(), &*format!("ops{i}"))
        );
    }
    // The limits clear: each agent is replaced by one at its prompt. The incident closes.
    for (tmux, name) in [(&t1, "a"), (&t2, "b")] {
        tmux.run(&[
            "respawn-pane",
            "-k",
            "-t",
            &format!("={name}:"),
            &fake_agent("idle"),
        ])?;
    }
    eventually("the close posted", WAIT, || async {
        Ok((posts(&received, &opened, "incident_closed") > 0).then_some(()))
    })
    .await?;
    assert_eq!(c.sql(episodes)?.trim(), "0", "both episodes ended");
    let stored =
        c.sql("SELECT id, closed_ms > 0, acked_by FROM incidents WHERE kind = 'provider_limit'")?;
    assert_eq!(stored.trim(), format!("{opened}|t|ops1"), "one row, closed");
    assert_eq!(posts(&received, &opened, "incident_opened"), 1);
    assert_eq!(posts(&received, &opened, "incident_closed"), 1);
    let provider_posts = received
        .all()
        .iter()
        .filter(|b| b["incident"]["kind"] == "provider_limit")
        .count();
    assert_eq!(provider_posts, 2, "{:?}", received.all());
    drop(agents);
    Ok(())
}

/// `/readyz` and gRPC health of the replica listening on `url` (side port `http`).
async fn readiness(url: &str, http: std::net::SocketAddr) -> anyhow::Result<(u16, bool)> {
    let status = readyz(http).await?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        tonic::transport::Channel::from_shared(url.to_owned())?
            .connect()
            .await?,
    );
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await?
        .into_inner()
        .status();
    Ok((
        status,
        serving == tonic_health::pb::health_check_response::ServingStatus::Serving,
    ))
}

/// One replica cut off from the database (its connections go through a loopback proxy that
/// black-holes them for 20 s, as a partition does: nothing closes, nothing arrives): that
/// replica turns not ready and acts no more (an agent that dies on its node is not restarted
/// during the partition), the other two stay ready; when the link returns, nothing recorded
/// before is lost, the death seen during the partition is recorded, and supervision resumes
/// (the restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_the_database_stops_acting_and_loses_nothing() -> anyhow::Result<()>
{
    const TEST: &str =
        "replicas::a_replica_cut_off_from_the_database_stops_acting_and_loses_nothing";
    const PARTITION: Duration = Duration::from_secs(20);
    let Some(pg) = postgres_and_haproxy(TEST).await? else {
        return Ok(());
    };
    let proxy =
        argus_tests::bench::proxy::Proxy::start(format!("127.0.0.1:{}", pg.port()).parse()?)
            .await?;
    let tmux = TestTmux::new();
    tmux.session(
        "crashy",
        &fake_agent("idle"),
        &[("profile", "claude"), ("restart", &fake_agent("idle"))],
    )?;
    tmux.session("work", &fake_agent("working"), &[("profile", "claude")])?;
    let mut c = Cluster::start(pg, 3).await?;
    // Replica 0 reaches the database through the proxy from now on.
    if let Some(mut p) = c.replicas[0].running.take() {
        p.proc.kill();
    }
    let direct = format!(":{}/", c.pg.port());
    c.replicas[0].spec.config.db = c.db.replace(&direct, &format!(":{}/", proxy.addr().port()));
    c.replicas[0].start().await?;
    // The node dials replica 0 itself, which owns it.
    let adir = c._dir.path().join("agent");
    std::fs::create_dir_all(&adir)?;
    let _agent = NodeAgentSpec::new("n1", &c.admin_of(0), tmux.socket())
        .probe_interval(Duration::from_millis(250))
        .heartbeat(Duration::from_millis(500))
        .env("RUST_LOG", "info,argus_node_agent=debug")
        .start(&adir)?;
    eventually("the node owned by replica 0", WAIT, || async {
        Ok(c.owner("n1")?.filter(|(i, _)| *i == 0))
    })
    .await?;
    let before = eventually("the agent observed", WAIT, || async {
        observed(&c.admin_of(0), "n1", "crashy").await
    })
    .await?;
    // Recorded before the partition: an answered command.
    let nudged = admin(&c.admin_of(0))
        .await?
        .nudge(pb::NudgeRequest {
            session: sref("n1", "work"),
            text: "before the partition".into(),
        })
        .await?
        .into_inner();
    assert_eq!(nudged.status(), pb::CommandStatus::Ok, "{nudged:?}");
    let audit = format!(
        "SELECT status FROM commands WHERE command_id = '{}'",
        nudged.command_id
    );
    eventually("the nudge audited", WAIT, || async {
        Ok((c.sql(&audit)? == "COMMAND_STATUS_OK").then_some(()))
    })
    .await?;
    let addrs: Vec<(String, std::net::SocketAddr)> = c
        .replicas
        .iter()
        .map(|r| Ok((r.advertised(), r.spec.config.http.context("side port")?)))
        .collect::<anyhow::Result<_>>()?;
    for (url, http) in &addrs {
        eventually("every replica ready", WAIT, || async {
            Ok((readiness(url, *http).await? == (200, true)).then_some(()))
        })
        .await?;
    }

    // Replica 0's own events (in memory: they need no database).
    let mut events = admin(&c.admin_of(0))
        .await?
        .watch_events(pb::WatchEventsRequest {
            node_id: "n1".into(),
        })
        .await?
        .into_inner();
    // The partition.
    proxy.black_hole();
    let cut = Instant::now();
    eventually("replica 0 not ready", WAIT, || async {
        Ok((readiness(&addrs[0].0, addrs[0].1).await? == (503, false)).then_some(()))
    })
    .await?;
    let not_ready_in = cut.elapsed();
    // The agent on its node dies: the death is seen (the node's stream to replica 0 lives),
    // but nothing is restarted while replica 0 cannot reach the database.
    let pid = rustix::process::Pid::from_raw(before.agent_pid as i32).context("pid")?;
    rustix::process::kill_process(pid, rustix::process::Signal::KILL)?;
    wait_event(&mut events, "the death seen by replica 0", WAIT, |e| {
        e.session_name == "crashy" && e.kind == "transition" && e.message.contains("-> dead")
    })
    .await?;
    // For the rest of the partition: replica 0 stays not ready and restarts nothing, the other
    // two stay ready.
    while cut.elapsed() < PARTITION {
        for (url, http) in &addrs[1..] {
            anyhow::ensure!(
                readiness(url, *http).await? == (200, true),
                "replica {url} not ready while only replica 0 is cut off"
            );
        }
        anyhow::ensure!(
            readiness(&addrs[0].0, addrs[0].1).await? == (503, false),
            "replica 0 ready during the partition"
        );
        anyhow::ensure!(
            !tmux.has_session("crashy"),
            "restarted during the partition"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let healed = argus_shared::time::now_ms();
    proxy.restore();
    eventually("replica 0 ready again", WAIT, || async {
        Ok((readiness(&addrs[0].0, addrs[0].1).await? == (200, true)).then_some(()))
    })
    .await?;
    let ready_in = Duration::from_millis((argus_shared::time::now_ms() - healed) as u64);
    // Supervision resumes: the dead agent is restarted, after the partition.
    let after = eventually("the agent restarted", WAIT, || async {
        Ok(observed(&c.admin_of(0), "n1", "crashy")
            .await?
            .filter(|s| s.agent_pid != before.agent_pid))
    })
    .await?;
    assert_ne!(after.agent_pid, before.agent_pid);
    let restart = "SELECT issued_at_ms FROM commands WHERE action = 'restart' AND node_id = 'n1'";
    let issued: i64 = eventually("the restart audited", WAIT, || async {
        Ok(c.sql(restart)?.lines().next().and_then(|l| l.parse().ok()))
    })
    .await?;
    assert!(
        issued >= healed,
        "restart issued {} ms before the partition healed",
        healed - issued
    );
    // Nothing lost: the command answered before, and the death seen during the partition.
    assert_eq!(c.sql(&audit)?, "COMMAND_STATUS_OK");
    eventually("the death recorded", WAIT, || async {
        let n = c.sql(
            "SELECT count(*) FROM transitions WHERE session_name = 'crashy' AND to_state = 'dead'",
        )?;
        Ok((n != "0").then_some(()))
    })
    .await?;
    eprintln!(
        "partition of replica 0 from the database for {PARTITION:?}: not ready after {not_ready_in:?}, \
         ready again {ready_in:?} after it healed; the death seen during it restarted after it"
    );
    Ok(())
}

/// A replica that cannot reach the database says so: `/readyz` 503 and gRPC health NOT_SERVING;
/// both come back with the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_its_database_is_not_ready() -> anyhow::Result<()> {
    const TEST: &str = "replicas::a_replica_without_its_database_is_not_ready";
    let Some(pg) = postgres(TEST).await? else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let mut spec = ControllerSpec::new()
        .policy(POLICY)
        .env("RUST_LOG", RUST_LOG);
    spec.config.db = pg.create_database("ready");
    let ctl = spec.start(dir.path()).await?;
    let http = spec.config.http.context("side port")?;
    let url = ctl.url();
    let ready = || readiness(&url, http);
    eventually("ready", WAIT, || async {
        Ok((ready().await? == (200, true)).then_some(()))
    })
    .await?;
    let pg = std::sync::Arc::new(pg);
    let stopper = pg.clone();
    tokio::task::spawn_blocking(move || stopper.stop())
        .await?
        .map_err(anyhow::Error::msg)?;
    eventually("not ready without the database", WAIT, || async {
        Ok((ready().await? == (503, false)).then_some(()))
    })
    .await?;
    let starter = pg.clone();
    tokio::task::spawn_blocking(move || starter.restart())
        .await?
        .map_err(anyhow::Error::msg)?;
    eventually("ready again with the database", WAIT, || async {
        Ok((ready().await? == (200, true)).then_some(()))
    })
    .await?;
    drop(ctl);
    Ok(())
}

/// The status code of `/readyz`.
async fn readyz(http: std::net::SocketAddr) -> anyhow::Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(http).await?;
    s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    let code = out
        .split_whitespace()
        .nth(1)
        .context("no status line")?
        .parse()?;
    Ok(code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_runs_end_to_end_and_a_replica_forwards_as_its_caller() -> anyhow::Result<()> {
    const TEST: &str = "replicas::mutual_tls_runs_end_to_end_and_a_replica_forwards_as_its_caller";
    let Some(pg) = postgres_and_haproxy(TEST).await? else {
        return Ok(());
    };
    use argus_controller::auth::{FORWARDED_FOR, Role};
    let dir = tempfile::Builder::new()
        .prefix("argus-replicas-mtls-")
        .tempdir()?;
    let pki = Pki::new(&dir.path().join("pki"))?;
    let tmux = TestTmux::new();
    tmux.session("prompt", &fake_agent("idle"), &[("profile", "claude")])?;
    let c = Cluster::start_tls(pg, 2, &pki, dir).await?;
    let adir = c._dir.path().join("agent");
    std::fs::create_dir_all(&adir)?;
    let _agent = NodeAgentSpec::new("n1", &c.lb_url(), tmux.socket())
        .tls(&c.lb_url(), &pki.node("n1")?)
        .probe_interval(Duration::from_millis(250))
        .start(&adir)?;
    let (owner, _) = eventually(
        "the node owned by a replica, through haproxy",
        WAIT,
        || async { c.owner("n1") },
    )
    .await?;
    let other = 1 - owner;
    let url = |i: usize| c.replicas[i].advertised();

    // TLS ran end to end: the owner saw the node agent's own certificate through the proxy.
    // (The owner's row is stored a moment before the node is in its live view, which is where
    // the certificate's expiry is listed from: wait for it.)
    let root = pki.admin();
    eventually(
        "the node's certificate listed by its owner",
        WAIT,
        || async {
            let nodes = admin_tls(&url(owner), &root)
                .await?
                .list_nodes(pb::ListNodesRequest {})
                .await?
                .into_inner()
                .nodes;
            Ok(nodes
                .iter()
                .find(|n| n.node_id == "n1" && n.cert_not_after_ms > 0)
                .map(drop))
        },
    )
    .await?;

    // An operator's capture given to the replica that does not own the node is forwarded with
    // that replica's certificate and answered by the owner, audited as the operator's.
    let ops = pki.user("ops", Role::Operator)?;
    let capture = |files: argus_tests::spec::ClientFiles, i: usize| {
        let url = url(i);
        async move {
            admin_tls(&url, &files)
                .await?
                .capture(pb::CaptureRequest {
                    session: sref("n1", "prompt"),
                    lines: 20,
                })
                .await
                .map(tonic::Response::into_inner)
                .map_err(anyhow::Error::from)
        }
    };
    let got = eventually("a forwarded capture answered", WAIT, || async {
        Ok(capture(ops.clone(), other).await.ok())
    })
    .await?;
    assert_eq!(got.status(), pb::CommandStatus::Ok, "{got:?}");
    assert!(!got.output.is_empty(), "the pane's text came back: {got:?}");
    let reason = c.sql(&format!(
        "SELECT reason FROM commands WHERE command_id = '{}'",
        got.command_id
    ))?;
    assert!(
        reason.contains("operator ops (forwarded by a replica)"),
        "audited as the operator's: {reason:?}"
    );

    // A viewer may not capture, on either replica: the role is checked before forwarding, and
    // the forwarded caller's role is checked by the owner.
    let eve = pki.user("eve", Role::Viewer)?;
    for i in [owner, other] {
        let e = capture(eve.clone(), i)
            .await
            .expect_err("a viewer may not capture");
        let status = e.downcast_ref::<tonic::Status>().context("a gRPC status")?;
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    }
    // Naming someone else in the forwarding header counts only from a replica's certificate.
    let mut as_admin = tonic::Request::new(pb::CaptureRequest {
        session: sref("n1", "prompt"),
        lines: 20,
    });
    as_admin
        .metadata_mut()
        .insert(FORWARDED_FOR, "admin:eve".parse()?);
    let e = admin_tls(&url(owner), &eve)
        .await?
        .capture(as_admin)
        .await
        .expect_err("a viewer cannot claim to be forwarded");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    // A replica's certificate calling on its own, naming nobody, is refused.
    let replica_files = argus_tests::spec::ClientFiles {
        ca: pki.ca(),
        cert: pki.dir.join("controller.pem"),
        key: pki.dir.join("controller-key.pem"),
    };
    let e = capture(replica_files, owner)
        .await
        .expect_err("a replica names its caller");
    let status = e.downcast_ref::<tonic::Status>().context("a gRPC status")?;
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains(FORWARDED_FOR), "{status:?}");
    Ok(())
}
