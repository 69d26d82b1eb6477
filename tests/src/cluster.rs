//! `TestCluster`: a real controller and real node agents as child processes, on loopback.
//! Children are killed by pid on drop; when the test thread is panicking their logs are printed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use argus_proto::v1 as pb;
use argus_proto::v1::admin_service_client::AdminServiceClient;
use tonic::transport::Channel;

use crate::{binary, eventually, free_port};

/// One started binary.
pub struct Proc {
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `program` with `args`, its output going to `log`.
    pub fn start_binary(
        name: &str,
        program: &Path,
        args: &[String],
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let file = std::fs::File::create(&log)?;
        let child = Command::new(program)
            .args(args)
            .env("RUST_LOG", "info,argus_node_agent=debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log,
        })
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the process: SIGTERM by pid (so it ends its own children, such as a node agent's
    /// tmux control client), SIGKILL after 3 s, then reaps it.
    pub fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while std::time::Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
        // The test harness shows a test's output only when it fails: then these logs explain it.
        let log = self.log();
        let tail: String = log
            .lines()
            .rev()
            .take(300)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        eprintln!("===== last lines of the log of {} =====\n{tail}", self.name);
    }
}

/// A controller plus node agents.
pub struct TestCluster {
    // Fields drop in order: the processes (and their logs) before the directory holding them.
    pub controller: Option<Proc>,
    pub agents: Vec<Proc>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    controller_args: Vec<String>,
}

impl TestCluster {
    /// Starts a controller (SQLite in a temp dir) with `policy` (TOML) and extra flags.
    pub async fn start(policy: &str, extra: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("argus-cluster-")
            .tempdir()?;
        let port = free_port();
        let policy_path = dir.path().join("policy.toml");
        std::fs::write(&policy_path, policy)?;
        let mut args = vec![
            "--insecure".to_owned(),
            "--listen".to_owned(),
            format!("127.0.0.1:{port}"),
            "--http".to_owned(),
            format!("127.0.0.1:{}", free_port()),
            "--db".to_owned(),
            format!("sqlite://{}", dir.path().join("argus.db").display()),
            "--policy".to_owned(),
            policy_path.display().to_string(),
            "--tick".to_owned(),
            "100ms".to_owned(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let mut c = Self {
            dir,
            port,
            controller: None,
            agents: Vec::new(),
            controller_args: args,
        };
        c.start_controller().await?;
        Ok(c)
    }

    /// (Re)starts the controller process with the same flags and database.
    pub async fn start_controller(&mut self) -> anyhow::Result<()> {
        let n = self.agents.len() + usize::from(self.controller.is_some());
        let log = self
            .dir
            .path()
            .join(format!("controller-{n}-{}.log", crate::free_port()));
        self.controller = Some(Proc::start_binary(
            "argus-controller",
            &binary("argus-controller"),
            &self.controller_args,
            log,
        )?);
        let url = self.url();
        eventually("the controller to answer", Duration::from_secs(20), || {
            let url = url.clone();
            async move {
                let ch = Channel::from_shared(url)?.connect().await?;
                AdminServiceClient::new(ch)
                    .list_nodes(pb::ListNodesRequest {})
                    .await?;
                Ok(Some(()))
            }
        })
        .await
    }

    /// Stops the controller process.
    pub fn stop_controller(&mut self) {
        if let Some(mut c) = self.controller.take() {
            c.stop();
        }
    }

    /// The controller's gRPC URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts a node agent watching `socket`, as node `node_id`.
    pub fn start_agent(&mut self, node_id: &str, socket: &Path) -> anyhow::Result<usize> {
        let state = self.dir.path().join(format!("state-{node_id}"));
        let args = vec![
            "--insecure".to_owned(),
            "--controller".to_owned(),
            self.url(),
            "--node-id".to_owned(),
            node_id.to_owned(),
            "--tmux-socket".to_owned(),
            socket.display().to_string(),
            "--state-dir".to_owned(),
            state.display().to_string(),
            "--probe-interval".to_owned(),
            "250ms".to_owned(),
            "--heartbeat".to_owned(),
            "500ms".to_owned(),
        ];
        let log = self
            .dir
            .path()
            .join(format!("agent-{node_id}-{}.log", self.agents.len()));
        self.agents.push(Proc::start_binary(
            &format!("argus-node-agent {node_id}"),
            &binary("argus-node-agent"),
            &args,
            log,
        )?);
        Ok(self.agents.len() - 1)
    }

    /// An admin client.
    pub async fn admin(&self) -> anyhow::Result<AdminServiceClient<Channel>> {
        let ch = Channel::from_shared(self.url())?.connect().await?;
        Ok(AdminServiceClient::new(ch))
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

    /// The controller's log so far.
    pub fn controller_log(&self) -> String {
        self.controller.as_ref().map(Proc::log).unwrap_or_default()
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

/// Path of the fake agent binary.
pub fn fake_agent() -> PathBuf {
    binary("fake-agent")
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
