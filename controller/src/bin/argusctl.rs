//! `argusctl`: the command line for the controller's AdminService.

use anyhow::Context;
use argus_proto::v1 as pb;
use argus_proto::v1::admin_service_client::AdminServiceClient;
use clap::{Parser, Subcommand};
use tonic::transport::Channel;

/// Talk to an Argus controller.
///
/// Session commands take `NODE NAME`; when NAME exists on several tmux servers of the node,
/// add `--socket PATH` (the SOCKET column of `argusctl sessions`).
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// The controller's gRPC URL.
    #[arg(
        long,
        env = "ARGUS_CONTROLLER",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    controller: String,
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

type Client = AdminServiceClient<Channel>;

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

async fn run(args: Args) -> anyhow::Result<()> {
    let channel = Channel::from_shared(args.controller.clone())?
        .connect()
        .await
        .with_context(|| format!("connecting to {}", args.controller))?;
    let mut c = AdminServiceClient::new(channel);
    match args.cmd {
        Cmd::Nodes => nodes(&mut c).await,
        Cmd::Sessions { node } => sessions(&mut c, node).await,
        Cmd::Session { target } => session(&mut c, &target).await,
        Cmd::Nudge { target, text } => nudge(&mut c, &target, text).await,
        Cmd::Interrupt { target } => interrupt(&mut c, &target).await,
        Cmd::Kill { target, grace_ms } => kill(&mut c, &target, grace_ms).await,
        Cmd::Restart { target, command } => restart(&mut c, &target, command).await,
        Cmd::Capture { target, lines } => capture(&mut c, &target, lines).await,
        Cmd::Incidents { all } => incidents(&mut c, all).await,
        Cmd::Ack { id, by } => ack(&mut c, id, by).await,
        Cmd::Watch { node } => watch(&mut c, node).await,
        Cmd::Checkpoints {
            node,
            name,
            socket,
            id,
            limit,
        } => match id {
            Some(id) => show_checkpoint(&mut c, id).await,
            None => checkpoints(&mut c, node, name, socket, limit).await,
        },
        Cmd::Checkpoint { target } => take_checkpoint(&mut c, &target).await,
        Cmd::Handoffs { all, node } => handoffs(&mut c, all, node).await,
    }
}

// === subcommands ===

async fn nodes(c: &mut Client) -> anyhow::Result<()> {
    let r = c.list_nodes(pb::ListNodesRequest {}).await?.into_inner();
    println!(
        "{:<24} {:<8} {:>6} {:>8}  {:<20} LAST SEEN",
        "NODE", "HEALTH", "EPOCH", "SESSIONS", "HOST"
    );
    for n in r.nodes {
        println!(
            "{:<24} {:<8} {:>6} {:>8}  {:<20} {}",
            n.node_id,
            n.health,
            n.epoch,
            n.session_count,
            n.hostname,
            when(n.last_seen_ms)
        );
    }
    Ok(())
}

async fn sessions(c: &mut Client, node: Option<String>) -> anyhow::Result<()> {
    let r = c
        .list_sessions(pb::ListSessionsRequest {
            node_id: node.unwrap_or_default(),
        })
        .await?
        .into_inner();
    println!(
        "{:<16} {:<24} {:<10} {:<20} {:>8}  {:<6} {:<28} REASON",
        "NODE", "SESSION", "STATE", "CONDITION", "PID", "POLICY", "SOCKET"
    );
    for s in r.sessions {
        // "acts": the policy may nudge, interrupt, kill or restart it; "watch": only watched.
        let policy = if s.acted_on_because.is_empty() {
            "watch"
        } else {
            "acts"
        };
        println!(
            "{:<16} {:<24} {:<10} {:<20} {:>8}  {:<6} {:<28} {}",
            s.node_id,
            s.session_name,
            state_name(s.state),
            condition_name(s.condition),
            s.agent_pid,
            policy,
            s.tmux_socket,
            s.reason
        );
    }
    Ok(())
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
        println!("condition {}", condition_name(s.condition));
        println!(
            "agent     {} pid {} profile {}",
            s.agent_name, s.agent_pid, s.profile
        );
        println!(
            "activity  {}   changed {}",
            when(s.last_activity_ms),
            when(s.last_change_ms)
        );
        println!("attached  {}   pane {}", s.attached_clients, s.pane_id);
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

async fn incidents(c: &mut Client, all: bool) -> anyhow::Result<()> {
    let r = c
        .list_incidents(pb::ListIncidentsRequest {
            include_closed: all,
            limit: 100,
        })
        .await?
        .into_inner();
    println!(
        "{:<28} {:<15} {:<20} {:<8} {:<23}  SUMMARY",
        "ID", "KIND", "SCOPE", "STATUS", "OPENED"
    );
    for i in r.incidents {
        let status = if i.closed_ms > 0 {
            "closed"
        } else if i.acked_ms > 0 {
            "acked"
        } else {
            "open"
        };
        println!(
            "{:<28} {:<15} {:<20} {:<8} {:<23}  {}",
            i.id,
            i.kind,
            i.scope,
            status,
            when(i.opened_ms),
            i.summary
        );
    }
    Ok(())
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
) -> anyhow::Result<()> {
    let r = c
        .list_checkpoints(pb::ListCheckpointsRequest {
            node_id: node.unwrap_or_default(),
            session_name: name.unwrap_or_default(),
            tmux_socket: socket.unwrap_or_default(),
            limit,
        })
        .await?
        .into_inner();
    println!(
        "{:<23}  {:<12} {:<20} CHECKPOINT",
        "TAKEN", "NODE", "SESSION"
    );
    for k in r.checkpoints {
        if let Some(ck) = &k.checkpoint {
            println!(
                "{:<23}  {:<12} {:<20} {}",
                when(ck.taken_at_ms),
                k.node_id,
                ck.session_name,
                checkpoint_line(ck)
            );
        }
    }
    Ok(())
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

async fn handoffs(c: &mut Client, all: bool, node: Option<String>) -> anyhow::Result<()> {
    let r = c
        .list_handoffs(pb::ListHandoffsRequest {
            include_ended: all,
            node_id: node.unwrap_or_default(),
            limit: 100,
        })
        .await?
        .into_inner();
    println!(
        "{:<30} {:<12} {:<20} {:<10} {:<12} {:>8} {:<23} {:<28} MESSAGE",
        "ID", "NODE", "SESSION", "STATE", "REASON", "RESTARTS", "STARTED", "CHECKPOINT"
    );
    for h in r.handoffs {
        println!(
            "{:<30} {:<12} {:<20} {:<10} {:<12} {:>8} {:<23} {:<28} {}",
            h.id,
            h.node_id,
            h.session_name,
            h.state,
            h.reason,
            h.restarts,
            when(h.started_ms),
            or_dash(&h.checkpoint_id),
            h.message
        );
    }
    Ok(())
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
        return Err(status.into());
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
        Err(_) => return Err(status.into()),
    };
    if sockets.len() < 2 {
        return Err(status.into());
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
