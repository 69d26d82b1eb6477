//! The gRPC server: both argus services, reflection v1 and v1alpha (grpcurl 1.8 speaks only
//! v1alpha) and `grpc.health.v1`, which turns NOT_SERVING when draining starts (and, for the
//! admin service, while the store's writes fail).

use std::net::SocketAddr;
use std::sync::Arc;

use argus_proto::v1::admin_service_server::AdminServiceServer;
use argus_proto::v1::node_agent_service_server::NodeAgentServiceServer;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use anyhow::Context;

use crate::api::AdminApi;
use crate::auth::{Auth, AuthLayer, Tokens};
use crate::ingest::AgentApi;
use crate::supervisor::Supervisor;
use crate::tls::{ServerTls, TlsFiles};

/// Largest message a node agent may send (a full snapshot of a big node fits easily).
pub use argus_proto::MAX_AGENT_MESSAGE;
/// Largest admin request.
pub const MAX_ADMIN_MESSAGE: usize = 1 << 20;

/// How the server talks and whom it believes: TLS (with the callers' certificates and bearer
/// tokens) or plaintext (where every caller is admin, on loopback only).
pub struct Transport {
    tls: Option<Arc<ServerTls>>,
    auth: Auth,
}

impl Transport {
    /// The transport `config` asks for; fails when a certificate, key, CA or tokens file does
    /// not load.
    pub fn from_config(config: &crate::Config) -> anyhow::Result<Self> {
        if config.insecure {
            return Ok(Self {
                tls: None,
                auth: Auth::Insecure,
            });
        }
        let (Some(cert), Some(key), Some(client_ca)) =
            (&config.tls_cert, &config.tls_key, &config.client_ca)
        else {
            anyhow::bail!("TLS needs tls_cert, tls_key and client_ca");
        };
        let tls = ServerTls::load(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: client_ca.clone(),
        })
        .map_err(|e| anyhow::anyhow!(message_chain(&e)))
        .context("loading the TLS certificate, key and client CA")?;
        let tokens = match &config.tokens {
            Some(path) => Tokens::load(path).map_err(|e| anyhow::anyhow!(message_chain(&e)))?,
            None => Tokens::default(),
        };
        Ok(Self {
            tls: Some(tls),
            auth: Auth::Tls {
                tokens: Arc::new(tokens),
            },
        })
    }
}

impl Transport {
    /// How callers are authenticated (the dashboard applies the same rules on the side port).
    pub fn auth(&self) -> Auth {
        self.auth.clone()
    }
}

/// Serves plaintext gRPC on `listener` until `shutdown`, every caller admin (in-process tests).
pub async fn serve(
    listener: tokio::net::TcpListener,
    sup: Arc<Supervisor>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    serve_with(
        listener,
        Transport {
            tls: None,
            auth: Auth::Insecure,
        },
        sup,
        tasks,
        shutdown,
    )
    .await
}

/// Serves gRPC on `listener` over `transport` until `shutdown`.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    transport: Transport,
    sup: Arc<Supervisor>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<AdminServiceServer<AdminApi>>().await;
    health
        .set_serving::<NodeAgentServiceServer<AgentApi>>()
        .await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(argus_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(argus_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    // The admin service reads and writes the store: NOT_SERVING while its writes fail. The node
    // agents' service goes on serving (supervision never waits on the store).
    let reporter = health.clone();
    let mut store_health = sup.recorder.health();
    let stop = shutdown.clone();
    tasks.spawn(async move {
        loop {
            let failing = store_health.borrow_and_update().is_failing();
            if stop.is_cancelled() {
                break;
            }
            if failing {
                reporter
                    .set_not_serving::<AdminServiceServer<AdminApi>>()
                    .await;
            } else {
                reporter.set_serving::<AdminServiceServer<AdminApi>>().await;
            }
            tokio::select! {
                () = stop.cancelled() => break,
                changed = store_health.changed() => if changed.is_err() { break },
            }
        }
    });
    // === replicas: a replica that cannot reach the shared database serves nothing (a load
    // balancer sends node agents and callers to another one) ===
    if let Some(replica) = sup.replica.get() {
        let reporter = health.clone();
        let mut db_ok = replica.db_ok();
        let stop = shutdown.clone();
        tasks.spawn(async move {
            loop {
                let ok = *db_ok.borrow_and_update();
                if stop.is_cancelled() {
                    break;
                }
                let status = if ok {
                    tonic_health::ServingStatus::Serving
                } else {
                    tonic_health::ServingStatus::NotServing
                };
                reporter.set_service_status("", status).await;
                if ok {
                    reporter
                        .set_serving::<NodeAgentServiceServer<AgentApi>>()
                        .await;
                } else {
                    reporter
                        .set_not_serving::<NodeAgentServiceServer<AgentApi>>()
                        .await;
                    reporter
                        .set_not_serving::<AdminServiceServer<AdminApi>>()
                        .await;
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    changed = db_ok.changed() => if changed.is_err() { break },
                }
            }
        });
    }
    let accept_tasks = tasks.clone();
    let agents = NodeAgentServiceServer::new(AgentApi::new(sup.clone(), tasks))
        .max_decoding_message_size(MAX_AGENT_MESSAGE);
    let admin =
        AdminServiceServer::new(AdminApi::new(sup)).max_decoding_message_size(MAX_ADMIN_MESSAGE);
    let drain = shutdown.clone();
    let signal = async move {
        drain.cancelled().await;
        health
            .set_not_serving::<AdminServiceServer<AdminApi>>()
            .await;
        health
            .set_not_serving::<NodeAgentServiceServer<AgentApi>>()
            .await;
    };
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
        .layer(AuthLayer::new(transport.auth))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(agents)
        .add_service(admin);
    match transport.tls {
        Some(tls) => {
            let incoming = tls.incoming(listener, &accept_tasks, shutdown.clone());
            router
                .serve_with_incoming_shutdown(incoming, signal)
                .await?;
        }
        None => {
            router
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    signal,
                )
                .await?;
        }
    }
    Ok(())
}

/// A status with `code` whose message is `e` followed by its sources (each once), and which
/// keeps `e` itself as its source for in-process callers. The `From<...> for Status` impls of
/// each module's error go through here.
pub fn status<E>(code: tonic::Code, e: E) -> tonic::Status
where
    E: std::error::Error + Send + Sync + 'static,
{
    let mut status = tonic::Status::new(code, message_chain(&e));
    status.set_source(Arc::new(e));
    status
}

/// `e`'s message and its sources', joined by `": "`; a source whose text the message already
/// holds (errors that print their cause themselves) is not repeated.
pub fn message_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut message = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        next = cause.source();
    }
    message
}

/// True for loopback addresses, the only ones plaintext may bind to unless forced.
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}
