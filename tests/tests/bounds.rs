//! What one node may put into the controller is bounded, and what ends is closed: the limits per
//! node refuse the excess with an event naming the limit, the sessions of a node gone longer than
//! its retention leave the live view (their history stays readable), a silent-host incident ends
//! when its node comes back, and an undecodable message is the caller's error
//! (`INVALID_ARGUMENT`). The real controller and node agent on a private tmux server.

use std::time::Duration;

use anyhow::Context;
use argus_proto::v1 as pb;
use argus_proto::v1::node_agent_service_client::NodeAgentServiceClient;
use argus_tests::cluster::{TestCluster, fake_agent as agent, sref, wait_event};
use argus_tests::eventually;
use argus_tests::tmux::TestTmux;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const WAIT: Duration = Duration::from_secs(30);

async fn events(c: &TestCluster) -> anyhow::Result<tonic::Streaming<pb::FleetEvent>> {
    Ok(c.admin()
        .await?
        .watch_events(pb::WatchEventsRequest {
            node_id: "n1".into(),
        })
        .await?
        .into_inner())
}

async fn listed(c: &TestCluster) -> anyhow::Result<Vec<pb::Session>> {
    match c
        .admin()
        .await?
        .list_sessions(pb::ListSessionsRequest {
            node_id: "n1".into(),
        })
        .await
    {
        Ok(r) => Ok(r.into_inner().sessions),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(Vec::new()),
        Err(s) => Err(s.into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reporting_too_much_is_refused_naming_the_limit() -> anyhow::Result<()> {
    let tmux = TestTmux::new();
    // Sorted by name the node reports `fat` first: refused for its label, not counted.
    let long = "x".repeat(200);
    tmux.session("fat", &agent("quiet"), &[("group", &long)])?;
    for i in 1..=5 {
        tmux.session(&format!("s{i}"), &agent("quiet"), &[])?;
    }
    let mut spec = TestCluster::spec();
    spec.config.limits.sessions_per_node = 4;
    spec.config.limits.label_bytes = 128;
    let mut c = TestCluster::start(spec).await?;
    let mut ev = events(&c).await?;
    c.start_agent("n1", tmux.socket())?;
    let label = wait_event(&mut ev, "the label refused", WAIT, |e| {
        e.kind == "limit_exceeded" && e.message.contains("limits.label_bytes")
    })
    .await?;
    assert_eq!(label.session_name, "fat", "{label:?}");
    wait_event(&mut ev, "the sessions refused", WAIT, |e| {
        e.kind == "limit_exceeded" && e.message.contains("limits.sessions_per_node (4)")
    })
    .await?;
    let sessions = eventually("four sessions listed", WAIT, || async {
        let s = listed(&c).await?;
        Ok((s.len() == 4).then_some(s))
    })
    .await?;
    assert!(
        sessions.iter().all(|s| s.session_name != "fat"),
        "{sessions:?}"
    );
    // The stream stays open: the node is still connected and its sessions still reported.
    let nodes = c
        .admin()
        .await?
        .list_nodes(pb::ListNodesRequest {})
        .await?
        .into_inner()
        .nodes;
    assert!(
        nodes.iter().any(|n| n.node_id == "n1" && n.connected),
        "{nodes:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gone_nodes_sessions_leave_the_live_view_and_keep_their_history() -> anyhow::Result<()> {
    let tmux = TestTmux::new();
    tmux.session("work", &agent("quiet"), &[("profile", "claude")])?;
    let mut spec = TestCluster::spec();
    spec.config.limits.node_retention = Duration::from_secs(3);
    let mut c = TestCluster::start(spec).await?;
    let mut ev = events(&c).await?;
    c.start_agent("n1", tmux.socket())?;
    c.wait_session("n1", "work", "working", WAIT, |s| {
        s.state() == pb::SessionState::Working
    })
    .await?;
    c.agents[0].kill();
    wait_event(&mut ev, "the node retired", WAIT, |e| {
        e.kind == "node_retired"
    })
    .await?;
    eventually("no session of n1 listed", WAIT, || async {
        Ok(listed(&c).await?.is_empty().then_some(()))
    })
    .await?;
    let s = c
        .admin()
        .await?
        .get_session(pb::GetSessionRequest {
            session: sref("n1", "work"),
            history_limit: 50,
        })
        .await?
        .into_inner();
    assert!(
        s.transitions
            .iter()
            .any(|t| t.to() == pb::SessionState::Working),
        "{s:?}"
    );
    Ok(())
}

async fn open_incidents(c: &TestCluster) -> anyhow::Result<Vec<pb::Incident>> {
    Ok(c.admin()
        .await?
        .list_incidents(pb::ListIncidentsRequest::default())
        .await?
        .into_inner()
        .incidents
        .into_iter()
        .filter(|i| i.closed_ms == 0)
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_silent_closes_when_its_node_comes_back() -> anyhow::Result<()> {
    let tmux = TestTmux::new();
    tmux.session("work", &agent("quiet"), &[])?;
    let mut c = TestCluster::with_policy(
        r#"
node_suspect_after = "1s"
node_down_after = "2s"
"#,
    )
    .await?;
    c.start_agent("n1", tmux.socket())?;
    c.wait_session("n1", "work", "listed", WAIT, |_| true)
        .await?;
    // The node agent dies: its host goes silent.
    c.agents[0].kill();
    eventually("a host_silent incident", WAIT, || async {
        Ok(open_incidents(&c)
            .await?
            .into_iter()
            .find(|i| i.kind == "host_silent" && i.scope == "n1"))
    })
    .await?;
    // A new node agent process attaches for the same node: the cause has ended.
    c.start_agent("n1", tmux.socket())?;
    eventually("the host_silent incident closed", WAIT, || async {
        Ok(open_incidents(&c)
            .await?
            .iter()
            .all(|i| i.kind != "host_silent")
            .then_some(()))
    })
    .await?;
    Ok(())
}

/// Raw bytes as a request body: what a broken or hostile client sends.
#[derive(Default)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use prost::bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use prost::bytes::Buf;
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_message_is_invalid_argument() -> anyhow::Result<()> {
    let c = TestCluster::start(TestCluster::spec()).await?;
    let channel = tonic::transport::Channel::from_shared(c.url())?
        .connect()
        .await?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await?;
    // Field 1 as a length-delimited value claiming 100 bytes, followed by 2: truncated.
    let garbage = vec![0x0a, 0x64, 0x01, 0x02];
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/argus.v1.AdminService/GetSession");
    let e = grpc
        .unary(tonic::Request::new(garbage), path, RawCodec)
        .await
        .expect_err("garbage accepted");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    Ok(())
}

/// A scripted node agent on the Attach stream, sending whatever the test says.
struct ScriptedNode {
    tx: mpsc::Sender<pb::AgentMessage>,
    _inbound: tonic::Streaming<pb::ControllerMessage>,
}

impl ScriptedNode {
    async fn attach(url: &str) -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::channel(64);
        tx.send(pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::Hello(pb::Hello {
                node_id: "n1".into(),
                hostname: "scripted".into(),
                ..Default::default()
            })),
        })
        .await?;
        let mut inbound = NodeAgentServiceClient::connect(url.to_owned())
            .await?
            .max_encoding_message_size(argus_proto::MAX_AGENT_MESSAGE)
            .attach(ReceiverStream::new(rx))
            .await?
            .into_inner();
        inbound.message().await?.context("no Welcome")?;
        Ok(Self {
            tx,
            _inbound: inbound,
        })
    }

    async fn send(&self, msg: pb::agent_message::Msg) -> anyhow::Result<()> {
        self.tx
            .send(pb::AgentMessage { msg: Some(msg) })
            .await
            .context("stream closed")
    }
}

fn observed(i: usize) -> pb::SessionObservation {
    pb::SessionObservation {
        tmux_socket: "/tmp/flood.sock".into(),
        session_name: format!("s{i}"),
        pane_id: format!("%{i}"),
        agent: Some(pb::Incarnation {
            pid: 1000 + i as u32,
            start_time: 1,
        }),
        agent_name: "claude".into(),
        profile: "claude".into(),
        ..Default::default()
    }
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_sessions_and_events_stays_bounded() -> anyhow::Result<()> {
    let mut spec = TestCluster::spec();
    spec.config.limits.events_per_second = 200;
    let c = TestCluster::start(spec).await?;
    let controller = c.controller.as_ref().context("controller")?;
    let pid = controller.proc.pid();
    let before = rss_kib(pid)?;
    let mut ev = events(&c).await?;
    let node = ScriptedNode::attach(&c.url()).await?;
    // 100,000 sessions in one full snapshot, three times.
    for _ in 0..3 {
        node.send(pb::agent_message::Msg::Report(pb::Report {
            full_snapshot: true,
            sessions: (0..100_000).map(observed).collect(),
            ..Default::default()
        }))
        .await?;
    }
    wait_event(&mut ev, "the sessions refused", WAIT, |e| {
        e.kind == "limit_exceeded" && e.message.contains("limits.sessions_per_node (5000)")
    })
    .await?;
    let limit = argus_controller::config::Limits::default().sessions_per_node;
    eventually("the limit's worth of sessions listed", WAIT, || async {
        Ok((listed(&c).await?.len() == limit).then_some(()))
    })
    .await?;
    // A flood of events: the excess is dropped with one event naming the limit.
    for i in 0..3_000 {
        node.send(pb::agent_message::Msg::Event(pb::Event {
            kind: pb::EventKind::AgentExited as i32,
            tmux_socket: "/tmp/flood.sock".into(),
            session_name: format!("s{}", 10_000 + i),
            process: Some(pb::Incarnation {
                pid: 1,
                start_time: 1,
            }),
            ..Default::default()
        }))
        .await?;
    }
    wait_event(&mut ev, "the events refused", WAIT, |e| {
        e.kind == "limit_exceeded" && e.message.contains("limits.events_per_second (200)")
    })
    .await?;
    let after = rss_kib(pid)?;
    let db: u64 = controller.db_files().iter().map(|(_, len, _)| len).sum();
    println!(
        "controller RSS {} MiB before, {} MiB after 3 x 100,000 sessions; database {} KiB",
        before / 1024,
        after / 1024,
        db / 1024
    );
    assert!(
        after < before + 200 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    assert!(db < 16 << 20, "database of {db} bytes");
    Ok(())
}
