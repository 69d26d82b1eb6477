//! A scripted controller: a real tonic server speaking the real `NodeAgentService` protocol, so
//! tests can hand a real node agent commands no honest controller would send (stale epochs,
//! wrong incarnations, duplicates, expired deadlines).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use argus_proto::v1 as pb;
use argus_proto::v1::node_agent_service_server::{NodeAgentService, NodeAgentServiceServer};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// What the test sees of one attach.
pub struct Attached {
    /// The node agent's Hello.
    pub hello: pb::Hello,
    /// Commands to send on this stream.
    pub commands: mpsc::Sender<Result<pb::ControllerMessage, Status>>,
    /// Everything the node agent sends after Hello.
    pub inbound: mpsc::Receiver<pb::AgentMessage>,
}

struct Service {
    epochs: Arc<Mutex<Vec<u64>>>,
    attached: mpsc::Sender<Attached>,
}

#[tonic::async_trait]
impl NodeAgentService for Service {
    type AttachStream = ReceiverStream<Result<pb::ControllerMessage, Status>>;

    async fn attach(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let mut stream = request.into_inner();
        let hello = match stream.message().await? {
            Some(pb::AgentMessage {
                msg: Some(pb::agent_message::Msg::Hello(h)),
            }) => h,
            _ => return Err(Status::invalid_argument("expected Hello")),
        };
        let epoch = {
            let mut e = self
                .epochs
                .lock()
                .map_err(|_| Status::internal("poisoned"))?;
            if e.is_empty() { 1 } else { e.remove(0) }
        };
        let (tx, rx) = mpsc::channel(64);
        tx.send(Ok(pb::ControllerMessage {
            msg: Some(pb::controller_message::Msg::Welcome(pb::Welcome {
                controller_id: "fake".into(),
                epoch,
            })),
        }))
        .await
        .map_err(|_| Status::internal("closed"))?;
        let (in_tx, in_rx) = mpsc::channel(1024);
        tokio::spawn(async move {
            while let Ok(Some(m)) = stream.message().await {
                if in_tx.send(m).await.is_err() {
                    break;
                }
            }
        });
        let _ = self
            .attached
            .send(Attached {
                hello,
                commands: tx.clone(),
                inbound: in_rx,
            })
            .await;
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Starts a fake controller on loopback that welcomes successive attaches with `epochs` (then
/// 1). Returns its address and the stream of attaches.
pub async fn start(epochs: Vec<u64>) -> anyhow::Result<(SocketAddr, mpsc::Receiver<Attached>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = mpsc::channel(8);
    let svc = Service {
        epochs: Arc::new(Mutex::new(epochs)),
        attached: tx,
    };
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(NodeAgentServiceServer::new(svc))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    });
    Ok((addr, rx))
}
