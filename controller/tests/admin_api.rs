//! Component test of the admin API's refusals: a real tonic server on `127.0.0.1:0` over a
//! supervisor with the in-memory store, and a scripted node agent on the Attach stream (no tmux,
//! no database file). Every refusal must carry its specific gRPC code and name what was wrong.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use argus_controller::server;
use argus_controller::supervisor::Supervisor;
use argus_decide::policy::Policy;
use argus_proto::v1 as pb;
use argus_proto::v1::admin_service_client::AdminServiceClient;
use argus_proto::v1::node_agent_service_client::NodeAgentServiceClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::Code;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(10);

/// A controller serving on an ephemeral port; stops when dropped.
struct Controller {
    addr: SocketAddr,
    shutdown: CancellationToken,
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Controller {
    async fn start() -> anyhow::Result<Self> {
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let sup = Supervisor::in_memory(Policy::default(), &tasks, shutdown.clone()).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tasks.spawn(server::serve(
            listener,
            sup,
            tasks.clone(),
            shutdown.clone(),
        ));
        Ok(Self { addr, shutdown })
    }

    async fn channel(&self) -> anyhow::Result<Channel> {
        Ok(Channel::from_shared(format!("http://{}", self.addr))?
            .connect()
            .await?)
    }

    async fn admin(&self) -> anyhow::Result<AdminServiceClient<Channel>> {
        Ok(AdminServiceClient::new(self.channel().await?))
    }
}

/// A scripted node agent: sends what the test says, receives the controller's commands.
struct FakeAgent {
    tx: mpsc::Sender<pb::AgentMessage>,
    inbound: tonic::Streaming<pb::ControllerMessage>,
}

fn observation(socket: &str, name: &str) -> pb::SessionObservation {
    pb::SessionObservation {
        tmux_socket: socket.into(),
        session_name: name.into(),
        pane_id: "%1".into(),
        ..Default::default()
    }
}

impl FakeAgent {
    /// Attaches as `node_id` and reports `sessions` (socket, name) as a full snapshot.
    async fn attach(
        c: &Controller,
        node_id: &str,
        sessions: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::channel(16);
        tx.send(pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::Hello(pb::Hello {
                node_id: node_id.into(),
                hostname: "test-host".into(),
                ..Default::default()
            })),
        })
        .await?;
        let mut inbound = NodeAgentServiceClient::new(c.channel().await?)
            .attach(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let welcome = inbound.message().await?.context("no Welcome")?;
        anyhow::ensure!(
            matches!(welcome.msg, Some(pb::controller_message::Msg::Welcome(_))),
            "expected Welcome, got {welcome:?}"
        );
        tx.send(pb::AgentMessage {
            msg: Some(pb::agent_message::Msg::Report(pb::Report {
                full_snapshot: true,
                sessions: sessions
                    .iter()
                    .map(|(socket, name)| observation(socket, name))
                    .collect(),
                ..Default::default()
            })),
        })
        .await?;
        Ok(Self { tx, inbound })
    }

    /// Answers the next command with `status`; returns it.
    async fn answer(&mut self, status: pb::CommandStatus) -> anyhow::Result<pb::Command> {
        let msg = loop {
            let msg = tokio::time::timeout(WAIT, self.inbound.message())
                .await
                .context("no command within the deadline")??
                .context("stream ended")?;
            // The guarded files and the selectors follow the Welcome; not commands.
            if !matches!(
                msg.msg,
                Some(
                    pb::controller_message::Msg::Guards(_)
                        | pb::controller_message::Msg::Selectors(_)
                )
            ) {
                break msg;
            }
        };
        let Some(pb::controller_message::Msg::Command(cmd)) = msg.msg else {
            anyhow::bail!("expected a command, got {msg:?}");
        };
        self.tx
            .send(pb::AgentMessage {
                msg: Some(pb::agent_message::Msg::Result(pb::CommandResult {
                    command_id: cmd.command_id.clone(),
                    status: status as i32,
                    message: "done".into(),
                    output: String::new(),
                    ..Default::default()
                })),
            })
            .await?;
        Ok(cmd)
    }
}

/// Polls `check` until it returns `Some`, failing after `deadline`.
async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sref(node: &str, socket: &str, name: &str) -> Option<pb::SessionRef> {
    Some(pb::SessionRef {
        node_id: node.into(),
        tmux_socket: socket.into(),
        session_name: name.into(),
    })
}

fn nudge(session: Option<pb::SessionRef>, text: &str) -> pb::NudgeRequest {
    pb::NudgeRequest {
        session,
        text: text.into(),
    }
}

#[track_caller]
fn assert_status(e: &tonic::Status, code: Code, mentions: &[&str]) {
    assert_eq!(e.code(), code, "{e:?}");
    for m in mentions {
        assert!(e.message().contains(m), "{m:?} missing from {e:?}");
    }
}

#[tokio::test]
async fn refusals_have_specific_codes_and_name_the_field() -> anyhow::Result<()> {
    let c = Controller::start().await?;
    let mut admin = c.admin().await?;
    let mut agent = FakeAgent::attach(
        &c,
        "n1",
        &[
            ("/tmp/a.sock", "work"),
            ("/tmp/b.sock", "work"),
            ("/tmp/a.sock", "solo"),
        ],
    )
    .await?;
    eventually("three sessions", WAIT, || {
        let mut admin = admin.clone();
        async move {
            let r = admin
                .list_sessions(pb::ListSessionsRequest {
                    node_id: "n1".into(),
                })
                .await?
                .into_inner();
            Ok((r.sessions.len() == 3).then_some(()))
        }
    })
    .await?;

    let e = admin
        .get_session(pb::GetSessionRequest::default())
        .await
        .expect_err("no session");
    assert_status(&e, Code::InvalidArgument, &["session is required"]);
    let e = admin
        .nudge(nudge(sref("bad node", "", "work"), "hi"))
        .await
        .expect_err("bad node id");
    assert_status(&e, Code::InvalidArgument, &["session.node_id", "node id"]);
    let e = admin
        .nudge(nudge(sref("n1", "", "a:b"), "hi"))
        .await
        .expect_err("bad name");
    assert_status(&e, Code::InvalidArgument, &["session.session_name"]);
    let e = admin
        .nudge(nudge(sref("n1", "", "solo"), "line\n"))
        .await
        .expect_err("control character");
    assert_status(
        &e,
        Code::InvalidArgument,
        &["invalid text", "control character"],
    );
    let e = admin
        .capture(pb::CaptureRequest {
            session: sref("n1", "", "solo"),
            lines: 1_000_000,
        })
        .await
        .expect_err("too many lines");
    assert_status(&e, Code::InvalidArgument, &["invalid lines"]);
    let e = admin
        .nudge(nudge(sref("nope", "", "work"), "hi"))
        .await
        .expect_err("unknown node");
    assert_status(&e, Code::NotFound, &["\"nope\""]);
    let e = admin
        .list_sessions(pb::ListSessionsRequest {
            node_id: "nope".into(),
        })
        .await
        .expect_err("unknown node");
    assert_status(&e, Code::NotFound, &["\"nope\""]);
    let e = admin
        .nudge(nudge(sref("n1", "", "missing"), "hi"))
        .await
        .expect_err("unknown session");
    assert_status(&e, Code::NotFound, &["\"missing\"", "\"n1\""]);
    let e = admin
        .nudge(nudge(sref("n1", "/tmp/c.sock", "work"), "hi"))
        .await
        .expect_err("unknown socket");
    assert_status(&e, Code::NotFound, &["/tmp/c.sock"]);

    // The same name on two tmux servers: refused without a socket, with both listed.
    let e = admin
        .get_session(pb::GetSessionRequest {
            session: sref("n1", "", "work"),
            history_limit: 0,
        })
        .await
        .expect_err("ambiguous");
    assert_status(
        &e,
        Code::InvalidArgument,
        &["/tmp/a.sock", "/tmp/b.sock", "session.tmux_socket"],
    );
    let s = admin
        .get_session(pb::GetSessionRequest {
            session: sref("n1", "/tmp/b.sock", "work"),
            history_limit: 0,
        })
        .await?
        .into_inner()
        .session
        .context("session")?;
    assert_eq!(s.tmux_socket, "/tmp/b.sock");

    let e = admin
        .ack_incident(pb::AckIncidentRequest::default())
        .await
        .expect_err("no id");
    assert_status(&e, Code::InvalidArgument, &["id is required"]);
    let e = admin
        .ack_incident(pb::AckIncidentRequest {
            id: "inc-none".into(),
            by: String::new(),
        })
        .await
        .expect_err("unknown incident");
    assert_status(&e, Code::NotFound, &["inc-none"]);

    // A command reaches the scripted agent on the right tmux server and its answer comes back.
    let call = tokio::spawn({
        let mut admin = admin.clone();
        async move {
            admin
                .nudge(nudge(sref("n1", "/tmp/b.sock", "work"), "hi"))
                .await
        }
    });
    let cmd = agent.answer(pb::CommandStatus::Ok).await?;
    assert_eq!(cmd.tmux_socket, "/tmp/b.sock");
    assert_eq!(cmd.session_name, "work");
    let r = call.await??.into_inner();
    assert_eq!(r.status, pb::CommandStatus::Ok as i32);
    // The audit log (write-behind, into the in-memory store) has the command and its result,
    // under the session on that tmux server only.
    let history = |socket: &'static str| {
        let mut admin = admin.clone();
        async move {
            anyhow::Ok(
                admin
                    .get_session(pb::GetSessionRequest {
                        session: sref("n1", socket, "work"),
                        history_limit: 0,
                    })
                    .await?
                    .into_inner()
                    .commands,
            )
        }
    };
    let recorded = eventually("the command's result in the audit log", WAIT, || async {
        let commands = history("/tmp/b.sock").await?;
        Ok(commands
            .into_iter()
            .find(|k| k.status == pb::CommandStatus::Ok as i32))
    })
    .await?;
    assert_eq!(recorded.command_id, r.command_id);
    assert_eq!(recorded.origin, "admin");
    assert!(history("/tmp/a.sock").await?.is_empty());

    // Once the node's stream is gone, its sessions are known but the node is unreachable.
    drop(agent);
    eventually("the node to detach", WAIT, || {
        let mut admin = admin.clone();
        async move {
            let nodes = admin
                .list_nodes(pb::ListNodesRequest {})
                .await?
                .into_inner();
            Ok(nodes.nodes.iter().all(|n| !n.connected).then_some(()))
        }
    })
    .await?;
    let e = admin
        .nudge(nudge(sref("n1", "", "solo"), "hi"))
        .await
        .expect_err("disconnected");
    assert_status(&e, Code::Unavailable, &["not connected"]);
    Ok(())
}
