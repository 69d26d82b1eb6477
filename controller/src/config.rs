//! The controller's configuration, layered: the defaults (written once, in `Default`), then a
//! TOML file (`--config FILE`), then `ARGUS_*` environment variables, then command-line flags.
//! The in-process node agent of `--local` is configured by the node agent's own
//! [`argus_node_agent::Config`], as the `[local]` table. The reloadable escalation policy is not
//! here: it stays in its own file (`policy`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use argus_node_agent::config::{ConfigError, NodeFlags, positive, read_toml};
use serde::{Deserialize, Serialize};

use argus_decide::policy::Policy;

/// Everything the controller needs to run. Every key is optional in the file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// gRPC listen address (node agents and the admin API).
    pub listen: SocketAddr,
    /// HTTP side port (`/healthz`, `/readyz`, `/metrics`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<SocketAddr>,
    /// Store URL (`sqlite://argus.db`, `postgres://USER@HOST:PORT/DB`).
    pub db: String,
    /// Where the store's writes spill while the database fails. SQLite's journal sits beside the
    /// database when unset; PostgreSQL has none unless set (writes then wait in memory). One file
    /// per controller process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub journal: Option<PathBuf>,
    /// With a PostgreSQL database (replicas): the gRPC URL other replicas forward commands for
    /// this replica's nodes to (default: `http://LISTEN`, or `https://localhost:PORT` with TLS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    /// Serve plaintext (loopback only unless `allow_remote_plaintext`); otherwise TLS 1.3 with
    /// `tls_cert`, `tls_key` and `client_ca`.
    pub insecure: bool,
    /// The controller's certificate chain (PEM); re-read when the file changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// The controller's private key (PEM); re-read when the file changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// The CA of node agents' and admin callers' client certificates (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
    /// Bearer tokens for the admin API (TOML, `[[token]]` with `name`, `role`, `blake3`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<PathBuf>,
    /// Allow plaintext on a non-loopback address.
    pub allow_remote_plaintext: bool,
    /// The policy file (TOML, reloadable), if any. Key `policy`.
    #[serde(rename = "policy", skip_serializing_if = "Option::is_none")]
    pub policy_file: Option<PathBuf>,
    /// Controller tick (time-driven decisions).
    #[serde(with = "humantime_serde")]
    pub tick: Duration,
    /// Webhook URLs for incident notifications (`http://` or `https://`).
    pub webhooks: Vec<String>,
    /// Record and serve Prometheus metrics (`/metrics` on the side port); `false` makes every
    /// metric a no-op (the benchmark's baseline).
    pub metrics: bool,
    /// Slack-compatible webhook URLs (a `{"text": ...}` body): incidents and needs-a-person
    /// events.
    pub slack_webhooks: Vec<String>,
    /// Alertmanager base URLs (`http://127.0.0.1:9093`): incidents and needs-a-person events are
    /// posted to `/api/v2/alerts` as alerts that resolve when they end.
    pub alertmanagers: Vec<String>,
    /// A CA (PEM) trusted by `https://` webhooks and the triage endpoint besides the system's
    /// roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbound_ca: Option<PathBuf>,
    /// With `local`: also start a private tmux server with simulated misbehaving agents and
    /// supervise it instead of this machine's tmux sessions.
    pub demo: bool,
    /// Bounds on what one node may report (the `[limits]` table).
    pub limits: Limits,
    /// Run a node agent in-process supervising this machine (`--local`, or a `[local]` table).
    /// Its `controller` and `insecure` are set from this controller's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local: Option<argus_node_agent::Config>,
    /// A policy to use when there is no policy file (the demo's); not a file key.
    #[serde(skip)]
    pub policy: Option<Policy>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            http: Some(SocketAddr::from(([127, 0, 0, 1], 7071))),
            db: "sqlite://argus.db".to_owned(),
            journal: None,
            advertise: None,
            insecure: false,
            tls_cert: None,
            tls_key: None,
            client_ca: None,
            tokens: None,
            allow_remote_plaintext: false,
            policy_file: None,
            tick: Duration::from_millis(500),
            webhooks: Vec::new(),
            metrics: true,
            slack_webhooks: Vec::new(),
            alertmanagers: Vec::new(),
            outbound_ca: None,
            demo: false,
            limits: Limits::default(),
            local: None,
            policy: None,
        }
    }
}

/// Bounds on what one node agent may report, so that one broken or hostile node cannot exhaust
/// the controller's memory or the database. What is over a limit is refused with a
/// `limit_exceeded` event naming the limit; the node's stream stays open.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Sessions tracked per node; sessions reported beyond it are ignored.
    pub sessions_per_node: usize,
    /// `@argus-*` labels per session; an observation with more is refused.
    pub labels_per_session: usize,
    /// Bytes of one label (name and value); an observation with a longer one is refused.
    pub label_bytes: usize,
    /// Events (deaths) and unexpected command results per second per node (a burst of five
    /// seconds' worth is allowed, for the events a reconnecting node agent kept); the excess is
    /// dropped (the next report carries the state). An answer to a
    /// command the controller waits for is never dropped.
    pub events_per_second: u32,
    /// A node gone (disconnected or down) for longer leaves the live view with its sessions;
    /// their history stays in the store.
    #[serde(with = "humantime_serde")]
    pub node_retention: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            sessions_per_node: 5_000,
            labels_per_session: 32,
            label_bytes: 4_096,
            events_per_second: 1_000,
            node_retention: Duration::from_secs(24 * 3600),
        }
    }
}

impl Limits {
    fn validate(&self) -> Result<(), ConfigError> {
        let at_least_one = |key: &str, v: usize| {
            if v == 0 {
                Err(ConfigError::invalid(
                    format!("limits.{key}"),
                    "must be at least 1",
                ))
            } else {
                Ok(())
            }
        };
        at_least_one("sessions_per_node", self.sessions_per_node)?;
        at_least_one("label_bytes", self.label_bytes)?;
        at_least_one("events_per_second", self.events_per_second as usize)?;
        positive("limits.node_retention", self.node_retention)?;
        Ok(())
    }
}

impl Config {
    /// The configuration as TOML, as `--print-config` shows it.
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        Ok(toml::to_string(self)?)
    }

    /// Checks every value, the `[local]` table's too; the error names the first bad key and why
    /// it is refused.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.insecure {
            for (key, flag, value) in [
                ("tls_cert", "--tls-cert", &self.tls_cert),
                ("tls_key", "--tls-key", &self.tls_key),
                ("client_ca", "--client-ca", &self.client_ca),
            ] {
                if value.is_none() {
                    return Err(ConfigError::invalid(
                        key,
                        format!(
                            "is required to serve TLS ({flag}; `argusctl certs` makes a \
                             development set), or set `insecure = true` (--insecure) to serve \
                             plaintext on loopback"
                        ),
                    ));
                }
            }
        } else if !crate::server::is_loopback(&self.listen) && !self.allow_remote_plaintext {
            return Err(ConfigError::invalid(
                "listen",
                format!(
                    "refusing to serve plaintext on non-loopback address {}: use a loopback \
                     address or set `allow_remote_plaintext = true` (--allow-remote-plaintext)",
                    self.listen
                ),
            ));
        }
        if self.db.is_empty() {
            return Err(ConfigError::invalid(
                "db",
                "must not be empty: give a store URL such as sqlite://argus.db",
            ));
        }
        positive("tick", self.tick)?;
        self.limits.validate()?;
        for (key, urls) in [
            ("webhooks", &self.webhooks),
            ("slack_webhooks", &self.slack_webhooks),
            ("alertmanagers", &self.alertmanagers),
        ] {
            outbound_urls(key, urls)?;
        }
        match &self.local {
            Some(local) => local.validate().map_err(|e| e.within("local"))?,
            None if self.demo => {
                return Err(ConfigError::invalid(
                    "demo",
                    "the demo runs under the local node agent: add --local or a [local] table",
                ));
            }
            None => {}
        }
        Ok(())
    }
}

/// Every URL of `key` is `http(s)://`, and plaintext only to a loopback host.
fn outbound_urls(key: &str, urls: &[String]) -> Result<(), ConfigError> {
    if let Some((i, url)) = urls
        .iter()
        .enumerate()
        .find(|(_, u)| !u.starts_with("http://") && !u.starts_with("https://"))
    {
        return Err(ConfigError::invalid(
            format!("{key}[{i}]"),
            format!("{url:?}: only http:// and https:// URLs are supported"),
        ));
    }
    if let Some((i, url)) = urls
        .iter()
        .enumerate()
        .find(|(_, u)| !crate::outbound::plaintext_allowed(u))
    {
        return Err(ConfigError::invalid(
            format!("{key}[{i}]"),
            format!("{url:?}: http:// is for loopback hosts only; use https://"),
        ));
    }
    Ok(())
}

// === Command line ===

/// The Argus controller: supervises fleets of AI coding agents in tmux.
///
/// Settings come from the defaults, then `--config FILE`, then `ARGUS_*` variables, then flags.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "argus-controller", version, about)]
pub struct Cli {
    /// A TOML configuration file (see `--print-config` for every key).
    #[arg(long, env = "ARGUS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// gRPC listen address (node agents and admin API). Key `listen`.
    #[arg(long, env = "ARGUS_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// HTTP side port (/healthz, /readyz, /metrics). Key `http`.
    #[arg(long, env = "ARGUS_HTTP")]
    pub http: Option<SocketAddr>,
    /// Store URL. Key `db`.
    #[arg(long, env = "ARGUS_DB")]
    pub db: Option<String>,
    /// Where the store's writes spill while the database fails (default: beside a SQLite
    /// database; none for PostgreSQL). Key `journal`.
    #[arg(long, env = "ARGUS_JOURNAL")]
    pub journal: Option<PathBuf>,
    /// With PostgreSQL: the gRPC URL other replicas reach this one at. Key `advertise`.
    #[arg(long, env = "ARGUS_ADVERTISE")]
    pub advertise: Option<String>,
    /// Serve plaintext (loopback only unless --allow-remote-plaintext). Key `insecure`.
    #[arg(long, env = "ARGUS_INSECURE", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub insecure: Option<bool>,
    /// The controller's certificate (PEM). Key `tls_cert`.
    #[arg(long, env = "ARGUS_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The controller's private key (PEM). Key `tls_key`.
    #[arg(long, env = "ARGUS_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// The CA of client certificates (PEM). Key `client_ca`.
    #[arg(long, env = "ARGUS_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,
    /// Bearer tokens file for the admin API. Key `tokens`.
    #[arg(long, env = "ARGUS_TOKENS")]
    pub tokens: Option<PathBuf>,
    /// Allow plaintext on a non-loopback address. Key `allow_remote_plaintext`.
    #[arg(long, env = "ARGUS_ALLOW_REMOTE_PLAINTEXT", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_remote_plaintext: Option<bool>,
    /// Policy file (TOML, reloadable). Key `policy`.
    #[arg(long, env = "ARGUS_POLICY")]
    pub policy: Option<PathBuf>,
    /// Webhook URL for incident notifications (repeatable; http:// or https://). Key
    /// `webhooks`.
    #[arg(long = "webhook", env = "ARGUS_WEBHOOK")]
    pub webhooks: Vec<String>,
    /// Record and serve Prometheus metrics (default true). Key `metrics`.
    #[arg(long, env = "ARGUS_METRICS", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub metrics: Option<bool>,
    /// Slack-compatible webhook URL (repeatable; a `{"text": ...}` body). Key `slack_webhooks`.
    #[arg(long = "slack-webhook", env = "ARGUS_SLACK_WEBHOOK")]
    pub slack_webhooks: Vec<String>,
    /// Alertmanager base URL (repeatable; alerts go to /api/v2/alerts). Key `alertmanagers`.
    #[arg(long = "alertmanager", env = "ARGUS_ALERTMANAGER")]
    pub alertmanagers: Vec<String>,
    /// A CA (PEM) trusted by https:// webhooks and triage besides the system's roots. Key
    /// `outbound_ca`.
    #[arg(long, env = "ARGUS_OUTBOUND_CA")]
    pub outbound_ca: Option<PathBuf>,
    /// Controller tick (time-driven decisions). Key `tick`.
    #[arg(long, env = "ARGUS_TICK", value_parser = humantime::parse_duration)]
    pub tick: Option<Duration>,
    /// Also run a node agent in-process supervising this machine's tmux sessions. Key: a
    /// `[local]` table.
    #[arg(long, env = "ARGUS_LOCAL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub local: Option<bool>,
    /// With --local: also start a private tmux server with simulated misbehaving agents and
    /// supervise it (instead of this machine's tmux sessions). Key `demo`.
    #[arg(long, env = "ARGUS_DEMO", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub demo: Option<bool>,
    /// The local node agent's flags (with --local); keys of the `[local]` table.
    #[command(flatten, next_help_heading = "The local node agent (with --local)")]
    pub node: NodeFlags,
}

impl Cli {
    /// The effective configuration, validated.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let config = self.resolve()?;
        config.validate()?;
        Ok(config)
    }

    /// The effective configuration, not yet validated: defaults, the file, then the flags (and
    /// their variables). The node flags apply only when the local node agent runs.
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        let mut config = match &self.config {
            Some(path) => read_toml(path)?,
            None => Config::default(),
        };
        if let Some(v) = self.listen {
            config.listen = v;
        }
        if let Some(v) = self.http {
            config.http = Some(v);
        }
        if let Some(v) = &self.db {
            config.db.clone_from(v);
        }
        if let Some(v) = &self.advertise {
            config.advertise = Some(v.clone());
        }
        if let Some(v) = self.insecure {
            config.insecure = v;
        }
        if let Some(v) = self.allow_remote_plaintext {
            config.allow_remote_plaintext = v;
        }
        for (flag, key) in [
            (&self.journal, &mut config.journal),
            (&self.tls_cert, &mut config.tls_cert),
            (&self.tls_key, &mut config.tls_key),
            (&self.client_ca, &mut config.client_ca),
            (&self.tokens, &mut config.tokens),
        ] {
            if let Some(v) = flag {
                *key = Some(v.clone());
            }
        }
        if let Some(v) = &self.policy {
            config.policy_file = Some(v.clone());
        }
        if !self.webhooks.is_empty() {
            config.webhooks.clone_from(&self.webhooks);
        }
        if let Some(v) = self.metrics {
            config.metrics = v;
        }
        if !self.slack_webhooks.is_empty() {
            config.slack_webhooks.clone_from(&self.slack_webhooks);
        }
        if !self.alertmanagers.is_empty() {
            config.alertmanagers.clone_from(&self.alertmanagers);
        }
        if let Some(v) = &self.outbound_ca {
            config.outbound_ca = Some(v.clone());
        }
        if let Some(v) = self.tick {
            config.tick = v;
        }
        if let Some(v) = self.demo {
            config.demo = v;
        }
        match self.local {
            Some(true) => config.local = Some(config.local.take().unwrap_or_default()),
            Some(false) => config.local = None,
            None => {}
        }
        let url = local_url(&config);
        if let Some(local) = &mut config.local {
            self.node.apply(local);
            local.controller = url;
            local.insecure = config.insecure;
        }
        Ok(config)
    }
}

/// The URL the in-process node agent dials: with TLS, `localhost` (the name `argusctl certs`
/// puts in the controller's certificate); its `[local]` table then needs `ca`, `cert`, `key`.
pub fn local_url(config: &Config) -> String {
    if config.insecure {
        format!("http://{}", config.listen)
    } else {
        format!("https://localhost:{}", config.listen.port())
    }
}

// === argusctl ===

/// `argusctl`'s configuration: the defaults, then `~/.config/argus/config.toml` (or
/// `--config FILE`), then `ARGUS_*` environment variables, then flags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CtlConfig {
    /// The controller's gRPC URL (`https://HOST:PORT`, or `http://` for a plaintext one).
    pub controller: String,
    /// The CA that signed the controller's certificate (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// This caller's certificate (PEM, URI SAN `spiffe://argus/user/<name>/<role>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// A bearer token, instead of a certificate (or the file that holds it, as `@PATH`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl Default for CtlConfig {
    fn default() -> Self {
        Self {
            controller: "http://127.0.0.1:7070".to_owned(),
            ca: None,
            cert: None,
            key: None,
            token: None,
        }
    }
}

impl CtlConfig {
    /// `~/.config/argus/config.toml` (under `$XDG_CONFIG_HOME` when set).
    pub fn default_path() -> Option<PathBuf> {
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
        Some(base.join("argus").join("config.toml"))
    }

    /// The file at `path` (given explicitly: it must exist), else the default file if it
    /// exists, over the defaults.
    pub fn load(path: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        match path {
            Some(p) => read_toml(p),
            None => match Self::default_path().filter(|p| p.exists()) {
                Some(p) => read_toml(&p),
                None => Ok(Self::default()),
            },
        }
    }

    /// Checks the combination; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.controller.split_once("://") {
            Some(("http", rest)) if !rest.is_empty() => {}
            Some(("https", rest)) if !rest.is_empty() => {
                if self.ca.is_none() {
                    return Err(ConfigError::invalid(
                        "ca",
                        "is required with an https:// controller (--ca or ARGUS_CA): the CA \
                         that signed the controller's certificate",
                    ));
                }
                if self.cert.is_some() != self.key.is_some() {
                    return Err(ConfigError::invalid(
                        if self.cert.is_none() { "cert" } else { "key" },
                        "cert and key go together",
                    ));
                }
            }
            _ => {
                return Err(ConfigError::invalid(
                    "controller",
                    format!(
                        "{:?} is not an https://HOST:PORT or http://HOST:PORT URL",
                        self.controller
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("argus-controller").chain(args.iter().copied()))
            .expect("flags parse")
    }

    #[test]
    fn local_flags_configure_the_embedded_node_agent() {
        let c = cli(&[
            "--insecure",
            "--local",
            "--tmux-socket",
            "/tmp/s",
            "--probe-interval",
            "250ms",
            "--node-id",
            "here",
        ])
        .load()
        .expect("valid");
        let local = c.local.expect("local node agent");
        assert_eq!(local.tmux_sockets, vec![PathBuf::from("/tmp/s")]);
        assert_eq!(local.probe_interval, Duration::from_millis(250));
        assert_eq!(local.node_id.as_deref(), Some("here"));
        assert_eq!(
            local.state_dir,
            argus_node_agent::Config::default().state_dir
        );
        assert!(local.insecure);
        // Without --local the node flags have nothing to configure, as before.
        let c = cli(&["--insecure", "--node-id", "here"])
            .load()
            .expect("valid");
        assert!(c.local.is_none());
    }

    #[test]
    fn flags_override_the_file_and_local_table() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("controller.toml");
        std::fs::write(
            &file,
            "insecure = true\ntick = \"2s\"\ndb = \"sqlite://file.db\"\n\n[local]\nstate_dir = \"/from/file\"\nheartbeat = \"7s\"\n",
        )
        .expect("write");
        let path = file.display().to_string();
        let c = cli(&[
            "--config",
            &path,
            "--tick",
            "100ms",
            "--state-dir",
            "/from/flag",
        ])
        .load()
        .expect("valid");
        assert_eq!(c.tick, Duration::from_millis(100));
        assert_eq!(c.db, "sqlite://file.db");
        let local = c.local.expect("[local] enables the local node agent");
        assert_eq!(local.state_dir, PathBuf::from("/from/flag"));
        assert_eq!(local.heartbeat, Duration::from_secs(7));
        let c = cli(&["--config", &path, "--local=false"])
            .load()
            .expect("valid");
        assert!(c.local.is_none());
    }

    #[test]
    fn validation_names_the_key() {
        let err = |args: &[&str]| cli(args).load().expect_err("refused").to_string();
        assert!(err(&[]).contains("tls_cert: is required to serve TLS (--tls-cert"));
        assert!(
            err(&["--tls-cert", "c.pem", "--tls-key", "k.pem"]).contains("client_ca: is required")
        );
        cli(&[
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--client-ca",
            "ca.pem",
            "--listen",
            "0.0.0.0:7070",
        ])
        .load()
        .expect("TLS may listen anywhere");
        assert!(err(&["--insecure", "--listen", "0.0.0.0:7070"]).contains("listen: refusing"));
        cli(&[
            "--insecure",
            "--listen",
            "0.0.0.0:7070",
            "--allow-remote-plaintext",
        ])
        .load()
        .expect("forced");
        assert!(err(&["--insecure", "--tick", "0s"]).contains("tick: must be"));
        assert!(err(&["--insecure", "--demo"]).contains("demo: the demo runs under"));
        assert!(err(&["--insecure", "--webhook", "ftp://x"]).contains("webhooks[0]: \"ftp://x\""));
        assert!(
            err(&["--insecure", "--local", "--probe-interval", "0s"])
                .contains("local.probe_interval: must be")
        );
    }

    #[test]
    fn unknown_keys_are_refused_also_in_local() {
        let e = toml::from_str::<Config>("[local]\nprobe = 1").expect_err("unknown key");
        assert!(e.to_string().contains("unknown field `probe`"), "{e}");
    }

    #[test]
    fn a_remote_plaintext_webhook_is_refused_naming_its_key() {
        let e = cli(&["--insecure", "--webhook", "http://hooks.example.com/x"])
            .load()
            .expect_err("refused");
        let e = e.to_string();
        assert!(
            e.contains("webhooks[0]") && e.contains("loopback hosts only"),
            "{e}"
        );
    }

    #[test]
    fn alert_targets_layer_and_are_checked_like_webhooks() {
        let c = cli(&[
            "--insecure",
            "--alertmanager",
            "http://127.0.0.1:9093",
            "--slack-webhook",
            "https://hooks.example.com/s",
        ])
        .load()
        .expect("valid");
        assert_eq!(c.alertmanagers, ["http://127.0.0.1:9093"]);
        assert_eq!(c.slack_webhooks, ["https://hooks.example.com/s"]);
        let e = cli(&["--insecure", "--alertmanager", "http://am.example.com:9093"])
            .load()
            .expect_err("remote plaintext")
            .to_string();
        assert!(
            e.contains("alertmanagers[0]") && e.contains("loopback"),
            "{e}"
        );
        let e = cli(&["--insecure", "--slack-webhook", "ftp://x"])
            .load()
            .expect_err("not http")
            .to_string();
        assert!(e.contains("slack_webhooks[0]"), "{e}");
    }

    #[test]
    fn printed_config_parses_back() {
        let c = cli(&[
            "--insecure",
            "--local",
            "--webhook",
            "https://h/x",
            "--policy",
            "p.toml",
        ])
        .load()
        .expect("valid");
        let text = c.to_toml().expect("toml");
        assert!(text.contains("policy = \"p.toml\""), "{text}");
        assert!(text.contains("[local]"), "{text}");
        let back: Config = toml::from_str(&text).expect("parses back");
        assert_eq!(back.to_toml().expect("toml"), text);
        assert_eq!(back.local, c.local);
    }

    #[test]
    fn argusctl_config_layers_and_checks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("config.toml");
        std::fs::write(
            &file,
            "controller = \"https://ctl:7070\"\nca = \"/c/ca.pem\"\ncert = \"/c/me.pem\"\nkey = \"/c/me-key.pem\"\n",
        )
        .expect("write");
        let c = CtlConfig::load(Some(&file)).expect("loads");
        assert_eq!(c.controller, "https://ctl:7070");
        c.validate().expect("valid");
        let no_ca = CtlConfig {
            ca: None,
            ..c.clone()
        };
        assert!(
            no_ca
                .validate()
                .expect_err("no ca")
                .to_string()
                .contains("ca: is required")
        );
        let half = CtlConfig { key: None, ..c };
        assert!(
            half.validate()
                .expect_err("half")
                .to_string()
                .contains("key: cert and key")
        );
    }
}
