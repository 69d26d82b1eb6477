//! `argusctl`: the command line for the controller's AdminService.

use anyhow::Context;
use argus_proto::v1 as pb;
use argus_proto::v1::admin_service_client::AdminServiceClient;
use clap::{Parser, Subcommand};
use tonic::transport::Channel;

/// Talk to an Argus controller.
#[derive(Parser, Debug)]
#[command(version, about)]
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
    /// List sessions (of one node with --node).
    Sessions {
        #[arg(long)]
        node: Option<String>,
    },
    /// Show one session with its history.
    Session { node: String, name: String },
    /// Type text into a session's agent and press Enter.
    Nudge {
        node: String,
        name: String,
        text: String,
    },
    /// Send Ctrl-C to a session.
    Interrupt { node: String, name: String },
    /// Terminate a session (process tree, then the tmux session).
    Kill {
        node: String,
        name: String,
        /// Milliseconds between SIGTERM and SIGKILL.
        #[arg(long, default_value_t = 0)]
        grace_ms: u32,
    },
    /// Start a session's agent again.
    Restart {
        node: String,
        name: String,
        /// Command to run instead of the session's own.
        #[arg(long, default_value = "")]
        command: String,
    },
    /// Print the last lines of a session's screen.
    Capture {
        node: String,
        name: String,
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
}

fn sref(node: String, name: String) -> pb::SessionRef {
    pb::SessionRef {
        node_id: node,
        session_name: name,
        tmux_socket: String::new(),
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

async fn run(args: Args) -> anyhow::Result<()> {
    let channel = Channel::from_shared(args.controller.clone())?
        .connect()
        .await
        .with_context(|| format!("connecting to {}", args.controller))?;
    let mut c = AdminServiceClient::new(channel);
    match args.cmd {
        Cmd::Nodes => {
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
        }
        Cmd::Sessions { node } => {
            let r = c
                .list_sessions(pb::ListSessionsRequest {
                    node_id: node.unwrap_or_default(),
                })
                .await?
                .into_inner();
            println!(
                "{:<16} {:<24} {:<10} {:<20} {:>8}  REASON",
                "NODE", "SESSION", "STATE", "CONDITION", "PID"
            );
            for s in r.sessions {
                println!(
                    "{:<16} {:<24} {:<10} {:<20} {:>8}  {}",
                    s.node_id,
                    s.session_name,
                    state_name(s.state),
                    condition_name(s.condition),
                    s.agent_pid,
                    s.reason
                );
            }
        }
        Cmd::Session { node, name } => {
            let r = c
                .get_session(pb::GetSessionRequest {
                    session: Some(sref(node, name)),
                    history_limit: 20,
                })
                .await?
                .into_inner();
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
        }
        Cmd::Nudge { node, name, text } => print_result(
            c.nudge(pb::NudgeRequest {
                session: Some(sref(node, name)),
                text,
            })
            .await?
            .into_inner(),
        )?,
        Cmd::Interrupt { node, name } => {
            print_result(c.interrupt(sref(node, name)).await?.into_inner())?
        }
        Cmd::Kill {
            node,
            name,
            grace_ms,
        } => print_result(
            c.kill(pb::KillRequest {
                session: Some(sref(node, name)),
                grace_ms,
            })
            .await?
            .into_inner(),
        )?,
        Cmd::Restart {
            node,
            name,
            command,
        } => print_result(
            c.restart(pb::RestartRequest {
                session: Some(sref(node, name)),
                command,
            })
            .await?
            .into_inner(),
        )?,
        Cmd::Capture { node, name, lines } => print_result(
            c.capture(pb::CaptureRequest {
                session: Some(sref(node, name)),
                lines,
            })
            .await?
            .into_inner(),
        )?,
        Cmd::Incidents { all } => {
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
        }
        Cmd::Ack { id, by } => {
            let i = c
                .ack_incident(pb::AckIncidentRequest { id, by })
                .await?
                .into_inner();
            println!("{} acknowledged by {}", i.id, i.acked_by);
        }
        Cmd::Watch { node } => {
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
        }
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
