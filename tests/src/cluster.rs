//! `TestCluster`: a real controller and real node agents as child processes on loopback,
//! started from typed specs ([`ControllerSpec`], [`NodeAgentSpec`]). Children are stopped by pid
//! on drop, and their logs printed (the test harness shows them when a test fails).

use std::path::Path;
use std::time::Duration;

use argus_proto::v1 as pb;
use argus_proto::v1::admin_service_client::AdminServiceClient;
use tonic::transport::Channel;

use crate::eventually;
use crate::process::{Proc, binary};
use crate::spec::{Controller, ControllerSpec, NodeAgentSpec};

/// Logging of every process a test starts.
const RUST_LOG: &str = "info,argus_node_agent=debug";

/// A controller plus node agents.
pub struct TestCluster {
    // Fields drop in order: the processes (and their logs) before the directory holding them.
    pub controller: Option<Controller>,
    pub agents: Vec<Proc>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    spec: ControllerSpec,
}

impl TestCluster {
    /// The controller of a test: a 100 ms tick, verbose logs, SQLite in the cluster's directory.
    pub fn spec() -> ControllerSpec {
        ControllerSpec::new()
            .tick(Duration::from_millis(100))
            .env("RUST_LOG", RUST_LOG)
    }

    /// Starts a cluster whose controller has `policy` (TOML) and otherwise [`Self::spec`].
    pub async fn with_policy(policy: &str) -> anyhow::Result<Self> {
        Self::start(Self::spec().policy(policy)).await
    }

    /// Starts a cluster's controller from `spec`, in a fresh directory.
    pub async fn start(spec: ControllerSpec) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("argus-cluster-")
            .tempdir()?;
        let mut c = Self {
            dir,
            port: spec.port(),
            controller: None,
            agents: Vec::new(),
            spec,
        };
        c.start_controller().await?;
        Ok(c)
    }

    /// (Re)starts the controller process from the same spec: same ports, same database.
    pub async fn start_controller(&mut self) -> anyhow::Result<()> {
        self.controller = Some(self.spec.start(self.dir.path()).await?);
        Ok(())
    }

    /// Stops the controller process.
    pub fn stop_controller(&mut self) {
        if let Some(mut c) = self.controller.take() {
            c.proc.stop();
        }
    }

    /// The controller's gRPC URL.
    pub fn url(&self) -> String {
        self.spec.url()
    }

    /// The controller's HTTP side port (`/healthz`, `/readyz`), when it has one.
    pub fn http(&self) -> Option<std::net::SocketAddr> {
        self.spec.config.http
    }

    /// The node agent of a test: `node_id` watching `socket`, probing every 250 ms, a heartbeat
    /// every 500 ms.
    pub fn agent_spec(&self, node_id: &str, socket: &Path) -> NodeAgentSpec {
        NodeAgentSpec::new(node_id, &self.url(), socket)
            .probe_interval(Duration::from_millis(250))
            .heartbeat(Duration::from_millis(500))
            .env("RUST_LOG", RUST_LOG)
    }

    /// Starts a node agent watching `socket`, as node `node_id`; returns its index in `agents`.
    pub fn start_agent(&mut self, node_id: &str, socket: &Path) -> anyhow::Result<usize> {
        let spec = self.agent_spec(node_id, socket);
        self.agents.push(spec.start(self.dir.path())?);
        Ok(self.agents.len() - 1)
    }

    /// An admin client.
    pub async fn admin(&self) -> anyhow::Result<AdminServiceClient<Channel>> {
        match &self.spec.client {
            Some(files) => crate::spec::admin_tls(&self.url(), files).await,
            None => crate::spec::admin(&self.url()).await,
        }
    }

    /// One session as the controller reports it, if known.
    pub async fn session(&self, node: &str, name: &str) -> anyhow::Result<Option<pb::Session>> {
        let r = self
            .admin()
            .await?
            .list_sessions(pb::ListSessionsRequest {
                node_id: node.to_owned(),
            })
            .await;
        let r = match r {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(None),
            Err(s) => return Err(s.into()),
        };
        Ok(r.sessions.into_iter().find(|s| s.session_name == name))
    }

    /// Waits until a session satisfies `pred`.
    pub async fn wait_session(
        &self,
        node: &str,
        name: &str,
        what: &str,
        deadline: Duration,
        pred: impl Fn(&pb::Session) -> bool,
    ) -> anyhow::Result<pb::Session> {
        let pred = &pred;
        eventually(what, deadline, || async move {
            Ok(self.session(node, name).await?.filter(|s| pred(s)))
        })
        .await
    }

    /// A controller over mutual TLS with certificates from `pki` that also takes the bearer
    /// `tokens` (name, role, token), and node agent `node_id` watching the tmux server at
    /// `socket` with its own certificate.
    pub async fn tls_with_tokens(
        pki: &crate::spec::Pki,
        tokens: &[(&str, argus_controller::auth::Role, &str)],
        node_id: &str,
        socket: &Path,
    ) -> anyhow::Result<Self> {
        let file = pki.dir.join("tokens.toml");
        let entries: String = tokens
            .iter()
            .map(|(name, role, token)| argus_controller::auth::token_entry(name, *role, token))
            .collect();
        std::fs::write(&file, entries)?;
        let mut spec = Self::spec().tls(pki);
        spec.config.tokens = Some(file);
        let mut c = Self::start(spec).await?;
        let node = c
            .agent_spec(node_id, socket)
            .tls(&c.url(), &pki.node(node_id)?);
        c.agents.push(node.start(c.dir.path())?);
        Ok(c)
    }

    /// `/readyz` on the controller's side port: (HTTP status, body).
    pub fn readyz(&self) -> anyhow::Result<(u16, String)> {
        use std::io::{Read, Write};
        let addr = self
            .http()
            .ok_or_else(|| anyhow::anyhow!("the controller serves no side port"))?;
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /readyz HTTP/1.0\r\nHost: x\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
        Ok((status, body))
    }

    /// Waits (30 s at most) until `/readyz` answers 200 (`ready`) or 503; returns its body.
    pub async fn wait_readyz(&self, ready: bool) -> anyhow::Result<String> {
        let want = if ready { 200 } else { 503 };
        eventually(
            &format!("/readyz to answer {want}"),
            Duration::from_secs(30),
            || async move {
                let (status, body) = self.readyz()?;
                Ok((status == want).then_some(body))
            },
        )
        .await
    }

    /// The controller's log so far.
    pub fn controller_log(&self) -> String {
        self.controller
            .as_ref()
            .map(|c| c.proc.log())
            .unwrap_or_default()
    }
}

/// A session reference for admin calls.
pub fn sref(node: &str, name: &str) -> Option<pb::SessionRef> {
    Some(pb::SessionRef {
        node_id: node.to_owned(),
        session_name: name.to_owned(),
        tmux_socket: String::new(),
    })
}

/// The command that runs the fake agent in `mode` (`idle`, `working`, `quiet`, ...), for a tmux
/// session.
pub fn fake_agent(mode: &str) -> String {
    let path = binary("fake-agent").expect("the fake agent is built with the workspace binaries");
    format!("{} {mode}", path.display())
}

/// Reads a `WatchEvents` stream until an event satisfies `pred`, failing after `deadline`.
pub async fn wait_event(
    events: &mut tonic::Streaming<pb::FleetEvent>,
    what: &str,
    deadline: Duration,
    pred: impl Fn(&pb::FleetEvent) -> bool,
) -> anyhow::Result<pb::FleetEvent> {
    let found = tokio::time::timeout(deadline, async {
        while let Some(e) = events.message().await? {
            if pred(&e) {
                return anyhow::Ok(e);
            }
        }
        anyhow::bail!("the event stream ended while waiting for {what}")
    })
    .await;
    match found {
        Ok(r) => r,
        Err(_) => anyhow::bail!("timed out after {deadline:?} waiting for {what}"),
    }
}
