//! `argusctl`: the command line for the controller's AdminService.

#[path = "argusctl/output.rs"]
mod output;

use anyhow::Context;
use argus_controller::config::CtlConfig;
use argus_proto::v1 as pb;
use argus_proto::v1::admin_service_client::AdminServiceClient;
use clap::{Parser, Subcommand};
use output::{Col, Show};
use serde_json::json;
use std::path::PathBuf;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Talk to an Argus controller.
///
/// Session commands take `NODE NAME`; when NAME exists on several tmux servers of the node,
/// add `--socket PATH` (the SOCKET column of `argusctl sessions`).
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// A config file (default: ~/.config/argus/config.toml, if it exists).
    #[arg(long, env = "ARGUSCTL_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// The controller's gRPC URL (default http://127.0.0.1:7070). Key `controller`.
    #[arg(long, env = "ARGUS_CONTROLLER", global = true)]
    controller: Option<String>,
    /// The CA that signed the controller's certificate (PEM). Key `ca`.
    #[arg(long, env = "ARGUS_CA", global = true)]
    ca: Option<PathBuf>,
    /// Your certificate (PEM). Key `cert`.
    #[arg(long, env = "ARGUS_CERT", global = true)]
    cert: Option<PathBuf>,
    /// Your private key (PEM). Key `key`.
    #[arg(long, env = "ARGUS_KEY", global = true)]
    key: Option<PathBuf>,
    /// A bearer token instead of a certificate (`@FILE` reads it from FILE). Key `token`.
    #[arg(long, env = "ARGUS_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// How listings are printed: aligned columns, all columns, or JSON with every field
    /// (colour only on a terminal, never with NO_COLOR set).
    #[arg(
        short = 'o',
        long = "output",
        value_enum,
        global = true,
        default_value = "table"
    )]
    output: output::Format,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// List node agents.
    Nodes,
    /// List sessions (of one node with --node), with the tmux server each lives on.
    Sessions {
        #[arg(long)]
        node: Option<String>,
        /// Refresh in place until Ctrl-C (with -o json: one JSON array per line per refresh).
        #[arg(long)]
        watch: bool,
        /// How often --watch refreshes.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        interval: std::time::Duration,
    },
    /// Show one session with its history.
    Session {
        #[command(flatten)]
        target: Target,
    },
    /// Type text into a session's agent and press Enter.
    Nudge {
        #[command(flatten)]
        target: Target,
        text: String,
    },
    /// Send Ctrl-C to a session.
    Interrupt {
        #[command(flatten)]
        target: Target,
    },
    /// Terminate a session (process tree, then the tmux session).
    Kill {
        #[command(flatten)]
        target: Target,
        /// Milliseconds between SIGTERM and SIGKILL.
        #[arg(long, default_value_t = 0)]
        grace_ms: u32,
    },
    /// Start a session's agent again.
    Restart {
        #[command(flatten)]
        target: Target,
        /// Command to run instead of the session's own.
        #[arg(long, default_value = "")]
        command: String,
    },
    /// Print the last lines of a session's screen.
    Capture {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 30)]
        lines: u32,
    },
    /// List incidents (open ones; --all for closed ones too).
    Incidents {
        #[arg(long)]
        all: bool,
    },
    /// Acknowledge an open incident.
    Ack {
        id: String,
        /// Who acknowledges it.
        #[arg(long, default_value = "argusctl")]
        by: String,
    },
    /// Stream fleet events until interrupted.
    Watch {
        #[arg(long)]
        node: Option<String>,
    },
    /// Set a durable alarm: when due, NOTE is typed into the session's agent at its prompt.
    Schedule {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        when: When,
        /// The text the agent gets.
        note: String,
    },
    /// List pending alarms (--all: delivered and cancelled ones too).
    Alarms {
        #[arg(long)]
        all: bool,
        #[arg(long)]
        node: Option<String>,
    },
    /// Act on one alarm.
    Alarm {
        #[command(subcommand)]
        cmd: AlarmCmd,
    },
    /// For agents, from inside their own tmux session: talk to the node agent's local socket
    /// (found through ARGUS_NODE_SOCKET, which the node agent sets in its tmux servers). Needs
    /// no controller address and no credential.
    #[command(name = "self", subcommand)]
    Myself(SelfCmd),
    /// Let the agents' own hooks report their state to Argus (see `argusctl self event`).
    #[command(subcommand)]
    Hooks(HooksCmd),
    /// List stored checkpoints (of one node, or of one session), newest first; --id shows one
    /// whole (screen lines, files).
    Checkpoints {
        /// Only this node's.
        node: Option<String>,
        /// Only this session's (with NODE).
        name: Option<String>,
        /// The tmux server's socket path (with NAME, when it exists on several).
        #[arg(long, value_name = "PATH")]
        socket: Option<String>,
        /// Show this checkpoint whole.
        #[arg(long)]
        id: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Take a checkpoint of a session now (screen, labels, git state, the uncommitted work saved
    /// under refs/argus/checkpoints/), changing nothing.
    Checkpoint {
        #[command(flatten)]
        target: Target,
    },
    /// List incomplete handoffs (restarts whose new agent has not yet taken the work over);
    /// --all for completed and failed ones too.
    Handoffs {
        #[arg(long)]
        all: bool,
        #[arg(long)]
        node: Option<String>,
    },
    /// Print a shell completion script, e.g. `argusctl completions bash >
    /// /etc/bash_completion.d/argusctl`, `argusctl completions zsh > "${fpath[1]}/_argusctl"`,
    /// `argusctl completions fish > ~/.config/fish/completions/argusctl.fish`.
    Completions { shell: clap_complete::Shell },
    /// Make a development PKI in DIR: a CA (kept and reused on later runs), the controller's
    /// certificate, node certificates and admin certificates; optionally bearer tokens.
    Certs(CertsArgs),
}

/// When an alarm is due: `--in 30m` or `--at 2026-01-01T09:00:00Z`.
#[derive(clap::Args, Debug, Clone)]
#[group(required = true, multiple = false)]
struct When {
    /// Due after this long (`90s`, `20m`, `2h`).
    #[arg(long = "in", value_name = "DURATION", value_parser = humantime::parse_duration)]
    after: Option<std::time::Duration>,
    /// Due at this time (RFC 3339, e.g. `2026-01-01T09:00:00Z`).
    #[arg(long, value_name = "TIME")]
    at: Option<String>,
}

impl When {
    /// `(in_ms, at_ms)`, one of them zero.
    fn split(&self) -> anyhow::Result<(u64, i64)> {
        match (&self.after, &self.at) {
            (Some(d), None) => Ok((u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1), 0)),
            (None, Some(t)) => {
                let t = chrono::DateTime::parse_from_rfc3339(t)
                    .with_context(|| format!("--at {t:?} is not an RFC 3339 time"))?;
                Ok((0, t.timestamp_millis()))
            }
            _ => anyhow::bail!("give one of --in and --at"),
        }
    }
}

#[derive(Subcommand, Debug)]
enum AlarmCmd {
    /// Cancel a pending alarm.
    Cancel { id: String },
}

#[derive(Subcommand, Debug)]
enum SelfCmd {
    /// Set an alarm for this session: NOTE is typed in at your prompt when due.
    Schedule {
        #[command(flatten)]
        when: When,
        /// The text you get.
        note: String,
        /// The session meant (refused unless it is the caller's own).
        #[arg(long)]
        session: Option<String>,
    },
    /// Which session the node agent sees this process in.
    Whoami,
    /// Report this agent's state from its hooks: either STATE (at-prompt, thinking,
    /// waiting-permission, rate-limited, error) or --from CLI with the CLI's hook payload (on
    /// stdin, or as the last argument for Codex's notify). With --from it never fails the hook:
    /// it exits 0, quietly, whatever happens (a failing hook can block the agent).
    Event {
        /// The state, without --from.
        #[arg(required_unless_present = "from")]
        state: Option<String>,
        /// The CLI whose hook payload to read.
        #[arg(long, value_enum)]
        from: Option<argus_node_agent::hooks::Cli>,
        /// The payload, when passed as an argument (Codex's notify); else stdin is read.
        #[arg(long, hide = true)]
        payload: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum HooksCmd {
    /// Merge Argus's hook entries into a CLI's user settings (Claude Code
    /// ~/.claude/settings.json, Gemini CLI ~/.gemini/settings.json, Codex ~/.codex/config.toml):
    /// what is there is kept, the old file is copied to FILE.argus-backup, and a second install
    /// changes nothing.
    Install {
        #[arg(long, value_enum)]
        agent: argus_node_agent::hooks::Cli,
        /// Another settings file (a project's .claude/settings.json, say).
        #[arg(long, value_name = "PATH")]
        settings: Option<PathBuf>,
        /// The argusctl the hooks run (default: this one).
        #[arg(long, value_name = "PATH")]
        argusctl: Option<String>,
        /// Show the change; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(clap::Args, Debug)]
struct CertsArgs {
    /// Where the files go (the CA is reused if DIR already has one).
    #[arg(long, default_value = "argus-certs")]
    dir: PathBuf,
    /// A DNS name or IP address of the controller, besides localhost and 127.0.0.1
    /// (repeatable).
    #[arg(long = "controller-name", value_name = "NAME")]
    controller_names: Vec<String>,
    /// A node to issue a certificate for (repeatable; default: this host's name).
    #[arg(long = "node", value_name = "ID")]
    nodes: Vec<String>,
    /// A caller to issue a certificate for, as NAME:ROLE with ROLE viewer, operator or admin
    /// (repeatable; default: admin:admin).
    #[arg(long = "user", value_name = "NAME:ROLE")]
    users: Vec<String>,
    /// A bearer token to make, as NAME:ROLE: printed once, its hash appended to DIR/tokens.toml
    /// (repeatable).
    #[arg(long = "new-token", value_name = "NAME:ROLE")]
    tokens: Vec<String>,
    /// How long the certificates are valid, in days.
    #[arg(long, default_value_t = 365)]
    days: i64,
}

/// Which session a command is about: `NODE NAME`, plus `--socket PATH` when the name exists on
/// several tmux servers of the node (`argusctl sessions` shows each session's socket).
#[derive(clap::Args, Debug, Clone)]
struct Target {
    /// The node's id.
    node: String,
    /// The tmux session's name.
    name: String,
    /// The tmux server's socket path on the node; needed only when NAME exists on several of
    /// the node's tmux servers.
    #[arg(long, value_name = "PATH")]
    socket: Option<String>,
}

impl Target {
    fn sref(&self) -> pb::SessionRef {
        pb::SessionRef {
            node_id: self.node.clone(),
            session_name: self.name.clone(),
            tmux_socket: self.socket.clone().unwrap_or_default(),
        }
    }
}

type Client = AdminServiceClient<InterceptedService<Channel, Bearer>>;

/// Adds `authorization: Bearer <token>` to every call, when a token is configured.
#[derive(Clone)]
struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

fn state_name(s: i32) -> String {
    pb::SessionState::try_from(s)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("SESSION_STATE_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| s.to_string())
}

fn condition_name(c: i32) -> String {
    match pb::Condition::try_from(c) {
        Ok(pb::Condition::Unspecified) | Err(_) => "-".to_owned(),
        Ok(c) => c
            .as_str_name()
            .trim_start_matches("CONDITION_")
            .to_lowercase(),
    }
}

fn when(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
        .unwrap_or_else(|| "-".into())
}

fn print_result(r: pb::CommandResponse) -> anyhow::Result<()> {
    let status = pb::CommandStatus::try_from(r.status).unwrap_or(pb::CommandStatus::Unspecified);
    if !r.output.is_empty() {
        println!("{}", r.output);
    }
    if status != pb::CommandStatus::Ok {
        anyhow::bail!(
            "command {} {}: {}",
            r.command_id,
            status.as_str_name(),
            r.message
        );
    }
    eprintln!("command {} ok {}", r.command_id, r.message);
    Ok(())
}

/// The effective connection settings: defaults, the file, `ARGUS_*`, flags.
fn ctl_config(args: &Args) -> anyhow::Result<CtlConfig> {
    let mut c = CtlConfig::load(args.config.as_deref())?;
    if let Some(v) = &args.controller {
        c.controller.clone_from(v);
    }
    for (flag, key) in [
        (&args.ca, &mut c.ca),
        (&args.cert, &mut c.cert),
        (&args.key, &mut c.key),
    ] {
        if let Some(v) = flag {
            *key = Some(v.clone());
        }
    }
    if let Some(v) = &args.token {
        c.token = Some(v.clone());
    }
    c.validate()?;
    Ok(c)
}

/// Connects as the configuration says: TLS with the caller's certificate (verifying the
/// controller's name against its certificate), and the bearer token if any.
async fn connect(c: &CtlConfig) -> anyhow::Result<Client> {
    let mut endpoint = Channel::from_shared(c.controller.clone())?;
    if c.controller.starts_with("https://") {
        let read =
            |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        let mut tls = tonic::transport::ClientTlsConfig::new();
        if let Some(ca) = &c.ca {
            tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?));
        }
        if let (Some(cert), Some(key)) = (&c.cert, &c.key) {
            tls = tls.identity(tonic::transport::Identity::from_pem(
                read(cert)?,
                read(key)?,
            ));
        }
        endpoint = endpoint.tls_config(tls)?;
    }
    let channel = endpoint.connect().await.with_context(|| {
        format!(
            "connecting to the controller at {} (is it running there? --controller or \
             ARGUS_CONTROLLER names another)",
            c.controller
        )
    })?;
    let token = match c.token.as_deref() {
        Some(t) => {
            let t = match t.strip_prefix('@') {
                Some(path) => std::fs::read_to_string(path)
                    .with_context(|| format!("reading the token from {path}"))?,
                None => t.to_owned(),
            };
            Some(
                format!("Bearer {}", t.trim())
                    .parse()
                    .context("the token is not valid header text")?,
            )
        }
        None => None,
    };
    Ok(AdminServiceClient::with_interceptor(channel, Bearer(token)))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let args = match args.cmd {
        Cmd::Myself(SelfCmd::Event {
            state,
            from,
            payload,
        }) => return self_event(state, from, payload).await,
        Cmd::Myself(cmd) => return myself(cmd).await,
        Cmd::Hooks(cmd) => return hooks(cmd),
        _ => args,
    };
    if let Cmd::Certs(a) = &args.cmd {
        return certs(a);
    }
    if let Cmd::Completions { shell } = &args.cmd {
        let mut cmd = <Args as clap::CommandFactory>::command();
        let mut script = Vec::new();
        clap_complete::generate(*shell, &mut cmd, "argusctl", &mut script);
        // Written whole, and a reader that stops early (`| head`) is no error.
        return match std::io::Write::write_all(&mut std::io::stdout(), &script) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
            _ => Ok(()),
        };
    }
    let out = args.output;
    let config = ctl_config(&args)?;
    let mut c = connect(&config).await?;
    match args.cmd {
        Cmd::Certs(_) | Cmd::Completions { .. } => Ok(()),
        Cmd::Nodes => nodes(&mut c, out).await,
        Cmd::Sessions {
            node, watch: false, ..
        } => sessions(&mut c, node, out).await,
        Cmd::Sessions {
            node,
            watch: true,
            interval,
        } => watch_sessions(&mut c, node, interval, out).await,
        Cmd::Session { target } => session(&mut c, &target).await,
        Cmd::Nudge { target, text } => nudge(&mut c, &target, text).await,
        Cmd::Interrupt { target } => interrupt(&mut c, &target).await,
        Cmd::Kill { target, grace_ms } => kill(&mut c, &target, grace_ms).await,
        Cmd::Restart { target, command } => restart(&mut c, &target, command).await,
        Cmd::Capture { target, lines } => capture(&mut c, &target, lines).await,
        Cmd::Incidents { all } => incidents(&mut c, all, out).await,
        Cmd::Ack { id, by } => ack(&mut c, id, by).await,
        Cmd::Watch { node } => watch(&mut c, node).await,
        Cmd::Schedule { target, when, note } => schedule(&mut c, &target, &when, note).await,
        Cmd::Alarms { all, node } => alarms(&mut c, all, node, out).await,
        Cmd::Alarm {
            cmd: AlarmCmd::Cancel { id },
        } => cancel_alarm(&mut c, id).await,
        Cmd::Myself(_) | Cmd::Hooks(_) => unreachable!("handled without a controller"),
        Cmd::Checkpoints {
            node,
            name,
            socket,
            id,
            limit,
        } => match id {
            Some(id) => show_checkpoint(&mut c, id).await,
            None => checkpoints(&mut c, node, name, socket, limit, out).await,
        },
        Cmd::Checkpoint { target } => take_checkpoint(&mut c, &target).await,
        Cmd::Handoffs { all, node } => handoffs(&mut c, all, node, out).await,
    }
}

// === subcommands ===

// Listings (`-o table|wide|json`) are rows of JSON values with their columns, printed by
// `output`.

const NODE_COLS: [Col; 8] = [
    Col::new("node_id", "NODE", Show::Text),
    Col::new("health", "HEALTH", Show::State),
    Col::new("epoch", "EPOCH", Show::Number),
    Col::new("session_count", "SESSIONS", Show::Number),
    Col::new("hostname", "HOST", Show::Text),
    Col::new("last_seen_ms", "LAST SEEN", Show::Time),
    Col::wide("agent_version", "VERSION", Show::Text),
    Col::wide("cert_not_after_ms", "CERT EXPIRES", Show::Time),
];

async fn nodes(c: &mut Client, out: output::Format) -> anyhow::Result<()> {
    let r = c.list_nodes(pb::ListNodesRequest {}).await?.into_inner();
    let rows: Vec<_> = r
        .nodes
        .iter()
        .map(|n| {
            json!({
                "node_id": n.node_id,
                "health": n.health,
                "epoch": n.epoch,
                "session_count": n.session_count,
                "hostname": n.hostname,
                "last_seen_ms": n.last_seen_ms,
                "agent_version": n.agent_version,
                "cert_not_after_ms": n.cert_not_after_ms,
            })
        })
        .collect();
    output::print(out, &NODE_COLS, &rows)
}

const SESSION_COLS: [Col; 16] = [
    Col::new("node_id", "NODE", Show::Text),
    Col::new("session_name", "SESSION", Show::Text),
    Col::new("state", "STATE", Show::State),
    Col::new("condition", "CONDITION", Show::Text),
    Col::new("agent_pid", "PID", Show::Number),
    Col::new("policy", "POLICY", Show::Text),
    Col::new("tmux_socket", "SOCKET", Show::Text),
    Col::wide("agent_name", "AGENT", Show::Text),
    Col::wide("profile", "PROFILE", Show::Text),
    Col::wide("labels", "LABELS", Show::Text),
    Col::wide("attached_clients", "ATTACHED", Show::Number),
    Col::wide("last_activity_ms", "ACTIVITY", Show::Time),
    Col::wide("last_change_ms", "CHANGED", Show::Time),
    Col::wide("decided_by", "DECIDED BY", Show::Text),
    Col::wide("pane_id", "PANE", Show::Text),
    Col::new("reason", "REASON", Show::Text),
];

/// One session as a listing row (every field of `Session`).
fn session_row(s: &pb::Session) -> serde_json::Value {
    // "acts": the policy may nudge, interrupt, kill or restart it; "watch": only watched.
    let policy = if s.acted_on_because.is_empty() {
        "watch"
    } else {
        "acts"
    };
    json!({
        "node_id": s.node_id,
        "session_name": s.session_name,
        "tmux_socket": s.tmux_socket,
        "state": state_name(s.state),
        "condition": condition_name(s.condition),
        "agent_pid": s.agent_pid,
        "agent_name": s.agent_name,
        "profile": s.profile,
        "labels": s.labels,
        "policy": policy,
        "acted_on_because": s.acted_on_because,
        "attached_clients": s.attached_clients,
        "last_activity_ms": s.last_activity_ms,
        "last_change_ms": s.last_change_ms,
        "rate_limit_reset_at": s.rate_limit_reset_at,
        "decided_by": s.decided_by,
        "agent_session_id": s.agent_session_id,
        "pane_id": s.pane_id,
        "reason": s.reason,
    })
}

async fn session_rows(
    c: &mut Client,
    node: &Option<String>,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let r = c
        .list_sessions(pb::ListSessionsRequest {
            node_id: node.clone().unwrap_or_default(),
        })
        .await
        .map_err(|s| match node {
            Some(n) if s.code() == tonic::Code::NotFound => anyhow::anyhow!(
                "no node {n:?} is known to the controller: `argusctl nodes` lists them"
            ),
            _ => s.into(),
        })?
        .into_inner();
    Ok(r.sessions.iter().map(session_row).collect())
}

async fn sessions(c: &mut Client, node: Option<String>, out: output::Format) -> anyhow::Result<()> {
    let rows = session_rows(c, &node).await?;
    output::print(out, &SESSION_COLS, &rows)
}

/// `argusctl sessions --watch`: the listing again every `every`, drawn over the last one on a
/// terminal, until Ctrl-C (which ends it with success). With `-o json`, one array per line.
async fn watch_sessions(
    c: &mut Client,
    node: Option<String>,
    every: std::time::Duration,
    out: output::Format,
) -> anyhow::Result<()> {
    use std::io::Write;
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let colour = out != output::Format::Json && output::colour();
    let mut tick = tokio::time::interval(every.max(std::time::Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = tokio::signal::ctrl_c() => return r.context("waiting for Ctrl-C"),
            _ = tick.tick() => {}
        }
        let rows = session_rows(c, &node).await?;
        let text = match out {
            output::Format::Json => serde_json::to_string(&rows)? + "\n",
            _ => {
                let table = output::render(out, &SESSION_COLS, &rows, colour);
                let stamp = chrono::Utc::now().format("%H:%M:%S");
                let head = format!(
                    "every {} at {stamp} UTC, Ctrl-C to stop\n\n",
                    humantime::format_duration(every)
                );
                if terminal {
                    // Home, draw, clear what the last drawing left below.
                    format!("\x1b[H{head}{}\x1b[J", table.replace('\n', "\x1b[K\n"))
                } else {
                    format!("{head}{table}\n")
                }
            }
        };
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(text.as_bytes())?;
        stdout.flush()?;
    }
}

/// Which source decided a session's condition, as `argusctl session` shows it.
fn decided_by(source: &str) -> String {
    if source.is_empty() {
        String::new()
    } else {
        format!("   (decided by the {source})")
    }
}

async fn session(c: &mut Client, target: &Target) -> anyhow::Result<()> {
    let r = c
        .get_session(pb::GetSessionRequest {
            session: Some(target.sref()),
            history_limit: 20,
        })
        .await;
    let r = refine(c, target, r).await?;
    if let Some(s) = r.session {
        println!(
            "session   {} on {} ({})",
            s.session_name, s.node_id, s.tmux_socket
        );
        println!("state     {} ({})", state_name(s.state), s.reason);
        println!(
            "condition {}{}",
            condition_name(s.condition),
            decided_by(&s.decided_by)
        );
        println!(
            "agent     {} pid {} profile {}",
            s.agent_name, s.agent_pid, s.profile
        );
        if !s.agent_session_id.is_empty() {
            println!("resumes   conversation {}", s.agent_session_id);
        }
        println!(
            "activity  {}   changed {}",
            when(s.last_activity_ms),
            when(s.last_change_ms)
        );
        println!("attached  {}   pane {}", s.attached_clients, s.pane_id);
        // Whether from tmux options or selectors (docs/adoption.md).
        let mut labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        println!("labels    {}", or_dash(&labels.join(" ")));
    }
    println!("\ntransitions:");
    for t in r.transitions {
        println!(
            "  {}  {} -> {}  {}",
            when(t.at_ms),
            state_name(t.from),
            state_name(t.to),
            t.reason
        );
    }
    if !r.handoffs.is_empty() {
        println!("\nhandoffs:");
        for h in &r.handoffs {
            println!(
                "  {}  {:<10} {:<12} {}  checkpoint {}  {}",
                when(h.started_ms),
                h.state,
                h.reason,
                h.id,
                or_dash(&h.checkpoint_id),
                h.message
            );
        }
    }
    if !r.checkpoints.is_empty() {
        println!("\ncheckpoints:");
        for k in &r.checkpoints {
            if let Some(c) = &k.checkpoint {
                println!("  {}  {}", when(c.taken_at_ms), checkpoint_line(c));
            }
        }
    }
    println!("\ncommands:");
    for k in r.commands {
        let status = pb::CommandStatus::try_from(k.status).unwrap_or_default();
        println!(
            "  {}  {:<9} {:<6} {:<28} {}  {}",
            when(k.issued_at_ms),
            k.action,
            k.origin,
            status.as_str_name(),
            k.reason,
            k.result_message
        );
    }
    Ok(())
}

async fn nudge(c: &mut Client, target: &Target, text: String) -> anyhow::Result<()> {
    let r = c
        .nudge(pb::NudgeRequest {
            session: Some(target.sref()),
            text,
        })
        .await;
    print_result(refine(c, target, r).await?)
}

async fn interrupt(c: &mut Client, target: &Target) -> anyhow::Result<()> {
    let r = c.interrupt(target.sref()).await;
    print_result(refine(c, target, r).await?)
}

async fn kill(c: &mut Client, target: &Target, grace_ms: u32) -> anyhow::Result<()> {
    let r = c
        .kill(pb::KillRequest {
            session: Some(target.sref()),
            grace_ms,
        })
        .await;
    print_result(refine(c, target, r).await?)
}

async fn restart(c: &mut Client, target: &Target, command: String) -> anyhow::Result<()> {
    let r = c
        .restart(pb::RestartRequest {
            session: Some(target.sref()),
            command,
        })
        .await;
    print_result(refine(c, target, r).await?)
}

async fn capture(c: &mut Client, target: &Target, lines: u32) -> anyhow::Result<()> {
    let r = c
        .capture(pb::CaptureRequest {
            session: Some(target.sref()),
            lines,
        })
        .await;
    print_result(refine(c, target, r).await?)
}

const INCIDENT_COLS: [Col; 9] = [
    Col::new("id", "ID", Show::Text),
    Col::new("kind", "KIND", Show::Text),
    Col::new("scope", "SCOPE", Show::Text),
    Col::new("status", "STATUS", Show::State),
    Col::new("opened_ms", "OPENED", Show::Time),
    Col::wide("acked_by", "ACKED BY", Show::Text),
    Col::wide("acked_ms", "ACKED", Show::Time),
    Col::wide("closed_ms", "CLOSED", Show::Time),
    Col::new("summary", "SUMMARY", Show::Text),
];

async fn incidents(c: &mut Client, all: bool, out: output::Format) -> anyhow::Result<()> {
    let r = c
        .list_incidents(pb::ListIncidentsRequest {
            include_closed: all,
            limit: 100,
        })
        .await?
        .into_inner();
    let rows: Vec<_> = r
        .incidents
        .iter()
        .map(|i| {
            let status = if i.closed_ms > 0 {
                "closed"
            } else if i.acked_ms > 0 {
                "acked"
            } else {
                "open"
            };
            json!({
                "id": i.id,
                "kind": i.kind,
                "scope": i.scope,
                "status": status,
                "opened_ms": i.opened_ms,
                "acked_by": i.acked_by,
                "acked_ms": i.acked_ms,
                "closed_ms": i.closed_ms,
                "summary": i.summary,
            })
        })
        .collect();
    output::print(out, &INCIDENT_COLS, &rows)
}

async fn ack(c: &mut Client, id: String, by: String) -> anyhow::Result<()> {
    let i = c
        .ack_incident(pb::AckIncidentRequest { id, by })
        .await?
        .into_inner();
    println!("{} acknowledged by {}", i.id, i.acked_by);
    Ok(())
}

async fn watch(c: &mut Client, node: Option<String>) -> anyhow::Result<()> {
    let mut s = c
        .watch_events(pb::WatchEventsRequest {
            node_id: node.unwrap_or_default(),
        })
        .await?
        .into_inner();
    while let Some(e) = s.message().await? {
        println!(
            "{}  {:<12} {:<20} {:<16} {}",
            when(e.at_ms),
            e.node_id,
            e.session_name,
            e.kind,
            e.message
        );
    }
    Ok(())
}

async fn schedule(c: &mut Client, target: &Target, due: &When, note: String) -> anyhow::Result<()> {
    let (in_ms, at_ms) = due.split()?;
    let r = c
        .schedule_nudge(pb::ScheduleNudgeRequest {
            session: Some(target.sref()),
            in_ms,
            at_ms,
            note,
        })
        .await;
    let a = refine(c, target, r).await?;
    println!("{} due {}", a.id, when(a.due_ms));
    Ok(())
}

fn alarm_state(s: i32) -> String {
    pb::AlarmState::try_from(s)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("ALARM_STATE_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| s.to_string())
}

const ALARM_COLS: [Col; 9] = [
    Col::new("id", "ID", Show::Text),
    Col::new("node_id", "NODE", Show::Text),
    Col::new("session_name", "SESSION", Show::Text),
    Col::new("state", "STATE", Show::State),
    Col::new("origin", "BY", Show::Text),
    Col::new("due_ms", "DUE", Show::Time),
    Col::wide("tmux_socket", "SOCKET", Show::Text),
    Col::new("note_short", "NOTE", Show::Text),
    Col::new("message", "STATUS", Show::Text),
];

async fn alarms(
    c: &mut Client,
    all: bool,
    node: Option<String>,
    out: output::Format,
) -> anyhow::Result<()> {
    let r = c
        .list_alarms(pb::ListAlarmsRequest {
            node_id: node.unwrap_or_default(),
            include_closed: all,
            limit: 1000,
        })
        .await?
        .into_inner();
    let rows: Vec<_> = r
        .alarms
        .iter()
        .map(|a| {
            let s = a.session.clone().unwrap_or_default();
            let short: String = a.note.chars().take(40).collect();
            json!({
                "id": a.id,
                "node_id": s.node_id,
                "session_name": s.session_name,
                "tmux_socket": s.tmux_socket,
                "state": alarm_state(a.state),
                "origin": a.origin,
                "due_ms": a.due_ms,
                "note": a.note,
                "note_short": short,
                "message": a.message,
            })
        })
        .collect();
    output::print(out, &ALARM_COLS, &rows)
}

async fn cancel_alarm(c: &mut Client, id: String) -> anyhow::Result<()> {
    let a = c
        .cancel_alarm(pb::CancelAlarmRequest { id })
        .await?
        .into_inner();
    println!("{} {}", a.id, alarm_state(a.state));
    Ok(())
}

/// `argusctl self ...`: one request on the node agent's local socket.
async fn myself(cmd: SelfCmd) -> anyhow::Result<()> {
    use argus_node_agent::local::{self, Op, Request};
    let path = local::socket_for_caller().ok_or(local::ClientError::NoSocket)?;
    let op = match cmd {
        SelfCmd::Schedule {
            when,
            note,
            session,
        } => {
            let (in_ms, at_ms) = when.split()?;
            Op::Schedule {
                in_ms,
                at_ms,
                note,
                session,
            }
        }
        SelfCmd::Whoami => Op::Whoami,
        SelfCmd::Event { .. } => unreachable!("handled by self_event"),
    };
    let is_schedule = matches!(op, Op::Schedule { .. });
    let a = local::call(
        &path,
        &Request {
            v: local::VERSION,
            op,
        },
    )
    .await?;
    if !a.ok {
        anyhow::bail!(
            "{} ({})",
            a.error.unwrap_or_default(),
            a.code.unwrap_or_default()
        );
    }
    let session = a.session.unwrap_or_default();
    if is_schedule {
        println!(
            "alarm {} set for session {session}, due {}",
            a.alarm_id.unwrap_or_default(),
            when(a.due_ms.unwrap_or_default())
        );
    } else {
        println!("{session} {}", a.tmux_socket.unwrap_or_default());
    }
    Ok(())
}

/// `argusctl self event`: a hook's report on the local socket. With `--from` every failure is
/// swallowed (exit 0): a hook must never stop its agent.
async fn self_event(
    state: Option<String>,
    from: Option<argus_node_agent::hooks::Cli>,
    payload: Option<String>,
) -> anyhow::Result<()> {
    use argus_node_agent::hooks;
    use argus_node_agent::local::{self, Op, Request};
    let report = async {
        let (state, what, session_id) = match from {
            None => (
                state.unwrap_or_default(),
                "argusctl".to_owned(),
                String::new(),
            ),
            Some(cli) => {
                let payload = match payload.or(state) {
                    Some(p) => p,
                    None if cli == hooks::Cli::Aider => String::new(),
                    None => {
                        let mut text = String::new();
                        std::io::Read::read_to_string(
                            &mut std::io::Read::take(std::io::stdin(), 1 << 20),
                            &mut text,
                        )?;
                        text
                    }
                };
                match hooks::from_payload(cli, &payload) {
                    Some(r) => (r.condition.as_str().to_owned(), r.what, r.session_id),
                    None => return Ok(()),
                }
            }
        };
        let path = local::socket_for_caller().ok_or(local::ClientError::NoSocket)?;
        let req = Request {
            v: local::VERSION,
            op: Op::Event {
                state,
                what,
                session_id,
            },
        };
        let a = tokio::time::timeout(std::time::Duration::from_secs(2), local::call(&path, &req))
            .await
            .context("the node agent did not answer within 2 s")??;
        if !a.ok {
            anyhow::bail!(
                "{} ({})",
                a.error.unwrap_or_default(),
                a.code.unwrap_or_default()
            );
        }
        anyhow::Ok(())
    };
    match (report.await, from) {
        (Err(e), Some(_)) => {
            eprintln!("argusctl self event: {e:#} (ignored: a hook never fails its agent)");
            Ok(())
        }
        (r, _) => r,
    }
}

/// `argusctl hooks install`.
fn hooks(cmd: HooksCmd) -> anyhow::Result<()> {
    use argus_node_agent::hooks::install;
    let HooksCmd::Install {
        agent,
        settings,
        argusctl,
        dry_run,
    } = cmd;
    let path = match settings {
        Some(p) => p,
        None => install::default_path(agent)?,
    };
    let argusctl = match argusctl {
        Some(a) => a,
        None => std::env::current_exe()
            .context("finding this argusctl's path (give --argusctl PATH)")?
            .display()
            .to_string(),
    };
    let plan = install::install(agent, &path, &argusctl, dry_run)?;
    if let Some(note) = &plan.note {
        println!("{note}");
    }
    if plan.added.is_empty() {
        if plan.note.is_none() {
            println!(
                "{}: Argus's hooks are already there; nothing changed",
                path.display()
            );
        }
        return Ok(());
    }
    if dry_run {
        println!(
            "would add Argus's hooks for {} to {} (nothing written); the file would read:\n{}",
            plan.added.join(", "),
            path.display(),
            plan.text
        );
    } else {
        println!(
            "added Argus's hooks for {} to {}{}",
            plan.added.join(", "),
            path.display(),
            plan.backup
                .map(|b| format!(" (the old file is kept as {})", b.display()))
                .unwrap_or_default()
        );
    }
    Ok(())
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// One checkpoint in a line: id, trigger, time taken, git summary.
fn checkpoint_line(c: &pb::Checkpoint) -> String {
    let git = match &c.git {
        None => "no git work tree".to_owned(),
        Some(g) => format!(
            "{} {} {} files (+{} -{}) {}",
            or_dash(&g.branch),
            g.head.chars().take(10).collect::<String>(),
            g.files_total,
            g.insertions,
            g.deletions,
            if g.saved_ref.is_empty() {
                if g.files_total == 0 {
                    "clean"
                } else {
                    "NOT SAVED"
                }
            } else {
                g.saved_ref.as_str()
            }
        ),
    };
    let problems = if c.problems.is_empty() {
        String::new()
    } else {
        format!("  [{}]", c.problems.join("; "))
    };
    format!(
        "{} before {:<7} {:>5} ms  {git}{problems}",
        c.id, c.trigger, c.took_ms
    )
}

async fn checkpoints(
    c: &mut Client,
    node: Option<String>,
    name: Option<String>,
    socket: Option<String>,
    limit: u32,
    out: output::Format,
) -> anyhow::Result<()> {
    const COLS: [Col; 8] = [
        Col::new("taken_at_ms", "TAKEN", Show::Time),
        Col::new("node_id", "NODE", Show::Text),
        Col::new("session_name", "SESSION", Show::Text),
        Col::wide("id", "ID", Show::Text),
        Col::wide("trigger", "TRIGGER", Show::Text),
        Col::wide("cwd", "CWD", Show::Text),
        Col::wide("saved_ref", "SAVED", Show::Text),
        Col::new("summary", "CHECKPOINT", Show::Text),
    ];
    let r = c
        .list_checkpoints(pb::ListCheckpointsRequest {
            node_id: node.unwrap_or_default(),
            session_name: name.unwrap_or_default(),
            tmux_socket: socket.unwrap_or_default(),
            limit,
        })
        .await?
        .into_inner();
    let rows: Vec<_> = r
        .checkpoints
        .iter()
        .filter_map(|k| {
            let ck = k.checkpoint.as_ref()?;
            Some(json!({
                "taken_at_ms": ck.taken_at_ms,
                "node_id": k.node_id,
                "session_name": ck.session_name,
                "tmux_socket": ck.tmux_socket,
                "id": ck.id,
                "trigger": ck.trigger,
                "cwd": ck.cwd,
                "saved_ref": ck.git.as_ref().map(|g| g.saved_ref.clone()).unwrap_or_default(),
                "summary": checkpoint_line(ck),
            }))
        })
        .collect();
    output::print(out, &COLS, &rows)
}

/// Prints a whole checkpoint.
fn print_checkpoint(node: &str, command: &str, reason: &str, c: &pb::Checkpoint) {
    println!(
        "checkpoint {} of {} on {} ({})",
        c.id, c.session_name, node, c.tmux_socket
    );
    println!(
        "taken     {} before {} (took {} ms)",
        when(c.taken_at_ms),
        c.trigger,
        c.took_ms
    );
    if !command.is_empty() {
        println!("command   {command}: {reason}");
    }
    println!(
        "agent     {} pid {} profile {}",
        or_dash(&c.agent_name),
        c.agent.map_or(0, |a| a.pid),
        or_dash(&c.profile)
    );
    println!("cwd       {}", or_dash(&c.cwd));
    let mut labels: Vec<_> = c.labels.iter().collect();
    labels.sort();
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("labels    {}", labels.join(" "));
    match &c.git {
        None => println!("git       not a git work tree"),
        Some(g) => {
            println!(
                "git       {} on branch {} at {} \"{}\"",
                g.top_level,
                or_dash(&g.branch),
                or_dash(&g.head),
                g.head_subject
            );
            println!(
                "saved     {} {}",
                or_dash(&g.saved_ref),
                if g.saved_commit.is_empty() {
                    String::new()
                } else {
                    format!("(commit {})", g.saved_commit)
                }
            );
            println!(
                "files     {} (+{} -{})",
                g.files_total, g.insertions, g.deletions
            );
            for f in &g.files {
                let counts = if f.binary {
                    "binary".to_owned()
                } else {
                    format!("+{} -{}", f.added, f.removed)
                };
                let skipped = if f.skipped { "  (not saved)" } else { "" };
                println!("  {:<3} {}  {counts}{skipped}", f.status, f.path);
            }
        }
    }
    for p in &c.problems {
        println!("problem   {p}");
    }
    if !c.screen.is_empty() {
        println!("screen:");
        for l in &c.screen {
            println!("  | {l}");
        }
    }
}

async fn show_checkpoint(c: &mut Client, id: String) -> anyhow::Result<()> {
    let r = c
        .get_checkpoint(pb::GetCheckpointRequest { id })
        .await?
        .into_inner();
    if let Some(ck) = &r.checkpoint {
        print_checkpoint(&r.node_id, &r.command_id, &r.reason, ck);
    }
    Ok(())
}

async fn take_checkpoint(c: &mut Client, target: &Target) -> anyhow::Result<()> {
    let r = c.take_checkpoint(target.sref()).await;
    let r = refine(c, target, r).await?;
    if let Some(ck) = &r.checkpoint {
        print_checkpoint(&target.node, &r.command_id, "taken through argusctl", ck);
    }
    print_result(pb::CommandResponse {
        checkpoint: None,
        ..r
    })
}

async fn handoffs(
    c: &mut Client,
    all: bool,
    node: Option<String>,
    out: output::Format,
) -> anyhow::Result<()> {
    const COLS: [Col; 9] = [
        Col::new("id", "ID", Show::Text),
        Col::new("node_id", "NODE", Show::Text),
        Col::new("session_name", "SESSION", Show::Text),
        Col::new("state", "STATE", Show::State),
        Col::new("reason", "REASON", Show::Text),
        Col::new("restarts", "RESTARTS", Show::Number),
        Col::new("started_ms", "STARTED", Show::Time),
        Col::new("checkpoint_id", "CHECKPOINT", Show::Text),
        Col::new("message", "MESSAGE", Show::Text),
    ];
    let r = c
        .list_handoffs(pb::ListHandoffsRequest {
            include_ended: all,
            node_id: node.unwrap_or_default(),
            limit: 100,
        })
        .await?
        .into_inner();
    let rows: Vec<_> = r
        .handoffs
        .iter()
        .map(|h| {
            json!({
                "id": h.id,
                "node_id": h.node_id,
                "session_name": h.session_name,
                "state": h.state,
                "reason": h.reason,
                "restarts": h.restarts,
                "started_ms": h.started_ms,
                "checkpoint_id": h.checkpoint_id,
                "message": h.message,
            })
        })
        .collect();
    output::print(out, &COLS, &rows)
}

/// A refusal about `target` as an error that names the session and says what to do next.
fn explain(status: tonic::Status, target: &Target) -> anyhow::Error {
    use tonic::Code;
    let (node, name) = (&target.node, &target.name);
    let what = match status.code() {
        Code::NotFound => format!(
            "`argusctl sessions --node {node}` lists the node's sessions (names are exact, and \
             `argusctl nodes` lists the nodes)"
        ),
        Code::Unavailable | Code::FailedPrecondition => format!(
            "the node agent may be down or the session busy: `argusctl nodes` shows node \
             {node}'s health, `argusctl session {node} {name}` the session's state; retry when \
             it is up"
        ),
        Code::DeadlineExceeded => format!(
            "the node agent did not answer in time: `argusctl session {node} {name}` shows \
             whether the command ran before you send it again"
        ),
        Code::PermissionDenied => {
            "your role does not allow this: ask an admin for an operator or admin certificate \
             (`argusctl certs --user NAME:operator`) or token"
                .to_owned()
        }
        Code::Unauthenticated => "give a certificate (--cert, --key, --ca) or a token \
             (--token), or set them in ~/.config/argus/config.toml"
            .to_owned(),
        _ => return status.into(),
    };
    anyhow::anyhow!(
        "session {name:?} on node {node:?}: {} ({:?})\n  what to do: {what}",
        status.message(),
        status.code()
    )
}

/// The answer to a call about `target`. When the controller refused the session reference and
/// no `--socket` was given, looks whether the name exists on several tmux servers of the node
/// and, if so, says so with the sockets to choose from.
async fn refine<T>(
    c: &mut Client,
    target: &Target,
    answer: Result<tonic::Response<T>, tonic::Status>,
) -> anyhow::Result<T> {
    let status = match answer {
        Ok(r) => return Ok(r.into_inner()),
        Err(status) => status,
    };
    if status.code() != tonic::Code::InvalidArgument || target.socket.is_some() {
        return Err(explain(status, target));
    }
    let sockets: Vec<String> = match c
        .list_sessions(pb::ListSessionsRequest {
            node_id: target.node.clone(),
        })
        .await
    {
        Ok(r) => r
            .into_inner()
            .sessions
            .into_iter()
            .filter(|s| s.session_name == target.name)
            .map(|s| s.tmux_socket)
            .collect(),
        Err(_) => return Err(explain(status, target)),
    };
    if sockets.len() < 2 {
        return Err(explain(status, target));
    }
    let mut msg = format!(
        "session {:?} exists on {} tmux servers of node {:?}; choose one with --socket PATH:",
        target.name,
        sockets.len(),
        target.node
    );
    for s in &sockets {
        msg.push_str(&format!("\n  --socket {s}"));
    }
    Err(anyhow::anyhow!(msg))
}

/// `argusctl certs`: a development PKI (see [`CertsArgs`]).
fn certs(a: &CertsArgs) -> anyhow::Result<()> {
    use argus_controller::auth::{Role, token_entry};
    use argus_controller::pki::{Leaf, Validity, dir_ca, write_pair};
    let validity = Validity::days(a.days);
    let name_role = |s: &str| -> anyhow::Result<(String, Role)> {
        let (name, role) = s
            .split_once(':')
            .with_context(|| format!("{s:?}: expected NAME:ROLE"))?;
        let role = Role::parse(role)
            .with_context(|| format!("{s:?}: the role must be viewer, operator or admin"))?;
        anyhow::ensure!(
            !name.is_empty() && !name.contains('/'),
            "{s:?}: the name must not be empty nor hold '/'"
        );
        Ok((name.to_owned(), role))
    };
    let (ca, made) = dir_ca(&a.dir, validity)?;
    let dir = a.dir.display();
    println!(
        "{} {dir}/ca.pem",
        if made { "created CA" } else { "using CA" }
    );
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    names.extend(a.controller_names.iter().cloned());
    let cert = write_pair(
        &a.dir,
        "controller",
        &ca.issue(&Leaf::Controller(names.clone()), validity)?,
    )?;
    println!(
        "controller  {} (names: {})",
        cert.display(),
        names.join(", ")
    );
    let nodes = if a.nodes.is_empty() {
        vec![argus_node_agent::hostname()]
    } else {
        a.nodes.clone()
    };
    for id in &nodes {
        argus_shared::ids::NodeId::new(id).with_context(|| format!("node id {id:?}"))?;
        let cert = write_pair(
            &a.dir,
            &format!("node-{id}"),
            &ca.issue(&Leaf::Node(id.clone()), validity)?,
        )?;
        println!("node        {} (spiffe://argus/node/{id})", cert.display());
    }
    let users = if a.users.is_empty() && a.tokens.is_empty() {
        vec!["admin:admin".to_owned()]
    } else {
        a.users.clone()
    };
    for u in &users {
        let (name, role) = name_role(u)?;
        let cert = write_pair(
            &a.dir,
            &format!("user-{name}"),
            &ca.issue(&Leaf::User(name.clone(), role), validity)?,
        )?;
        println!(
            "{:<11} {} (spiffe://argus/user/{name}/{role})",
            role.as_str(),
            cert.display()
        );
    }
    for t in &a.tokens {
        use rand::Rng;
        use std::io::Write;
        let (name, role) = name_role(t)?;
        let token: String = rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(40)
            .map(char::from)
            .collect();
        let path = a.dir.join("tokens.toml");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        writeln!(f, "{}", token_entry(&name, role, &token))?;
        println!(
            "token {name} ({role}): {token}   (hash appended to {})",
            path.display()
        );
    }
    println!(
        "\ncontroller: argus-controller --tls-cert {dir}/controller.pem --tls-key {dir}/controller-key.pem --client-ca {dir}/ca.pem{}",
        if a.tokens.is_empty() {
            String::new()
        } else {
            format!(" --tokens {dir}/tokens.toml")
        }
    );
    println!(
        "node agent: argus-node-agent --controller https://localhost:7070 --ca {dir}/ca.pem --cert {dir}/node-{0}.pem --key {dir}/node-{0}-key.pem --node-id {0}",
        nodes[0]
    );
    if let Some(u) = users.first() {
        let (name, _) = name_role(u)?;
        println!(
            "argusctl:   export ARGUS_CONTROLLER=https://localhost:7070 ARGUS_CA={dir}/ca.pem ARGUS_CERT={dir}/user-{name}.pem ARGUS_KEY={dir}/user-{name}-key.pem"
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(e) = run(args).await {
        if let Some(status) = e.downcast_ref::<tonic::Status>() {
            eprintln!("error: {} ({:?})", status.message(), status.code());
        } else {
            eprintln!("error: {e:#}");
        }
        std::process::exit(1);
    }
}
