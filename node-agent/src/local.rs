//! The node agent's local socket: agents inside the watched tmux sessions ask for things for
//! their own session (today: an alarm, `argusctl self schedule`) without any credential.
//!
//! The caller is identified by the kernel, not by what it says: the socket's peer credentials
//! (SO_PEERCRED) give its uid and pid; the uid must be the node agent's own (the socket is also
//! mode 0600, in the state dir), and the pid's ancestors must include the pane process of a
//! watched session (the probe's snapshot knows every pane pid). A request naming another
//! session is refused. Requests go to the controller over the node agent's stream
//! (`LocalRequest`) and its answer comes back to the caller.
//!
//! The protocol is JSON lines, one request and one answer per line, each with `"v": 1`:
//!
//! ```text
//! > {"v":1,"op":"schedule","in_ms":1200000,"note":"check the CI run"}
//! < {"v":1,"ok":true,"session":"agent-1","alarm_id":"al-...","due_ms":1764518400000}
//! > {"v":1,"op":"whoami"}
//! < {"v":1,"ok":true,"session":"agent-1","tmux_socket":"/tmp/tmux-1000/default"}
//! < {"v":1,"ok":false,"code":"refused","error":"..."}
//! > {"v":1,"op":"event","state":"waiting-permission","what":"claude:Notification"}
//! < {"v":1,"ok":true,"session":"agent-1","tmux_socket":"/tmp/tmux-1000/default"}
//! ```
//!
//! An unknown `op` is answered with `"code":"unsupported"`, so new operations (agent hook
//! events, checkpoints) can be added without breaking older callers or servers.
//!
//! Callers find the socket through `ARGUS_NODE_SOCKET`. tmux sessions do not inherit the node
//! agent's environment, so the node agent sets that variable in the global environment of every
//! tmux server it watches (`set-environment -g`): panes started afterwards have it, and
//! [`socket_for_caller`] asks the caller's own tmux server for it otherwise.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use argus_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::probe::{SessionKey, Snapshot};

/// The variable naming the socket, for callers.
pub const ENV: &str = "ARGUS_NODE_SOCKET";
/// The socket's file name in the state dir.
pub const FILE: &str = "node.sock";
/// The protocol version.
pub const VERSION: u32 = 1;
/// Longest request line.
const MAX_LINE: u64 = 16 * 1024;
/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 64;
/// How long a connection may stay silent.
const IDLE: Duration = Duration::from_secs(30);
/// How long a caller waits for the controller's answer.
const ANSWER_WAIT: Duration = Duration::from_secs(15);
/// Requests waiting for the link.
const QUEUE: usize = 256;
/// Ancestors walked from the caller to its pane.
const MAX_DEPTH: usize = 64;

// === the protocol ===

/// A request line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// Protocol version (1).
    pub v: u32,
    #[serde(flatten)]
    pub op: Op,
}

/// What a request asks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Set an alarm for the caller's own session: exactly one of `in_ms` and `at_ms` (Unix ms).
    Schedule {
        #[serde(default, skip_serializing_if = "is_zero_u64")]
        in_ms: u64,
        #[serde(default, skip_serializing_if = "is_zero_i64")]
        at_ms: i64,
        note: String,
        /// The session the caller means; refused unless it is its own. Optional.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<String>,
    },
    /// Which session the caller is in.
    Whoami,
    /// The agent's own report of its state, from its hooks (`argusctl self event`): a
    /// condition name (`at-prompt`, `thinking`, `waiting-permission`, `rate-limited`, `error`)
    /// and which hook said it. Answered at once; the controller hears it with the next
    /// observation, which it wakes.
    Event {
        state: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        what: String,
        /// The conversation id the CLI named, for a restart that resumes it.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        session_id: String,
    },
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}

/// An answer line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub v: u32,
    pub ok: bool,
    /// Why not: `bad_request`, `unsupported`, `refused` (not the caller's session, or not inside
    /// a watched pane), `unavailable` (no controller answered), or the controller's refusal
    /// (`invalid_argument`, `not_found`, `resource_exhausted`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The caller's session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmux_socket: Option<String>,
    /// A scheduled alarm's id and due time (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alarm_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_ms: Option<i64>,
}

impl Answer {
    fn refused(code: &str, error: impl Into<String>) -> Self {
        Self {
            v: VERSION,
            ok: false,
            code: Some(code.to_owned()),
            error: Some(error.into()),
            ..Default::default()
        }
    }
}

/// Parses one request line; a wrong version or an unknown op is an answer of its own.
fn parse(line: &str) -> Result<Request, Box<Answer>> {
    let value: serde_json::Value = serde_json::from_str(line)
        .map_err(|e| Box::new(Answer::refused("bad_request", format!("not JSON: {e}"))))?;
    match value.get("v").and_then(serde_json::Value::as_u64) {
        Some(v) if v == u64::from(VERSION) => {}
        Some(v) => {
            return Err(Box::new(Answer::refused(
                "unsupported",
                format!("protocol version {v}; this node agent speaks {VERSION}"),
            )));
        }
        None => return Err(Box::new(Answer::refused("bad_request", "\"v\" is missing"))),
    }
    let op = value
        .get("op")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("")
        .to_owned();
    serde_json::from_value(value).map_err(|e| {
        Box::new(if matches!(op.as_str(), "schedule" | "whoami") {
            Answer::refused("bad_request", e.to_string())
        } else {
            Answer::refused("unsupported", format!("unknown op {op:?}"))
        })
    })
}

// === the caller's session ===

/// The session whose pane process is `pid` or one of its ancestors.
fn session_of(pid: u32, snapshot: &Snapshot) -> Option<SessionKey> {
    let panes: HashMap<u32, &SessionKey> = snapshot
        .sessions
        .iter()
        .filter(|(_, o)| o.pane_pid > 0 && !o.pane_dead)
        .map(|(k, o)| (o.pane_pid, k))
        .collect();
    let mut at = pid;
    for _ in 0..MAX_DEPTH {
        if let Some(k) = panes.get(&at) {
            return Some((*k).clone());
        }
        match crate::procs::stat(at) {
            Some(s) if s.ppid > 1 => at = s.ppid,
            _ => return None,
        }
    }
    None
}

// === the server ===

/// A request for the controller and where its answer goes.
pub type Forward = (pb::LocalRequest, oneshot::Sender<pb::LocalAnswer>);

/// The link's side: requests to send on the stream, answers to route back.
pub struct Inbox {
    rx: mpsc::Receiver<Forward>,
    waiting: HashMap<String, oneshot::Sender<pb::LocalAnswer>>,
}

impl Inbox {
    /// The next request to send on the stream (its caller still waiting).
    pub async fn next(&mut self) -> Option<pb::agent_message::Msg> {
        loop {
            let (req, reply) = self.rx.recv().await?;
            if reply.is_closed() {
                continue;
            }
            self.waiting.retain(|_, r| !r.is_closed());
            self.waiting.insert(req.request_id.clone(), reply);
            return Some(pb::agent_message::Msg::LocalRequest(req));
        }
    }

    /// Routes the controller's answer to its caller.
    pub fn answer(&mut self, a: pb::LocalAnswer) {
        if let Some(reply) = self.waiting.remove(&a.request_id) {
            let _ = reply.send(a);
        }
    }

    /// The stream broke: the callers waiting are told so (dropping their senders).
    pub fn broke(&mut self) {
        self.waiting.clear();
    }
}

/// A queue between the local socket and the link.
pub fn channel() -> (mpsc::Sender<Forward>, Inbox) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (
        tx,
        Inbox {
            rx,
            waiting: HashMap::new(),
        },
    )
}

/// The local socket server.
pub struct Server {
    pub path: PathBuf,
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    pub forward: mpsc::Sender<Forward>,
    /// Where agents' hook reports go, and the probe to wake when one arrives.
    pub hooks: crate::hooks::Board,
    pub wake: Arc<tokio::sync::Notify>,
}

/// Binds the socket at `STATE_DIR/node.sock`, mode 0600. The socket is bound in a private
/// directory (0700) and moved into place, so it is never reachable with looser permissions.
/// A socket already answering there belongs to another node agent with the same state dir:
/// refused. A stale one is replaced.
pub fn bind(state_dir: &Path) -> std::io::Result<(UnixListener, PathBuf)> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::create_dir_all(state_dir)?;
    let dir = std::fs::canonicalize(state_dir)?;
    let path = dir.join(FILE);
    if std::os::unix::net::UnixStream::connect(&path).is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("{} is served by another process", path.display()),
        ));
    }
    let private = dir.join(format!(".node-sock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let staged = private.join(FILE);
    let bound = (|| -> std::io::Result<UnixListener> {
        let listener = UnixListener::bind(&staged)?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&staged, &path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&private);
    Ok((bound?, path))
}

impl Server {
    /// Serves until `shutdown`, then removes the socket file.
    pub async fn serve(self, listener: UnixListener, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let conns = TaskTracker::new();
        let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let uid = rustix::process::geteuid().as_raw();
        let mut seq = 0u64;
        tracing::info!(path = %this.path.display(), "local socket listening");
        loop {
            let permit = tokio::select! {
                () = shutdown.cancelled() => break,
                p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            };
            let stream = tokio::select! {
                () = shutdown.cancelled() => break,
                a = listener.accept() => match a {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "local socket accept failed");
                        continue;
                    }
                },
            };
            seq += 1;
            let this = this.clone();
            let stop = shutdown.clone();
            conns.spawn(
                async move {
                    this.connection(stream, uid, stop).await;
                    drop(permit);
                }
                .instrument(tracing::debug_span!("local", conn = seq)),
            );
        }
        conns.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), conns.wait()).await;
        let _ = std::fs::remove_file(&this.path);
    }

    /// Serves one connection: one answer per request line, until EOF, silence or shutdown.
    async fn connection(&self, stream: UnixStream, uid: u32, stop: CancellationToken) {
        let cred = stream.peer_cred();
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read);
        loop {
            let mut line = String::new();
            let mut limited = (&mut lines).take(MAX_LINE);
            let n = tokio::select! {
                () = stop.cancelled() => return,
                r = tokio::time::timeout(IDLE, limited.read_line(&mut line)) => match r {
                    Ok(Ok(n)) => n,
                    _ => return,
                },
            };
            if n == 0 {
                return;
            }
            let answer = if !line.ends_with('\n') && n as u64 >= MAX_LINE {
                Answer::refused(
                    "bad_request",
                    format!("a request line is at most {MAX_LINE} bytes"),
                )
            } else {
                match (&cred, parse(line.trim())) {
                    (_, Err(a)) => *a,
                    (Err(e), _) => Answer::refused("refused", format!("no peer credentials: {e}")),
                    (Ok(c), Ok(req)) if c.uid() != uid => {
                        let _ = req;
                        Answer::refused(
                            "refused",
                            format!("uid {} is not the node agent's ({uid})", c.uid()),
                        )
                    }
                    (Ok(c), Ok(req)) => match c.pid().and_then(|p| u32::try_from(p).ok()) {
                        Some(pid) => self.handle(pid, req).await,
                        None => Answer::refused("refused", "the caller's pid is unknown"),
                    },
                }
            };
            let mut text = serde_json::to_string(&answer).unwrap_or_default();
            text.push('\n');
            if write.write_all(text.as_bytes()).await.is_err() {
                return;
            }
        }
    }

    /// One request of the process `pid`.
    async fn handle(&self, pid: u32, req: Request) -> Answer {
        let snapshot = self.snapshot.borrow().clone();
        let Some((socket, name)) = session_of(pid, &snapshot) else {
            return Answer::refused(
                "refused",
                format!(
                    "process {pid} is not inside a watched tmux pane (the first pane of a session this node agent watches)"
                ),
            );
        };
        let own = |mut a: Answer| {
            a.session = Some(name.clone());
            a.tmux_socket = Some(socket.clone());
            a
        };
        match req.op {
            Op::Whoami => own(Answer {
                v: VERSION,
                ok: true,
                ..Default::default()
            }),
            Op::Event {
                state,
                what,
                session_id,
            } => {
                let Some(condition) = argus_shared::profile::Condition::parse(&state)
                    .filter(|c| *c != argus_shared::profile::Condition::None)
                else {
                    return own(Answer::refused(
                        "bad_request",
                        format!(
                            "unknown state {state:?}: one of at-prompt, thinking, waiting-permission, dialog, rate-limited, error"
                        ),
                    ));
                };
                let what: String = what.chars().take(120).collect();
                tracing::debug!(pid, session = %name, state = %state, what = %what, "hook event");
                if !session_id.is_empty() && !crate::hooks::plain_id(&session_id) {
                    return own(Answer::refused(
                        "bad_request",
                        "session_id must be a plain id (letters, digits, '-', '_'; at most 128)",
                    ));
                }
                if self.hooks.record(
                    (socket.clone(), name.clone()),
                    condition,
                    what,
                    session_id,
                    argus_shared::time::now_ms(),
                ) {
                    self.wake.notify_one();
                }
                own(Answer {
                    v: VERSION,
                    ok: true,
                    ..Default::default()
                })
            }
            Op::Schedule {
                in_ms,
                at_ms,
                note,
                session,
            } => {
                if let Some(asked) = session.filter(|s| *s != name) {
                    tracing::warn!(pid, own = %name, asked = %asked, "local request for another session refused");
                    return own(Answer::refused(
                        "refused",
                        format!(
                            "a session may set alarms only for itself: the caller is in {name:?}, not {asked:?}"
                        ),
                    ));
                }
                let request = pb::LocalRequest {
                    request_id: format!("{}-{pid}-{}", std::process::id(), rand::random::<u32>()),
                    tmux_socket: socket.clone(),
                    session_name: name.clone(),
                    caller_pid: pid,
                    action: Some(pb::local_request::Action::Schedule(pb::LocalSchedule {
                        in_ms,
                        at_ms,
                        note,
                    })),
                };
                own(self.ask(request).await)
            }
        }
    }

    /// Forwards a request to the controller and waits for its answer.
    async fn ask(&self, request: pb::LocalRequest) -> Answer {
        let (reply, answer) = oneshot::channel();
        if self.forward.try_send((request, reply)).is_err() {
            return Answer::refused(
                "unavailable",
                "too many requests waiting for the controller",
            );
        }
        match tokio::time::timeout(ANSWER_WAIT, answer).await {
            Ok(Ok(a)) if a.code == 0 => Answer {
                v: VERSION,
                ok: true,
                alarm_id: Some(a.alarm_id),
                due_ms: Some(a.due_ms),
                ..Default::default()
            },
            Ok(Ok(a)) => Answer::refused(&code_name(a.code), a.message),
            Ok(Err(_)) => Answer::refused(
                "unavailable",
                "the link to the controller broke before it answered; the request may or may not have been carried out",
            ),
            Err(_) => Answer::refused(
                "unavailable",
                format!(
                    "no answer from the controller within {} s (is it reachable?)",
                    ANSWER_WAIT.as_secs()
                ),
            ),
        }
    }
}

/// A gRPC code as a snake_case word (`NotFound` -> `not_found`).
fn code_name(code: i32) -> String {
    let camel = format!("{:?}", tonic::Code::from_i32(code));
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// Sets `ARGUS_NODE_SOCKET` in the global environment of every watched tmux server that has
/// sessions, once per server start (a server that exits and starts again loses it). Ends with
/// `shutdown`.
pub async fn advertise(
    path: PathBuf,
    mut snapshot: watch::Receiver<Arc<Snapshot>>,
    shutdown: CancellationToken,
) {
    let value = path.display().to_string();
    let mut done: HashSet<String> = HashSet::new();
    loop {
        let servers: HashSet<String> = snapshot
            .borrow_and_update()
            .sessions
            .keys()
            .map(|(s, _)| s.clone())
            .collect();
        // A server without sessions has exited: when it comes back, it needs the variable again.
        done.retain(|s| servers.contains(s));
        let todo: Vec<String> = servers.difference(&done).cloned().collect();
        for server in &todo {
            let out = tokio::process::Command::new("tmux")
                .arg("-S")
                .arg(server)
                .args(["set-environment", "-g", ENV, &value])
                .stdin(std::process::Stdio::null())
                .output()
                .await;
            match out {
                Ok(o) if o.status.success() => {
                    tracing::debug!(tmux = %server, "{ENV} set in the tmux server's environment");
                    done.insert(server.clone());
                }
                Ok(o) => {
                    tracing::debug!(tmux = %server, error = %String::from_utf8_lossy(&o.stderr).trim(), "could not set {ENV}")
                }
                Err(e) => tracing::debug!(tmux = %server, error = %e, "could not run tmux"),
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            r = snapshot.changed() => if r.is_err() { return },
        }
    }
}

// === the client side (argusctl self) ===

/// Why a call on the local socket failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No socket path could be found.
    #[error(
        "no node agent socket: set {ENV}, or run inside a tmux session watched by a node agent"
    )]
    NoSocket,
    /// The socket did not answer.
    #[error("talking to the node agent at {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The answer did not parse.
    #[error("the node agent's answer does not parse: {0}")]
    Answer(#[from] serde_json::Error),
}

/// The socket a caller inside a session should use: `ARGUS_NODE_SOCKET`, else what the caller's
/// tmux server has in its global environment (the node agent put it there), else `None`.
pub fn socket_for_caller() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(ENV).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("TMUX")?;
    let out = std::process::Command::new("tmux")
        .args(["show-environment", "-g", ENV])
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let value = text.trim().strip_prefix(ENV)?.strip_prefix('=')?;
    (out.status.success() && !value.is_empty()).then(|| PathBuf::from(value))
}

/// Sends one request and reads its answer.
pub async fn call(path: &Path, req: &Request) -> Result<Answer, ClientError> {
    let io = |source| ClientError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut stream = UnixStream::connect(path).await.map_err(io)?;
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    stream.write_all(line.as_bytes()).await.map_err(io)?;
    let mut reader = BufReader::new(stream);
    let mut answer = String::new();
    reader.read_line(&mut answer).await.map_err(io)?;
    Ok(serde_json::from_str(answer.trim())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_unknown_ops_or_versions_are_answered() {
        let r = parse(r#"{"v":1,"op":"schedule","in_ms":5,"note":"n"}"#).expect("schedule");
        assert!(
            matches!(r.op, Op::Schedule { in_ms: 5, at_ms: 0, ref note, session: None } if note == "n")
        );
        assert!(matches!(
            parse(r#"{"v":1,"op":"whoami"}"#).expect("whoami").op,
            Op::Whoami
        ));
        let a = parse(r#"{"v":1,"op":"event","kind":"stop"}"#).expect_err("unknown op");
        assert_eq!(a.code.as_deref(), Some("unsupported"));
        let a = parse(r#"{"v":2,"op":"whoami"}"#).expect_err("version");
        assert_eq!(a.code.as_deref(), Some("unsupported"));
        let a = parse(r#"{"op":"whoami"}"#).expect_err("no version");
        assert_eq!(a.code.as_deref(), Some("bad_request"));
        let a = parse(r#"{"v":1,"op":"schedule"}"#).expect_err("no note");
        assert_eq!(a.code.as_deref(), Some("bad_request"));
        assert_eq!(code_name(5), "not_found");
        assert_eq!(code_name(3), "invalid_argument");
        let a = parse("not json").expect_err("garbage");
        assert_eq!(a.code.as_deref(), Some("bad_request"));
        // Round trip of what argusctl sends.
        let req = Request {
            v: VERSION,
            op: Op::Schedule {
                in_ms: 0,
                at_ms: 7,
                note: "x".into(),
                session: Some("s".into()),
            },
        };
        let text = serde_json::to_string(&req).expect("json");
        assert_eq!(
            text,
            r#"{"v":1,"op":"schedule","at_ms":7,"note":"x","session":"s"}"#
        );
    }

    #[test]
    fn the_caller_is_found_through_its_ancestors() {
        let mut snap = Snapshot::default();
        let me = std::process::id();
        let parent = crate::procs::stat(me).expect("stat").ppid;
        snap.sessions.insert(
            ("/s".into(), "mine".into()),
            pb::SessionObservation {
                pane_pid: parent,
                ..Default::default()
            },
        );
        assert_eq!(session_of(me, &snap), Some(("/s".into(), "mine".into())));
        snap.sessions.clear();
        snap.sessions.insert(
            ("/s".into(), "other".into()),
            pb::SessionObservation {
                pane_pid: u32::MAX - 1,
                ..Default::default()
            },
        );
        assert_eq!(session_of(me, &snap), None);
    }

    #[tokio::test]
    async fn the_socket_is_private_and_a_live_one_is_not_taken_over() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let (listener, path) = bind(dir.path()).expect("bind");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        let e = bind(dir.path()).expect_err("in use");
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
        drop(listener);
        // A stale socket file (its server gone) is replaced.
        let (_listener, again) = bind(dir.path()).expect("rebind");
        assert_eq!(again, path);
    }
}
