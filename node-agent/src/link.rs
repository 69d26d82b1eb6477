//! The link to the controller: dial, Hello, Welcome (epoch check), a full snapshot, then changed
//! sessions, events, heartbeats and command results; reconnect with exponential backoff and full
//! jitter (250 ms to 10 s), reset only once the controller has answered. While the link is down
//! the prober keeps probing and events wait in the bounded buffer.
//!
//! Commands outlive the stream that brought them: a kill half-way through its grace period when
//! the controller goes away still ends with SIGKILL. Their results wait in [`Commands`] and go to
//! the next controller that welcomes this node, right after the full snapshot.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use argus_proto::v1 as pb;
use argus_proto::v1::node_agent_service_client::NodeAgentServiceClient;
use argus_shared::time::now_ms;
use rand::Rng;
use tokio::sync::{Mutex, mpsc, watch};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tracing::Instrument;

use crate::events::EventBuffer;
use crate::exec::Executor;
use crate::fence::Fence;
use crate::probe::{SessionKey, Snapshot};

/// Link settings.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// The controller's URL, e.g. `http://127.0.0.1:7070`.
    pub controller: String,
    /// This node's id.
    pub node_id: String,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Probe interval, told to the controller in Hello.
    pub probe_interval: Duration,
    /// First reconnect delay.
    pub backoff_min: Duration,
    /// Largest reconnect delay.
    pub backoff_max: Duration,
    /// TLS to the controller (`https://`), or `None` for plaintext.
    pub tls: Option<ClientTls>,
}

/// The files of a TLS client: re-read at every connection, so that rotated files are used from
/// the next reconnect without a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// The CA that signed the controller's certificate (PEM).
    pub ca: std::path::PathBuf,
    /// This client's certificate (PEM).
    pub cert: std::path::PathBuf,
    /// Its private key (PEM).
    pub key: std::path::PathBuf,
}

impl ClientTls {
    /// tonic's client TLS configuration from the files as they are now. The controller's name is
    /// verified against the host of the URL.
    pub fn load(&self) -> std::io::Result<tonic::transport::ClientTlsConfig> {
        let read = |p: &std::path::Path| {
            std::fs::read(p)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))
        };
        Ok(tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(read(&self.ca)?))
            .identity(tonic::transport::Identity::from_pem(
                read(&self.cert)?,
                read(&self.key)?,
            )))
    }
}

/// Why one connection ended.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Could not reach the controller.
    #[error("could not connect to {url}: {source}")]
    Connect {
        url: String,
        source: tonic::transport::Error,
    },
    /// The certificate files could not be read.
    #[error("reading the TLS files: {0}")]
    TlsFiles(std::io::Error),
    /// The controller refused the stream.
    #[error("controller refused the attach: {0}")]
    Refused(tonic::Status),
    /// The stream broke.
    #[error("stream to the controller broke: {0}")]
    Stream(tonic::Status),
    /// The controller closed the stream.
    #[error("controller closed the stream")]
    Closed,
    /// The controller did not behave.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// Everything the link needs from the rest of the node agent.
pub struct Link {
    pub config: LinkConfig,
    pub fence: Arc<Mutex<Fence>>,
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    pub events: Arc<EventBuffer>,
    pub executor: Arc<Executor>,
    pub hostname: String,
    pub boot_id: String,
    /// Commands running and results not yet delivered, across connections.
    pub commands: Commands,
    /// Requests from the local socket for the controller, and their callers.
    pub local: crate::local::Inbox,
    /// The guarded files the controller sent last (see [`crate::guard`]).
    pub guards: watch::Sender<Arc<Vec<pb::Guard>>>,
    /// The policy's selectors the controller sent last (the prober tries them after the node's
    /// own).
    pub selectors: watch::Sender<Arc<argus_shared::selector::Selectors>>,
}

/// Most command results kept while no controller listens; the oldest are dropped beyond it.
const UNDELIVERED_RESULTS: usize = 4096;

/// HTTP/2 keepalive: a stream that stopped carrying anything is declared broken after at most
/// interval + timeout.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Results handed to a stream within this long before it broke may never have left the host
/// (the stream is not acknowledged message by message): they are sent again on the next one.
const RESEND_WINDOW: Duration = KEEPALIVE_INTERVAL.saturating_add(KEEPALIVE_TIMEOUT);

/// How long shutdown waits for commands already started (a kill's grace is at most 60 s).
const COMMAND_DRAIN: Duration = Duration::from_secs(70);

/// The commands being executed and the results no controller has received yet. Owned by the
/// link across its connections, so that neither a command nor its result ends with a stream.
#[derive(Default)]
pub struct Commands {
    running: JoinSet<pb::CommandResult>,
    undelivered: VecDeque<pb::CommandResult>,
    /// Results sent on the current stream within [`RESEND_WINDOW`], oldest first.
    recent: VecDeque<(tokio::time::Instant, pb::CommandResult)>,
    /// When each result of the last [`RESEND_WINDOW`] was first handed to a stream.
    first_sent: std::collections::HashMap<String, tokio::time::Instant>,
}

/// One open stream to the controller: what the node agent sends, what it receives.
struct Stream {
    tx: mpsc::Sender<pb::AgentMessage>,
    inbound: tonic::Streaming<pb::ControllerMessage>,
}

// === impl Link ===

impl Link {
    /// Holds the link up until `shutdown`. Each connection runs in its own `link` span.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut delay = self.config.backoff_min;
        for attempt in 1u64.. {
            let span = tracing::info_span!(
                "link",
                node = %self.config.node_id,
                controller = %self.config.controller,
                attempt,
                epoch = tracing::field::Empty,
            );
            let mut answered = false;
            let result = tokio::select! {
                r = self.session(&mut answered, &shutdown).instrument(span.clone()) => r,
                () = shutdown.cancelled() => break,
            };
            if shutdown.is_cancelled() {
                break;
            }
            if answered {
                delay = self.config.backoff_min;
            }
            let wait = full_jitter(delay);
            crate::metrics::link_down(if result.is_ok() { "closed" } else { "error" });
            span.in_scope(|| match result {
                Ok(()) => tracing::info!(retry_in = ?wait, "controller closed the link"),
                Err(e) => tracing::warn!(error = %e, retry_in = ?wait, "link down"),
            });
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => break,
            }
            delay = (delay * 2).min(self.config.backoff_max);
        }
        self.commands.finish().await;
    }

    /// One connection, from dial to break: connect, handshake, resync, then pump until it ends.
    /// `answered` turns true once the controller has welcomed this node.
    async fn session(
        &mut self,
        answered: &mut bool,
        shutdown: &CancellationToken,
    ) -> Result<(), LinkError> {
        let client = self.connect().await?;
        let mut stream = self.handshake(client).await?;
        *answered = true;
        let result = async {
            let mut sent = self.resync(&stream.tx).await?;
            let waiting = self.commands.undelivered.len();
            if waiting > 0 {
                tracing::info!(
                    results = waiting,
                    "sending the results kept while no controller listened"
                );
            }
            self.commands.deliver(&stream.tx).await?;
            self.pump(&mut stream, &mut sent, shutdown).await
        }
        .await;
        if !shutdown.is_cancelled() {
            self.commands.resend_recent();
        }
        self.local.broke();
        result
    }

    /// Dials the controller.
    async fn connect(&self) -> Result<NodeAgentServiceClient<Channel>, LinkError> {
        let url = self.config.controller.clone();
        let mut endpoint = tonic::transport::Endpoint::from_shared(url.clone()).map_err(|e| {
            LinkError::Connect {
                url: url.clone(),
                source: e,
            }
        })?;
        if let Some(tls) = &self.config.tls {
            let tls = tls.load().map_err(LinkError::TlsFiles)?;
            endpoint = endpoint.tls_config(tls).map_err(|e| LinkError::Connect {
                url: url.clone(),
                source: e,
            })?;
        }
        let endpoint = endpoint
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT);
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| LinkError::Connect { url, source: e })?;
        Ok(NodeAgentServiceClient::new(channel)
            .max_decoding_message_size(argus_proto::MAX_AGENT_MESSAGE)
            .max_encoding_message_size(argus_proto::MAX_AGENT_MESSAGE))
    }

    /// Hello, then the controller's Welcome, whose epoch the fence must accept: a controller
    /// older than one already obeyed is refused.
    async fn handshake(
        &self,
        mut client: NodeAgentServiceClient<Channel>,
    ) -> Result<Stream, LinkError> {
        let (tx, rx) = mpsc::channel::<pb::AgentMessage>(256);
        let hello = pb::Hello {
            node_id: self.config.node_id.clone(),
            hostname: self.hostname.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            boot_id: self.boot_id.clone(),
            last_epoch: self.fence.lock().await.highest(),
            probe_interval_ms: u32::try_from(self.config.probe_interval.as_millis())
                .unwrap_or(u32::MAX),
        };
        send(&tx, pb::agent_message::Msg::Hello(hello)).await?;
        let mut inbound = client
            .attach(ReceiverStream::new(rx))
            .await
            .map_err(LinkError::Refused)?
            .into_inner();

        let welcome = match inbound.message().await.map_err(LinkError::Stream)? {
            Some(pb::ControllerMessage {
                msg: Some(pb::controller_message::Msg::Welcome(w)),
            }) => w,
            Some(_) => return Err(LinkError::Protocol("first message was not Welcome".into())),
            None => return Err(LinkError::Closed),
        };
        self.fence
            .lock()
            .await
            .accept_epoch(welcome.epoch)
            .map_err(|e| LinkError::Protocol(format!("Welcome refused: {e}")))?;
        tracing::Span::current().record("epoch", welcome.epoch);
        tracing::info!(epoch = welcome.epoch, controller = %welcome.controller_id, "attached");
        Ok(Stream { tx, inbound })
    }

    /// The full snapshot, then the events buffered while the link was down and the recent exits
    /// again (see [`EventBuffer::resync`]). Returns what the
    /// controller now knows, which later reports are diffs against.
    async fn resync(
        &mut self,
        tx: &mpsc::Sender<pb::AgentMessage>,
    ) -> Result<BTreeMap<SessionKey, pb::SessionObservation>, LinkError> {
        let current = self.snapshot.borrow_and_update().clone();
        send(
            tx,
            pb::agent_message::Msg::Report(pb::Report {
                full_snapshot: true,
                sessions: current.sessions.values().cloned().collect(),
                gone: Vec::new(),
                sent_at_ms: now_ms(),
            }),
        )
        .await?;
        for event in self.events.resync(now_ms()) {
            send(tx, pb::agent_message::Msg::Event(event)).await?;
        }
        Ok(current.sessions.clone())
    }

    /// Until the stream ends or `shutdown`: executes the controller's commands and sends their
    /// results, changed sessions, events and heartbeats.
    async fn pump(
        &mut self,
        stream: &mut Stream,
        sent: &mut BTreeMap<SessionKey, pb::SessionObservation>,
        shutdown: &CancellationToken,
    ) -> Result<(), LinkError> {
        let tx = &stream.tx;
        let mut heartbeat = tokio::time::interval(self.config.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                msg = stream.inbound.message() => match msg.map_err(LinkError::Stream)? {
                    Some(pb::ControllerMessage { msg: Some(pb::controller_message::Msg::Command(cmd)) }) => {
                        self.commands.start(self.executor.clone(), cmd);
                    }
                    Some(pb::ControllerMessage { msg: Some(pb::controller_message::Msg::LocalAnswer(a)) }) => {
                        self.local.answer(a);
                    }
                    Some(pb::ControllerMessage { msg: Some(pb::controller_message::Msg::Guards(g)) }) => {
                        tracing::info!(guards = g.guards.len(), "guarded files from the controller");
                        self.guards.send_replace(Arc::new(g.guards));
                    }
                    Some(pb::ControllerMessage { msg: Some(pb::controller_message::Msg::Selectors(s)) }) => {
                        match argus_shared::selector::Selectors::from_policy(&s) {
                            Ok(sel) => {
                                tracing::info!(selectors = sel.len(), "policy selectors from the controller");
                                self.selectors.send_replace(Arc::new(sel));
                            }
                            // The policy checked them; a controller that sends a command anyway
                            // is not obeyed, and the last good set stays.
                            Err(e) => tracing::warn!(error = %e, "refusing the controller's selectors"),
                        }
                    }
                    Some(_) => tracing::warn!("ignoring unexpected controller message"),
                    None => return Ok(()),
                },
                Some(done) = self.commands.running.join_next() => {
                    if let Ok(result) = done {
                        self.commands.keep(result);
                        self.commands.deliver(tx).await?;
                    }
                }
                changed = self.snapshot.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    let current = self.snapshot.borrow_and_update().clone();
                    if let Some(report) = diff(sent, &current) {
                        send(tx, pb::agent_message::Msg::Report(report)).await?;
                    }
                }
                () = self.events.wait() => {
                    for event in self.events.drain() {
                        send(tx, pb::agent_message::Msg::Event(event)).await?;
                    }
                }
                Some(msg) = self.local.next() => send(tx, msg).await?,
                _ = heartbeat.tick() => {
                    send(tx, pb::agent_message::Msg::Heartbeat(pb::Heartbeat { sent_at_ms: now_ms() })).await?;
                }
            }
        }
    }
}

// === impl Commands ===

impl Commands {
    /// Starts executing `cmd`; it runs to its end whatever happens to the stream.
    fn start(&mut self, executor: Arc<Executor>, cmd: pb::Command) {
        // Its own root span: the command may outlive the connection (and its span) it came on.
        let span = tracing::info_span!(parent: None, "command", id = %cmd.command_id);
        self.running
            .spawn(async move { executor.execute(cmd).await }.instrument(span));
    }

    /// Keeps a result until a controller has it.
    fn keep(&mut self, result: pb::CommandResult) {
        if self.undelivered.len() >= UNDELIVERED_RESULTS
            && let Some(old) = self.undelivered.pop_front()
        {
            tracing::warn!(command = %old.command_id, "result dropped: too many undelivered results");
        }
        self.undelivered.push_back(result);
    }

    /// Sends the results kept so far, oldest first, plus those of commands that finished since.
    /// A result the stream did not take stays kept for the next connection.
    async fn deliver(&mut self, tx: &mpsc::Sender<pb::AgentMessage>) -> Result<(), LinkError> {
        while let Some(Ok(result)) = self.running.try_join_next() {
            self.keep(result);
        }
        while let Some(result) = self.undelivered.pop_front() {
            let id = result.command_id.clone();
            let msg = pb::AgentMessage {
                msg: Some(pb::agent_message::Msg::Result(result.clone())),
            };
            if let Err(mpsc::error::SendError(msg)) = tx.send(msg).await {
                if let Some(pb::agent_message::Msg::Result(r)) = msg.msg {
                    self.undelivered.push_front(r);
                }
                return Err(LinkError::Closed);
            }
            tracing::debug!(command = %id, "command result sent");
            self.sent(result);
        }
        Ok(())
    }

    /// Remembers a result handed to the stream, for [`Self::resend_recent`], with the time it
    /// was first handed to one: a result goes again only within [`RESEND_WINDOW`] of that, so
    /// that streams breaking one after another do not pass it on forever.
    fn sent(&mut self, result: pb::CommandResult) {
        let now = tokio::time::Instant::now();
        self.first_sent
            .retain(|_, at| now.duration_since(*at) <= RESEND_WINDOW);
        let first = *self
            .first_sent
            .entry(result.command_id.clone())
            .or_insert(now);
        while self
            .recent
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > RESEND_WINDOW)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= UNDELIVERED_RESULTS {
            self.recent.pop_front();
        }
        self.recent.push_back((first, result));
    }

    /// The stream ended: the results handed to it within [`RESEND_WINDOW`] may not have reached
    /// the controller, so they go again, before those still waiting. A controller may thus get a
    /// result twice; the command id tells it so.
    fn resend_recent(&mut self) {
        let now = tokio::time::Instant::now();
        let recent = std::mem::take(&mut self.recent);
        for (_, result) in recent
            .into_iter()
            .rev()
            .filter(|(at, _)| now.duration_since(*at) <= RESEND_WINDOW)
        {
            self.undelivered.push_front(result);
        }
    }

    /// At shutdown: lets the commands already started end (bounded by [`COMMAND_DRAIN`]), so that
    /// no kill stops between its SIGTERM and its SIGKILL.
    async fn finish(&mut self) {
        if self.running.is_empty() {
            return;
        }
        tracing::info!(
            running = self.running.len(),
            "letting the commands already started finish"
        );
        let drained = tokio::time::timeout(COMMAND_DRAIN, async {
            while self.running.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                running = self.running.len(),
                "commands still running at exit"
            );
        }
    }
}

async fn send(
    tx: &mpsc::Sender<pb::AgentMessage>,
    msg: pb::agent_message::Msg,
) -> Result<(), LinkError> {
    tx.send(pb::AgentMessage { msg: Some(msg) })
        .await
        .map_err(|_| LinkError::Closed)
}

/// The report of what changed between `sent` and `current`; updates `sent`.
fn diff(
    sent: &mut BTreeMap<SessionKey, pb::SessionObservation>,
    current: &Snapshot,
) -> Option<pb::Report> {
    let changed: Vec<pb::SessionObservation> = current
        .sessions
        .iter()
        .filter(|(k, v)| sent.get(*k) != Some(*v))
        .map(|(_, v)| v.clone())
        .collect();
    let gone: Vec<pb::SessionGone> = sent
        .keys()
        .filter(|k| !current.sessions.contains_key(*k))
        .map(|(socket, name)| pb::SessionGone {
            tmux_socket: socket.clone(),
            session_name: name.clone(),
        })
        .collect();
    if changed.is_empty() && gone.is_empty() {
        return None;
    }
    sent.clone_from(&current.sessions);
    Some(pb::Report {
        full_snapshot: false,
        sessions: changed,
        gone,
        sent_at_ms: now_ms(),
    })
}

/// A random delay in [0, max]: "full jitter", so that a fleet does not reconnect in step.
fn full_jitter(max: Duration) -> Duration {
    let ms = max.as_millis().max(1) as u64;
    Duration::from_millis(rand::rng().random_range(0..=ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(name: &str, hash: &str) -> pb::SessionObservation {
        pb::SessionObservation {
            tmux_socket: "s".into(),
            session_name: name.into(),
            screen_hash: hash.into(),
            ..Default::default()
        }
    }

    #[test]
    fn diff_sends_only_changes_and_gone() {
        let mut sent = BTreeMap::new();
        let mut snap = Snapshot::default();
        snap.sessions
            .insert(("s".into(), "a".into()), obs("a", "1"));
        snap.sessions
            .insert(("s".into(), "b".into()), obs("b", "1"));
        let r = diff(&mut sent, &snap).expect("first diff");
        assert_eq!(r.sessions.len(), 2);
        assert!(diff(&mut sent, &snap).is_none());
        snap.sessions
            .insert(("s".into(), "a".into()), obs("a", "2"));
        snap.sessions.remove(&("s".into(), "b".into()));
        let r = diff(&mut sent, &snap).expect("second diff");
        assert_eq!(r.sessions, vec![obs("a", "2")]);
        assert_eq!(r.gone.len(), 1);
        assert_eq!(r.gone[0].session_name, "b");
    }

    fn result(id: &str) -> pb::CommandResult {
        pb::CommandResult {
            command_id: id.into(),
            ..Default::default()
        }
    }

    fn ids(rx: &mut mpsc::Receiver<pb::AgentMessage>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(m) = rx.try_recv() {
            if let Some(pb::agent_message::Msg::Result(r)) = m.msg {
                out.push(r.command_id);
            }
        }
        out
    }

    #[tokio::test]
    async fn results_wait_for_a_stream_and_go_again_after_a_break() {
        let mut commands = Commands::default();
        commands.keep(result("a"));
        commands.keep(result("b"));
        // No stream takes them: they stay, in order.
        let (tx, rx) = mpsc::channel(8);
        drop(rx);
        assert!(commands.deliver(&tx).await.is_err());
        assert_eq!(commands.undelivered.len(), 2);
        // The next stream gets them, oldest first.
        let (tx, mut rx) = mpsc::channel(8);
        commands.deliver(&tx).await.expect("delivered");
        assert_eq!(ids(&mut rx), ["a", "b"]);
        assert!(commands.undelivered.is_empty());
        // That stream breaks at once: both may be lost with it, so they go again, before a
        // result kept meanwhile.
        commands.keep(result("c"));
        commands.resend_recent();
        let (tx, mut rx) = mpsc::channel(8);
        commands.deliver(&tx).await.expect("delivered");
        assert_eq!(ids(&mut rx), ["a", "b", "c"]);
    }

    #[test]
    fn only_recent_results_go_again() {
        let mut commands = Commands::default();
        let now = tokio::time::Instant::now();
        let long_ago = now
            .checked_sub(RESEND_WINDOW + Duration::from_secs(1))
            .expect("uptime");
        commands.recent.push_back((long_ago, result("old")));
        commands.recent.push_back((now, result("new")));
        commands.resend_recent();
        let again: Vec<&str> = commands
            .undelivered
            .iter()
            .map(|r| r.command_id.as_str())
            .collect();
        assert_eq!(again, ["new"]);
        assert!(commands.recent.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn breaking_streams_do_not_pass_a_result_on_forever() {
        let mut commands = Commands::default();
        commands.keep(result("a"));
        let mut deliveries = 0;
        for _ in 0..10 {
            let (tx, mut rx) = mpsc::channel(8);
            commands.deliver(&tx).await.expect("delivered");
            deliveries += ids(&mut rx).len();
            // The stream breaks 5 s later.
            tokio::time::advance(Duration::from_secs(5)).await;
            commands.resend_recent();
        }
        // First sent at 0 s, again after the breaks at 5, 10 and 15 s (RESEND_WINDOW), not after.
        assert_eq!(deliveries, 4);
    }

    #[test]
    fn jitter_stays_in_range() {
        for _ in 0..100 {
            assert!(full_jitter(Duration::from_millis(250)) <= Duration::from_millis(250));
        }
    }
}
