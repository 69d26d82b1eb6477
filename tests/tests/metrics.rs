//! `/metrics` on the controller's side port and on the node agent's `http_listen`, scraped by a
//! real Prometheus server and read back through its HTTP API after a scripted scenario: one
//! kill raises the kill counters by exactly one, a SIGKILLed agent is one death with its
//! death-to-decision time, a tmux control client killed under the node agent is one
//! control-client restart, a paused node agent is one open `host_silent` incident
//! until it resumes. Over TLS, `/metrics` wants a bearer token of the tokens file.

use std::net::SocketAddr;
use std::time::Duration;

use argus_proto::v1 as pb;
use argus_tests::cluster::{TestCluster, fake_agent as agent, sref};
use argus_tests::monitoring::{Prometheus, Target, get, prometheus_binary};
use argus_tests::tmux::TestTmux;
use argus_tests::{eventually, free_port};

const WAIT: Duration = Duration::from_secs(20);
const SCRAPE: Duration = Duration::from_millis(500);
const SEP: char = '\u{1f}';

/// No nudges; a node is suspect after 1 s of silence.
const POLICY: &str = r#"
nudge_dwell = "1h"
node_suspect_after = "1s"
node_down_after = "30s"
"#;

/// Pids of the control-mode clients of a server.
fn control_clients(tmux: &TestTmux) -> Vec<u32> {
    let format = format!("#{{client_pid}}{SEP}#{{client_control_mode}}");
    tmux.run(&["list-clients", "-F", &format])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(SEP))
        .filter(|(_, control)| *control == "1")
        .filter_map(|(pid, _)| pid.parse().ok())
        .collect()
}

fn signal(pid: u32, sig: rustix::process::Signal) -> anyhow::Result<()> {
    let pid = rustix::process::Pid::from_raw(pid as i32).ok_or(anyhow::anyhow!("pid 0"))?;
    rustix::process::kill_process(pid, sig)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_reads_exact_counts_after_a_scripted_scenario() -> anyhow::Result<()> {
    let Some(prometheus) = prometheus_binary() else {
        return Ok(());
    };
    let mut c = TestCluster::with_policy(POLICY).await?;
    let tmux = TestTmux::new();
    // In the cluster's directory: the kill's checkpoint is taken there.
    let idle = format!("cd {} && exec {}", c.dir.path().display(), agent("idle"));
    tmux.session("victim", &idle, &[])?;
    tmux.session("bystander", &idle, &[])?;
    let node_http = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut spec = c.agent_spec("n1", tmux.socket());
    spec.config.http_listen = Some(node_http);
    c.agents.push(spec.start(c.dir.path())?);
    let controller_http = c.http().expect("the test controller has a side port");
    let prom = Prometheus::start(
        &prometheus,
        c.dir.path(),
        &[
            Target {
                job: "controller".into(),
                addr: controller_http,
                bearer: None,
            },
            Target {
                job: "node".into(),
                addr: node_http,
                bearer: None,
            },
        ],
        SCRAPE,
    )
    .await?;

    // Both sessions known: the gauges say so, from both sides.
    c.wait_session("n1", "victim", "the victim's agent", WAIT, |s| {
        s.agent_pid > 0
    })
    .await?;
    prom.wait_value("sum(argus_controller_sessions)", 2.0, WAIT)
        .await?;
    prom.wait_value("argus_node_sessions", 2.0, WAIT).await?;
    prom.wait_value(r#"argus_controller_nodes{health="up"}"#, 1.0, WAIT)
        .await?;
    prom.wait_value("argus_controller_streams", 1.0, WAIT)
        .await?;
    prom.wait_value(
        r#"argus_controller_incidents_open{kind="host_silent"}"#,
        0.0,
        WAIT,
    )
    .await?;
    let rounds = "argus_node_probe_round_seconds_count";
    eventually("probe rounds counted", WAIT, || async {
        Ok(prom.value(rounds).await?.filter(|v| *v >= 2.0))
    })
    .await?;
    for (job, health, error) in prom.targets().await? {
        assert_eq!(health, "up", "target {job}: {error}");
    }

    // One kill: exactly one kill sent by an operator, closed ok, and nothing else killed.
    let kill_sent = r#"argus_controller_commands_sent_total{action="kill",origin="admin"}"#;
    let kill_ok = r#"argus_controller_commands_total{action="kill",outcome="ok"}"#;
    prom.wait_value(kill_sent, 0.0, WAIT).await?;
    c.admin()
        .await?
        .kill(pb::KillRequest {
            session: sref("n1", "victim"),
            grace_ms: 1000,
        })
        .await?;
    prom.wait_value(kill_sent, 1.0, WAIT).await?;
    prom.wait_value(kill_ok, 1.0, WAIT).await?;
    prom.wait_value(
        r#"sum(argus_controller_commands_sent_total{action="kill"})"#,
        1.0,
        WAIT,
    )
    .await?;
    prom.wait_value(
        r#"argus_controller_command_seconds_count{action="kill"}"#,
        1.0,
        WAIT,
    )
    .await?;
    prom.wait_value("argus_node_sessions", 1.0, WAIT).await?;

    // The node agent's tmux control client dies: one restart, when the next one attaches. (The
    // kill above may have closed one already, when it was attached to the killed session: the
    // count is taken once a client is attached again and the node agent reports it.)
    let restarts = "sum(argus_node_tmux_control_restarts_total) or vector(0)";
    let clients = eventually("the node agent's control client", WAIT, || async {
        let pids = control_clients(&tmux);
        Ok((!pids.is_empty()).then_some(pids))
    })
    .await?;
    let direct = async {
        let (status, body) = get(node_http, "/metrics", &[]).await?;
        anyhow::ensure!(status == 200, "node /metrics answered {status}");
        Ok::<f64, anyhow::Error>(
            body.lines()
                .find_map(|l| l.strip_prefix("argus_node_tmux_control_restarts_total "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0.0),
        )
    };
    let before = direct.await?;
    prom.wait_value(restarts, before, WAIT).await?;
    for pid in clients {
        signal(pid, rustix::process::Signal::KILL)?;
    }
    prom.wait_value(restarts, before + 1.0, WAIT).await?;

    // The bystander's agent is SIGKILLed: one death, seen by the node agent and decided on.
    let deaths = r#"argus_controller_notices_total{kind="agent_died"}"#;
    let timed = "sum(argus_controller_death_to_decision_seconds_count)";
    let died_before = prom.value(deaths).await?.unwrap_or(0.0);
    let timed_before = prom
        .value(&format!("{timed} or vector(0)"))
        .await?
        .unwrap_or(0.0);
    let pid = c
        .wait_session("n1", "bystander", "the bystander's agent", WAIT, |s| {
            s.agent_pid > 0
        })
        .await?
        .agent_pid;
    signal(pid, rustix::process::Signal::KILL)?;
    prom.wait_value(deaths, died_before + 1.0, WAIT).await?;
    prom.wait_value(&format!("{timed} or vector(0)"), timed_before + 1.0, WAIT)
        .await?;

    // The node agent pauses: its node turns suspect, one host_silent incident is open, and it
    // closes when the node agent resumes.
    let opened = r#"argus_controller_incidents_opened_total{kind="host_silent"}"#;
    prom.wait_value(opened, 0.0, WAIT).await?;
    let node_pid = c.agents[0].pid();
    signal(node_pid, rustix::process::Signal::STOP)?;
    let paused = async {
        prom.wait_value(
            r#"argus_controller_incidents_open{kind="host_silent"}"#,
            1.0,
            WAIT,
        )
        .await?;
        prom.wait_value(r#"argus_controller_nodes{health="up"}"#, 0.0, WAIT)
            .await
    }
    .await;
    signal(node_pid, rustix::process::Signal::CONT)?;
    paused?;
    prom.wait_value(
        r#"argus_controller_incidents_open{kind="host_silent"}"#,
        0.0,
        WAIT,
    )
    .await?;
    prom.wait_value(opened, 1.0, WAIT).await?;
    prom.wait_value(r#"argus_controller_nodes{health="up"}"#, 1.0, WAIT)
        .await?;

    // The histograms have their buckets and their counts.
    let le = prom
        .value(r#"argus_controller_store_write_seconds_bucket{le="+Inf"}"#)
        .await?
        .unwrap_or(0.0);
    let count = prom
        .value("argus_controller_store_write_seconds_count")
        .await?
        .unwrap_or(-1.0);
    assert!(
        le > 0.0 && le == count,
        "store writes: +Inf bucket {le}, count {count}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_metrics_need_a_token_of_the_tokens_file() -> anyhow::Result<()> {
    let Some(prometheus) = prometheus_binary() else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let pki = argus_tests::spec::Pki::new(dir.path())?;
    let token = "metrics-reader-token-0123456789";
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(
        &tokens,
        argus_controller::auth::token_entry(
            "prometheus",
            argus_controller::auth::Role::Viewer,
            token,
        ),
    )?;
    let mut spec = TestCluster::spec().tls(&pki);
    spec.config.tokens = Some(tokens);
    let c = TestCluster::start(spec).await?;
    let http = c.http().expect("side port");

    let (status, body) = get(http, "/metrics", &[]).await?;
    assert_eq!(status, 401, "{body}");
    let (status, _) = get(http, "/metrics", &[("authorization", "Bearer wrong")]).await?;
    assert_eq!(status, 401);
    let bearer = format!("Bearer {token}");
    let (status, body) = get(http, "/metrics", &[("authorization", &bearer)]).await?;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("# TYPE argus_controller_sessions gauge"),
        "{body}"
    );
    let (status, _) = get(http, "/healthz", &[]).await?;
    assert_eq!(status, 200, "health stays open");

    // A real Prometheus with the token in its scrape configuration, and one without.
    let prom = Prometheus::start(
        &prometheus,
        c.dir.path(),
        &[
            Target {
                job: "with-token".into(),
                addr: http,
                bearer: Some(token.into()),
            },
            Target {
                job: "without".into(),
                addr: http,
                bearer: None,
            },
        ],
        SCRAPE,
    )
    .await?;
    prom.wait_value(r#"up{job="with-token"}"#, 1.0, WAIT)
        .await?;
    prom.wait_value(r#"up{job="without"}"#, 0.0, WAIT).await?;
    let refused = eventually("the scrape without a token refused", WAIT, || async {
        Ok(prom
            .targets()
            .await?
            .into_iter()
            .find(|(job, health, _)| job == "without" && health == "down")
            .map(|(_, _, error)| error))
    })
    .await?;
    assert!(refused.contains("401"), "{refused}");
    prom.wait_value(r#"argus_controller_streams{job="with-token"}"#, 0.0, WAIT)
        .await?;
    assert_eq!(
        prom.value(r#"argus_controller_streams{job="without"}"#)
            .await?,
        None,
        "nothing scraped without the token"
    );
    Ok(())
}
