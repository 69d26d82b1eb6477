//! Typed specs of the processes a test or a benchmark starts: a [`ControllerSpec`] or a
//! [`NodeAgentSpec`] holds the binary's own configuration type, is written as its `--config`
//! file, and started as a [`Proc`]. This is the one place that knows how the binaries are
//! configured; relative paths in a spec are relative to the directory it is started in.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use argus_proto::v1 as pb;
use argus_proto::v1::admin_service_client::AdminServiceClient;
use tonic::transport::Channel;

use crate::process::{Proc, binary};
use crate::{eventually, free_port};

/// A unique suffix for the files of one start, so that restarts keep earlier logs.
fn next_start() -> usize {
    static STARTS: AtomicUsize = AtomicUsize::new(0);
    STARTS.fetch_add(1, Ordering::Relaxed)
}

/// `path` under `dir` unless absolute.
fn under(dir: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        dir.join(path)
    }
}

/// Writes `config` as `NAME-N.toml` in `dir` and starts `program --config` on it.
fn spawn(
    dir: &Path,
    program: &str,
    label: &str,
    config: &str,
    env: &[(String, String)],
    quiet: bool,
) -> anyhow::Result<Proc> {
    let n = next_start();
    let slug: String = label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let file = dir.join(format!("{slug}-{n}.toml"));
    std::fs::write(&file, config).with_context(|| format!("writing {}", file.display()))?;
    let proc = Proc::start(
        label,
        &binary(program)?,
        &["--config".to_owned(), file.display().to_string()],
        env,
        dir.join(format!("{slug}-{n}.log")),
    )?;
    Ok(if quiet { proc.quiet() } else { proc })
}

// === TLS ===

/// A test PKI in a directory: a CA, the controller's certificate for `localhost` and
/// `127.0.0.1`, an admin's certificate; node and user certificates on demand.
#[derive(Debug, Clone)]
pub struct Pki {
    pub dir: PathBuf,
}

/// The files a TLS client presents.
#[derive(Debug, Clone)]
pub struct ClientFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ClientFiles {
    /// tonic's client TLS configuration of these files.
    pub fn tls_config(&self) -> anyhow::Result<tonic::transport::ClientTlsConfig> {
        Ok(tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(std::fs::read(
                &self.ca,
            )?))
            .identity(tonic::transport::Identity::from_pem(
                std::fs::read(&self.cert)?,
                std::fs::read(&self.key)?,
            )))
    }
}

impl Pki {
    /// A new CA with the controller's and an admin's (`root`) certificates in `dir`.
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        use argus_controller::pki::{Leaf, Validity, dir_ca, write_pair};
        let (ca, _) = dir_ca(dir, Validity::days(2))?;
        write_pair(
            dir,
            "controller",
            &ca.issue(
                &Leaf::Controller(vec!["localhost".into(), "127.0.0.1".into()]),
                Validity::days(2),
            )?,
        )?;
        let pki = Self {
            dir: dir.to_owned(),
        };
        pki.user("root", argus_controller::auth::Role::Admin)?;
        Ok(pki)
    }

    fn issue(&self, stem: &str, leaf: &argus_controller::pki::Leaf) -> anyhow::Result<ClientFiles> {
        use argus_controller::pki::{Validity, dir_ca, write_pair};
        let (ca, _) = dir_ca(&self.dir, Validity::days(2))?;
        let cert = write_pair(&self.dir, stem, &ca.issue(leaf, Validity::days(2))?)?;
        Ok(ClientFiles {
            ca: self.ca(),
            cert,
            key: self.dir.join(format!("{stem}-key.pem")),
        })
    }

    /// The CA's certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A node agent's certificate for `id`.
    pub fn node(&self, id: &str) -> anyhow::Result<ClientFiles> {
        self.issue(
            &format!("node-{id}"),
            &argus_controller::pki::Leaf::Node(id.to_owned()),
        )
    }

    /// A caller's certificate.
    pub fn user(
        &self,
        name: &str,
        role: argus_controller::auth::Role,
    ) -> anyhow::Result<ClientFiles> {
        self.issue(
            &format!("user-{name}"),
            &argus_controller::pki::Leaf::User(name.to_owned(), role),
        )
    }

    /// The admin's (`root`) files.
    pub fn admin(&self) -> ClientFiles {
        ClientFiles {
            ca: self.ca(),
            cert: self.dir.join("user-root.pem"),
            key: self.dir.join("user-root-key.pem"),
        }
    }
}

// === Controller ===

/// A controller to start: its configuration, its policy file and its environment. The gRPC and
/// HTTP ports are chosen when the spec is made, so that a restart from the same spec listens
/// where the node agents dial.
#[derive(Debug, Clone)]
pub struct ControllerSpec {
    /// The controller's configuration; `db` empty means `argus.db` in the run directory.
    pub config: argus_controller::Config,
    /// The policy file's text, written as `policy.toml` in the run directory.
    pub policy: String,
    /// Extra environment (`RUST_LOG`).
    pub env: Vec<(String, String)>,
    /// Killed without showing its log when dropped (benchmarks).
    pub quiet: bool,
    /// The admin client's files when the controller serves TLS.
    pub client: Option<ClientFiles>,
}

impl Default for ControllerSpec {
    fn default() -> Self {
        Self::new()
    }
}

impl ControllerSpec {
    /// Plaintext on free loopback ports, the default policy.
    pub fn new() -> Self {
        Self {
            config: argus_controller::Config {
                insecure: true,
                listen: SocketAddr::from(([127, 0, 0, 1], free_port())),
                http: Some(SocketAddr::from(([127, 0, 0, 1], free_port()))),
                db: String::new(),
                ..argus_controller::Config::default()
            },
            policy: String::new(),
            env: Vec::new(),
            quiet: false,
            client: None,
        }
    }

    /// Serves mTLS with `pki`'s controller certificate; the harness calls as `pki`'s admin.
    pub fn tls(mut self, pki: &Pki) -> Self {
        self.config.insecure = false;
        self.config.tls_cert = Some(pki.dir.join("controller.pem"));
        self.config.tls_key = Some(pki.dir.join("controller-key.pem"));
        self.config.client_ca = Some(pki.ca());
        self.client = Some(pki.admin());
        self
    }

    /// The policy file's text (TOML).
    pub fn policy(mut self, toml: &str) -> Self {
        self.policy = toml.to_owned();
        self
    }

    /// The controller tick.
    pub fn tick(mut self, tick: Duration) -> Self {
        self.config.tick = tick;
        self
    }

    /// One more incident webhook.
    pub fn webhook(mut self, url: &str) -> Self {
        self.config.webhooks.push(url.to_owned());
        self
    }

    /// An environment variable for the process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Killed without showing its log when dropped (benchmarks).
    pub fn quiet(mut self) -> Self {
        self.quiet = true;
        self
    }

    /// The gRPC port.
    pub fn port(&self) -> u16 {
        self.config.listen.port()
    }

    /// The gRPC URL (`https://localhost:PORT` with TLS).
    pub fn url(&self) -> String {
        if self.config.insecure {
            format!("http://{}", self.config.listen)
        } else {
            format!("https://localhost:{}", self.port())
        }
    }

    /// The configuration as started in `dir`: the policy file and the database there.
    pub fn config_in(&self, dir: &Path) -> argus_controller::Config {
        let mut config = self.config.clone();
        config.policy_file = Some(dir.join("policy.toml"));
        if config.db.is_empty() {
            config.db = format!("sqlite://{}", dir.join("argus.db").display());
        }
        config
    }

    /// Starts the controller in `dir` and waits until it answers.
    pub async fn start(&self, dir: &Path) -> anyhow::Result<Controller> {
        std::fs::write(dir.join("policy.toml"), &self.policy)?;
        let config = self.config_in(dir);
        let db = config
            .db
            .strip_prefix("sqlite://")
            .map(PathBuf::from)
            .unwrap_or_default();
        let proc = spawn(
            dir,
            "argus-controller",
            "argus-controller",
            &config.to_toml()?,
            &self.env,
            self.quiet,
        )?;
        let mut c = Controller {
            proc,
            port: self.port(),
            db,
            client: self.client.clone(),
        };
        if let Err(e) = c.wait_ready().await {
            c.proc.check_alive()?;
            return Err(e);
        }
        Ok(c)
    }
}

/// A started controller.
pub struct Controller {
    pub proc: Proc,
    pub port: u16,
    /// The SQLite database file.
    pub db: PathBuf,
    /// The admin client's files when the controller serves TLS.
    pub client: Option<ClientFiles>,
}

impl Controller {
    /// The gRPC URL.
    pub fn url(&self) -> String {
        match self.client {
            None => format!("http://127.0.0.1:{}", self.port),
            Some(_) => format!("https://localhost:{}", self.port),
        }
    }

    /// An admin client (over mTLS as the test PKI's admin, when the controller serves TLS).
    pub async fn admin(&self) -> anyhow::Result<AdminServiceClient<Channel>> {
        match &self.client {
            None => admin(&self.url()).await,
            Some(files) => admin_tls(&self.url(), files).await,
        }
    }

    /// Waits until the admin API answers.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        eventually(
            "the controller to answer",
            Duration::from_secs(20),
            || async move {
                self.admin()
                    .await?
                    .list_nodes(pb::ListNodesRequest {})
                    .await?;
                Ok(Some(()))
            },
        )
        .await
    }

    /// The sessions of one node.
    pub async fn sessions(&self, node: &str) -> anyhow::Result<Vec<pb::Session>> {
        Ok(self
            .admin()
            .await?
            .list_sessions(pb::ListSessionsRequest {
                node_id: node.to_owned(),
            })
            .await?
            .into_inner()
            .sessions)
    }

    /// Size and modification time of the SQLite files (database, WAL): any durable write
    /// changes them.
    pub fn db_files(&self) -> Vec<(String, u64, Option<std::time::SystemTime>)> {
        ["", "-wal"]
            .iter()
            .map(|suffix| {
                let path = PathBuf::from(format!("{}{suffix}", self.db.display()));
                let meta = std::fs::metadata(&path).ok();
                (
                    path.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    meta.as_ref().map_or(0, std::fs::Metadata::len),
                    meta.and_then(|m| m.modified().ok()),
                )
            })
            .collect()
    }
}

/// An admin client of the controller at `url` (large responses allowed: benchmarks list
/// thousands of sessions).
pub async fn admin(url: &str) -> anyhow::Result<AdminServiceClient<Channel>> {
    let ch = Channel::from_shared(url.to_owned())?.connect().await?;
    Ok(AdminServiceClient::new(ch).max_decoding_message_size(256 << 20))
}

/// An admin client of the controller at `url` over mTLS with `files`.
pub async fn admin_tls(
    url: &str,
    files: &ClientFiles,
) -> anyhow::Result<AdminServiceClient<Channel>> {
    let ch = Channel::from_shared(url.to_owned())?
        .tls_config(files.tls_config()?)?
        .connect()
        .await?;
    Ok(AdminServiceClient::new(ch).max_decoding_message_size(256 << 20))
}

// === Node agent ===

/// A node agent to start: its configuration and environment.
#[derive(Debug, Clone)]
pub struct NodeAgentSpec {
    /// The node agent's configuration; a relative `state_dir` is under the run directory.
    pub config: argus_node_agent::Config,
    /// Extra environment (`RUST_LOG`).
    pub env: Vec<(String, String)>,
    /// Killed without showing its log when dropped (benchmarks).
    pub quiet: bool,
}

impl NodeAgentSpec {
    /// Node `node_id` watching the tmux server at `socket`, reporting to `controller`
    /// (plaintext), its state in `state-NODE` of the run directory.
    pub fn new(node_id: &str, controller: &str, socket: &Path) -> Self {
        Self {
            config: argus_node_agent::Config {
                controller: controller.to_owned(),
                insecure: true,
                node_id: Some(node_id.to_owned()),
                tmux_sockets: vec![socket.to_owned()],
                state_dir: PathBuf::from(format!("state-{node_id}")),
                ..argus_node_agent::Config::default()
            },
            env: Vec::new(),
            quiet: false,
        }
    }

    /// Connects over mTLS to `controller` (an https URL) with `files`.
    pub fn tls(mut self, controller: &str, files: &ClientFiles) -> Self {
        self.config.controller = controller.to_owned();
        self.config.insecure = false;
        self.config.ca = Some(files.ca.clone());
        self.config.cert = Some(files.cert.clone());
        self.config.key = Some(files.key.clone());
        self
    }

    /// Obeys restarts with any command.
    pub fn allow_any_restart_command(mut self) -> Self {
        self.config.allow_any_restart_command = true;
        self
    }

    /// The probe interval.
    pub fn probe_interval(mut self, every: Duration) -> Self {
        self.config.probe_interval = every;
        self
    }

    /// The heartbeat interval.
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.config.heartbeat = every;
        self
    }

    /// The state directory (relative: under the run directory).
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.state_dir = dir.into();
        self
    }

    /// An environment variable for the process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Killed without showing its log when dropped (benchmarks).
    pub fn quiet(mut self) -> Self {
        self.quiet = true;
        self
    }

    /// The configuration as started in `dir`.
    pub fn config_in(&self, dir: &Path) -> argus_node_agent::Config {
        let mut config = self.config.clone();
        config.state_dir = under(dir, &config.state_dir);
        config
    }

    /// Starts the node agent in `dir` (it does not wait for the attach).
    pub fn start(&self, dir: &Path) -> anyhow::Result<Proc> {
        let label = format!("argus-node-agent {}", self.config.node_id());
        spawn(
            dir,
            "argus-node-agent",
            &label,
            &self.config_in(dir).to_toml()?,
            &self.env,
            self.quiet,
        )
    }
}
