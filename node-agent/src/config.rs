//! The node agent's configuration, layered: the defaults (written once, in `Default`), then a
//! TOML file (`--config FILE`), then `ARGUS_*` environment variables, then command-line flags.
//! The controller embeds the same [`Config`] as its `[local]` table.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Everything the node agent needs to run. Every key is optional in the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The controller's URL: `https://HOST:PORT` (its certificate must name HOST), or
    /// `http://HOST:PORT` with `insecure`. Set by the controller in its `[local]` table.
    pub controller: String,
    /// Talk plaintext to the controller (`http://`), for a controller on loopback or a trusted
    /// network. Set by the controller in its `[local]` table.
    pub insecure: bool,
    /// The CA that signed the controller's certificate (PEM). Key `ca`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// This node's certificate (PEM), with the URI SAN `spiffe://argus/node/<node_id>`; re-read
    /// at every connection, so a rotated file is used from the next reconnect.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// Obey a restart whose command is neither the session's `@argus-restart` label nor its
    /// pane's start command (off: a compromised controller is not a remote shell on this host).
    pub allow_any_restart_command: bool,
    /// This node's id; the host name when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// tmux server sockets to watch (empty: the user's default server).
    pub tmux_sockets: Vec<PathBuf>,
    /// Where the highest accepted epoch is kept.
    pub state_dir: PathBuf,
    /// How often every tmux server is probed.
    #[serde(with = "humantime_serde")]
    pub probe_interval: Duration,
    /// How often the link sends a heartbeat.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// Screen lines hashed and classified.
    pub screen_lines: usize,
    /// An operator's agent profiles (TOML) layered over the built-in ones.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profiles: Option<PathBuf>,
    /// Events kept while the controller is away.
    pub event_buffer: usize,
    /// How long an agent's hook report counts after its hook fired (a "working" report at most
    /// 2 minutes); after that the next source (title, files, screen) decides.
    #[serde(with = "humantime_serde")]
    pub hook_fresh: Duration,
    /// Checkpoints before kills and restarts: `[checkpoint]`.
    pub checkpoint: crate::checkpoint::CheckpointConfig,
    /// An HTTP port serving `/healthz` and `/metrics` (Prometheus), if any (off by default; it
    /// shows counts only, no session names, without authentication).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_listen: Option<std::net::SocketAddr>,
    /// Labels for untagged sessions by what this node sees of them (`[[selectors]]`): a
    /// session's own `@argus-*` options win, then the first selector that matches.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub selectors: Vec<argus_shared::selector::SelectorSpec>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            controller: "http://127.0.0.1:7070".to_owned(),
            insecure: false,
            ca: None,
            cert: None,
            key: None,
            allow_any_restart_command: false,
            node_id: None,
            tmux_sockets: Vec::new(),
            state_dir: PathBuf::from(".argus-node"),
            probe_interval: argus_proto::DEFAULT_PROBE_INTERVAL,
            heartbeat: Duration::from_secs(2),
            screen_lines: argus_shared::screen::DEFAULT_LINES,
            profiles: None,
            event_buffer: 4096,
            hook_fresh: Duration::from_secs(10 * 60),
            checkpoint: crate::checkpoint::CheckpointConfig::default(),
            http_listen: None,
            selectors: Vec::new(),
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config file {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not a valid configuration (syntax, unknown key, wrong type).
    #[error("in config file {path}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    /// A value is out of its range; `key` is the file key.
    #[error("invalid configuration: {key}: {why}")]
    Invalid { key: String, why: String },
    /// The effective configuration could not be written as TOML.
    #[error("writing the configuration as TOML")]
    Print(#[from] toml::ser::Error),
}

impl ConfigError {
    /// An `Invalid` error for `key`.
    pub fn invalid(key: impl Into<String>, why: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            why: why.into(),
        }
    }

    /// The same error with its key under `table` (`node_id` becomes `local.node_id`).
    pub fn within(self, table: &str) -> Self {
        match self {
            Self::Invalid { key, why } => Self::Invalid {
                key: format!("{table}.{key}"),
                why,
            },
            other => other,
        }
    }
}

/// Reads a TOML configuration file of any of the binaries' configurations.
pub fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source,
    })
}

impl Config {
    /// The file at `path` over the defaults (not yet validated).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        read_toml(path)
    }

    /// The configuration as TOML, as `--print-config` shows it.
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        Ok(toml::to_string(self)?)
    }

    /// This node's id: the configured one, else the host name.
    pub fn node_id(&self) -> String {
        self.node_id.clone().unwrap_or_else(crate::hostname)
    }

    /// Checks every value; the error names the first bad key and why it is refused.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let scheme = if self.insecure { "http" } else { "https" };
        match self.controller.split_once("://") {
            Some((s, rest)) if s == scheme && !rest.is_empty() => {}
            Some(("https", _)) => {
                return Err(ConfigError::invalid(
                    "controller",
                    format!(
                        "{:?}: an https:// controller needs TLS: drop `insecure`",
                        self.controller
                    ),
                ));
            }
            Some(("http", _)) => {
                return Err(ConfigError::invalid(
                    "controller",
                    format!(
                        "{:?} is plaintext: use https:// with `ca`, `cert` and `key` (--ca, \
                         --cert, --key), or set `insecure = true` (--insecure) for a controller \
                         on loopback",
                        self.controller
                    ),
                ));
            }
            _ => {
                return Err(ConfigError::invalid(
                    "controller",
                    format!("{:?} is not a {scheme}://HOST:PORT URL", self.controller),
                ));
            }
        }
        if !self.insecure {
            for (key, value) in [("ca", &self.ca), ("cert", &self.cert), ("key", &self.key)] {
                if value.is_none() {
                    return Err(ConfigError::invalid(
                        key,
                        "is required for TLS (the controller's CA, this node's certificate and \
                         key; `argusctl certs` makes a development set), or set `insecure = \
                         true` for a controller on loopback",
                    ));
                }
            }
        }
        if let Some(id) = &self.node_id {
            argus_shared::ids::NodeId::new(id)
                .map_err(|e| ConfigError::invalid("node_id", format!("{id:?}: {e}")))?;
        }
        positive("probe_interval", self.probe_interval)?;
        positive("heartbeat", self.heartbeat)?;
        positive("hook_fresh", self.hook_fresh)?;
        if u32::try_from(self.probe_interval.as_millis()).is_err() {
            return Err(ConfigError::invalid(
                "probe_interval",
                "must be shorter than 49 days (it is sent in milliseconds as a u32)",
            ));
        }
        if self.screen_lines == 0 {
            return Err(ConfigError::invalid(
                "screen_lines",
                "must be at least 1: no screen lines means no screen to classify",
            ));
        }
        if self.event_buffer == 0 {
            return Err(ConfigError::invalid(
                "event_buffer",
                "must be at least 1: events are kept here while the controller is away",
            ));
        }
        if self.state_dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid(
                "state_dir",
                "must not be empty: the highest accepted epoch is kept there",
            ));
        }
        self.checkpoint.validate()?;
        argus_shared::selector::Selectors::compile(&self.selectors).map_err(|e| {
            ConfigError::invalid(format!("selectors[{}].{}", e.index, e.key), e.why)
        })?;
        Ok(())
    }
}

/// A duration that drives a timer must not be zero.
pub fn positive(key: &str, value: Duration) -> Result<(), ConfigError> {
    if value.is_zero() {
        return Err(ConfigError::invalid(
            key,
            "must be longer than 0s (it drives a timer)",
        ));
    }
    Ok(())
}

// === Command line ===

/// Flags about the node itself, shared by the node agent and the controller's `--local`: each
/// overrides its file key when given.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct NodeFlags {
    /// This node's id (default: the host name). Key `node_id`.
    #[arg(long, env = "ARGUS_NODE_ID")]
    pub node_id: Option<String>,
    /// A tmux server socket to watch (repeatable; default: the user's default server). Key
    /// `tmux_sockets`.
    #[arg(long = "tmux-socket", env = "ARGUS_TMUX_SOCKET")]
    pub tmux_sockets: Vec<PathBuf>,
    /// Directory for persisted state (the highest accepted epoch, the sessions' restart
    /// commands, the agents watched lately, kept copies of guarded files). Key `state_dir`.
    #[arg(long, env = "ARGUS_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Probe interval, e.g. "1s" or "500ms". Key `probe_interval`.
    #[arg(long, env = "ARGUS_PROBE_INTERVAL", value_parser = humantime::parse_duration)]
    pub probe_interval: Option<Duration>,
    /// Agent profiles (TOML) layered over the built-in ones. Key `profiles`.
    #[arg(long, env = "ARGUS_PROFILES")]
    pub profiles: Option<PathBuf>,
}

impl NodeFlags {
    /// Writes every given flag over `config`.
    pub fn apply(&self, config: &mut Config) {
        if let Some(v) = &self.node_id {
            config.node_id = Some(v.clone());
        }
        if !self.tmux_sockets.is_empty() {
            config.tmux_sockets.clone_from(&self.tmux_sockets);
        }
        if let Some(v) = &self.state_dir {
            config.state_dir.clone_from(v);
        }
        if let Some(v) = self.probe_interval {
            config.probe_interval = v;
        }
        if let Some(v) = &self.profiles {
            config.profiles = Some(v.clone());
        }
    }
}

/// Watches this host's tmux sessions and streams them to an Argus controller.
///
/// Settings come from the defaults, then `--config FILE`, then `ARGUS_*` variables, then flags.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "argus-node-agent", version, about)]
pub struct Cli {
    /// A TOML configuration file (see `--print-config` for every key).
    #[arg(long, env = "ARGUS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// The controller's URL. Key `controller`.
    #[arg(long, env = "ARGUS_CONTROLLER")]
    pub controller: Option<String>,
    /// Heartbeat interval. Key `heartbeat`.
    #[arg(long, env = "ARGUS_HEARTBEAT", value_parser = humantime::parse_duration)]
    pub heartbeat: Option<Duration>,
    /// Talk plaintext to the controller (http://, for a controller on loopback). Key
    /// `insecure`.
    #[arg(long, env = "ARGUS_INSECURE", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub insecure: Option<bool>,
    /// The CA that signed the controller's certificate (PEM). Key `ca`.
    #[arg(long, env = "ARGUS_CA")]
    pub ca: Option<PathBuf>,
    /// This node's certificate (PEM, URI SAN spiffe://argus/node/<id>). Key `cert`.
    #[arg(long, env = "ARGUS_CERT")]
    pub cert: Option<PathBuf>,
    /// This node's private key (PEM). Key `key`.
    #[arg(long, env = "ARGUS_KEY")]
    pub key: Option<PathBuf>,
    /// Obey restarts with a command other than the session's own. Key
    /// `allow_any_restart_command`.
    #[arg(long, env = "ARGUS_ALLOW_ANY_RESTART_COMMAND", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_any_restart_command: Option<bool>,
    /// Serve /healthz and /metrics on this address (e.g. 127.0.0.1:7072). Key `http_listen`.
    #[arg(long, env = "ARGUS_HTTP_LISTEN")]
    pub http_listen: Option<std::net::SocketAddr>,
    #[command(flatten)]
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
    /// their variables).
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        let mut config = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        if let Some(v) = &self.controller {
            config.controller.clone_from(v);
        }
        if let Some(v) = self.heartbeat {
            config.heartbeat = v;
        }
        if let Some(v) = self.insecure {
            config.insecure = v;
        }
        if let Some(v) = &self.ca {
            config.ca = Some(v.clone());
        }
        if let Some(v) = &self.cert {
            config.cert = Some(v.clone());
        }
        if let Some(v) = &self.key {
            config.key = Some(v.clone());
        }
        if let Some(v) = self.allow_any_restart_command {
            config.allow_any_restart_command = v;
        }
        if let Some(v) = self.http_listen {
            config.http_listen = Some(v);
        }
        self.node.apply(&mut config);
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("argus-node-agent").chain(args.iter().copied()))
            .expect("flags parse")
    }

    #[test]
    fn selectors_round_trip_and_bad_ones_name_their_key() {
        let text =
            "insecure = true\n[[selectors]]\nsession = \"claudesquad_*\"\ngroup = \"squad\"\n";
        let c: Config = toml::from_str(text).expect("parses");
        c.validate().expect("valid");
        let again: Config = toml::from_str(&c.to_toml().expect("prints")).expect("reparses");
        assert_eq!(again, c);
        let bad: Config =
            toml::from_str("insecure = true\n[[selectors]]\ncwd = \"[x\"\ngroup = \"g\"\n")
                .expect("parses");
        let e = bad.validate().expect_err("a bad glob");
        assert!(e.to_string().contains("selectors[0].cwd"), "{e}");
    }

    #[test]
    fn defaults_are_valid_once_insecure() {
        let c = cli(&["--insecure"]).load().expect("valid");
        assert_eq!(
            c,
            Config {
                insecure: true,
                ..Config::default()
            }
        );
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("node.toml");
        std::fs::write(
            &file,
            "insecure = true\nnode_id = \"from-file\"\nprobe_interval = \"3s\"\nheartbeat = \"4s\"\n",
        )
        .expect("write");
        let path = file.display().to_string();
        let c = cli(&["--config", &path]).load().expect("valid");
        assert_eq!(c.node_id.as_deref(), Some("from-file"));
        assert_eq!(c.probe_interval, Duration::from_secs(3));
        let c = cli(&[
            "--config",
            &path,
            "--node-id",
            "from-flag",
            "--heartbeat",
            "250ms",
        ])
        .load()
        .expect("valid");
        assert_eq!(c.node_id.as_deref(), Some("from-flag"));
        assert_eq!(c.probe_interval, Duration::from_secs(3));
        assert_eq!(c.heartbeat, Duration::from_millis(250));
        let c = cli(&["--config", &path, "--insecure=false"]);
        assert!(c.load().is_err());
    }

    #[test]
    fn the_http_port_is_off_by_default_and_set_by_file_or_flag() {
        assert_eq!(Config::default().http_listen, None);
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("node.toml");
        std::fs::write(&file, "insecure = true\nhttp_listen = \"127.0.0.1:7072\"\n")
            .expect("write");
        let path = file.display().to_string();
        let c = cli(&["--config", &path]).load().expect("valid");
        assert_eq!(c.http_listen, Some("127.0.0.1:7072".parse().expect("addr")));
        let c = cli(&["--config", &path, "--http-listen", "127.0.0.1:9100"])
            .load()
            .expect("valid");
        assert_eq!(c.http_listen, Some("127.0.0.1:9100".parse().expect("addr")));
        let back: Config = toml::from_str(&c.to_toml().expect("toml")).expect("parses back");
        assert_eq!(back, c);
        let e = toml::from_str::<Config>("http_listen = \"nope\"").expect_err("not an address");
        assert!(e.to_string().contains("http_listen"), "{e}");
    }

    #[test]
    fn validation_names_the_key() {
        let bad = |f: fn(&mut Config)| {
            let mut c = Config {
                insecure: true,
                ..Config::default()
            };
            f(&mut c);
            c.validate().expect_err("refused").to_string()
        };
        assert!(
            bad(|c| c.insecure = false)
                .contains("controller: \"http://127.0.0.1:7070\" is plaintext")
        );
        assert!(
            bad(|c| {
                c.insecure = false;
                c.controller = "https://ctl:7070".into();
            })
            .contains("ca: is required for TLS")
        );
        assert!(bad(|c| c.probe_interval = Duration::ZERO).contains("probe_interval: must be"));
        assert!(bad(|c| c.heartbeat = Duration::ZERO).contains("heartbeat: must be"));
        assert!(bad(|c| c.controller = "127.0.0.1:7070".into()).contains("controller: "));
        assert!(bad(|c| c.node_id = Some("a b".into())).contains("node_id: \"a b\""));
        assert!(bad(|c| c.screen_lines = 0).contains("screen_lines: must be at least 1"));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = toml::from_str::<Config>("probe_intervall = \"1s\"").expect_err("unknown key");
        assert!(
            e.to_string().contains("unknown field `probe_intervall`"),
            "{e}"
        );
    }

    #[test]
    fn printed_config_parses_back() {
        let c = Config {
            insecure: true,
            node_id: Some("n1".into()),
            tmux_sockets: vec!["/tmp/a".into()],
            probe_interval: Duration::from_millis(250),
            ..Config::default()
        };
        let text = c.to_toml().expect("toml");
        assert!(text.contains("probe_interval = \"250ms\""), "{text}");
        assert_eq!(toml::from_str::<Config>(&text).expect("parses back"), c);
    }
}
