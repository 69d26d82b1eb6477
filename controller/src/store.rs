//! Durable state behind one interface: node epochs, session transitions and the command audit
//! log. Decision code never waits on it: transitions and commands go through the [`Recorder`], a
//! write-behind queue that batches them into transactions and retries a failing store without
//! dropping anything; only the epoch bump on attach is written before the controller answers.

#[cfg(test)]
mod checkpoint_tests;
pub mod journal;
pub mod memory;
pub mod postgres;
#[cfg(test)]
mod reader_tests;
pub mod recorder;
pub mod sqlite;
/// The private PostgreSQL server the store tests run against (shared with the tests crate).
#[cfg(test)]
#[path = "../../tests/src/postgres.rs"]
#[allow(dead_code)] // some helpers serve only the tests crate
pub(crate) mod test_postgres;
#[cfg(test)]
mod tests;

use argus_shared::state::SessionState;
use async_trait::async_trait;

pub use recorder::{Recorder, StoreHealth};

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or is unreachable.
    #[error("database {op} failed: {source}")]
    Db {
        op: &'static str,
        #[source]
        source: sqlx::Error,
    },
    /// A batched database operation failed; every request of the batch shares the cause.
    #[error("database {op} failed: {source}")]
    Batch {
        op: &'static str,
        #[source]
        source: std::sync::Arc<sqlx::Error>,
    },
    /// Migrations could not be applied.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database did not answer in time (locked, or a wedged connection that is reopened).
    #[error("database {op} did not answer within {after:?}")]
    Timeout {
        op: &'static str,
        after: std::time::Duration,
    },
    /// The URL names no supported backend.
    #[error("unsupported database URL {0:?}: use sqlite://PATH, postgres://HOST/DB or memory://")]
    Unsupported(String),
}

impl StoreError {
    /// The gRPC code for a call that failed on the store: a pool that is closed or exhausted, a
    /// database that is busy, locked or out of space, or one that does not answer may recover
    /// (UNAVAILABLE, worth a retry); anything else is the server's fault (INTERNAL).
    pub fn code(&self) -> tonic::Code {
        let may_recover = |e: &sqlx::Error| match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
            // PostgreSQL: connection exceptions (08), serialization failures and deadlocks (40),
            // insufficient resources (53), the server shutting down (57P).
            sqlx::Error::Database(d)
                if d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                    .is_some() =>
            {
                d.code()
                    .is_some_and(|c| ["08", "40", "53", "57P"].iter().any(|p| c.starts_with(p)))
            }
            // SQLITE_BUSY (5), SQLITE_LOCKED (6), SQLITE_IOERR (10), SQLITE_FULL (13), with
            // their extended codes in the high bits.
            sqlx::Error::Database(d) => d
                .code()
                .and_then(|c| c.parse::<i64>().ok())
                .is_some_and(|c| matches!(c & 0xff, 5 | 6 | 10 | 13)),
            _ => false,
        };
        match self {
            Self::Db { source, .. } if may_recover(source) => tonic::Code::Unavailable,
            Self::Batch { source, .. } if may_recover(source) => tonic::Code::Unavailable,
            Self::Timeout { .. } => tonic::Code::Unavailable,
            Self::Db { .. } | Self::Batch { .. } | Self::Migrate(_) | Self::Unsupported(_) => {
                tonic::Code::Internal
            }
        }
    }
}

impl From<StoreError> for tonic::Status {
    fn from(e: StoreError) -> Self {
        crate::server::status(e.code(), e)
    }
}

/// A node as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub node_id: String,
    pub epoch: u64,
    pub hostname: String,
    pub agent_version: String,
    pub boot_id: String,
    pub last_attach_ms: i64,
}

pub use argus_shared::ids::SessionRef;

/// A recorded transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitionRow {
    pub session: SessionRef,
    pub at_ms: i64,
    pub from: String,
    pub to: String,
    pub reason: String,
}

/// A recorded command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRow {
    pub command_id: String,
    pub session: SessionRef,
    pub epoch: u64,
    pub action: String,
    pub origin: String,
    pub reason: String,
    pub issued_at_ms: i64,
    /// `CommandStatus` name; `COMMAND_STATUS_UNSPECIFIED` while pending.
    pub status: String,
    pub result_message: String,
    pub finished_at_ms: i64,
}

/// A stored incident.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncidentRow {
    pub id: String,
    pub kind: String,
    pub scope: String,
    pub opened_ms: i64,
    /// 0 while open.
    pub closed_ms: i64,
    /// 0 while not acknowledged.
    pub acked_ms: i64,
    pub acked_by: String,
    pub summary: String,
    pub sessions: u32,
    pub until_ms: i64,
}

/// A session in a rate-limit episode, as the replica that owns its node records it for the
/// leader's fleet-wide provider correlation (`argus_decide::correlate::fleet`). Replaced when the
/// episode starts or is renewed, deleted when it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitRow {
    pub session: SessionRef,
    /// The provider scope, `provider/account`.
    pub scope: String,
    /// When the episode started or was last renewed.
    pub at_ms: i64,
    /// The cooldown's end.
    pub until_ms: i64,
}

/// A stored alarm (see `crate::alarms`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlarmRow {
    pub id: String,
    pub session: SessionRef,
    pub note: String,
    /// `admin` or `self`.
    pub origin: String,
    pub created_ms: i64,
    pub due_ms: i64,
    /// `pending`, `delivered` or `cancelled`.
    pub state: String,
    /// 0 while pending.
    pub closed_ms: i64,
    /// The nudge that delivered it.
    pub command_id: String,
    pub message: String,
}

/// The state of an alarm not yet delivered or cancelled.
pub const ALARM_PENDING: &str = "pending";

/// The order alarms are listed in: pending first, soonest due first; then closed ones, most
/// recently closed first; the id breaks ties.
pub fn alarm_order(a: &AlarmRow, b: &AlarmRow) -> std::cmp::Ordering {
    let key = |r: &AlarmRow| {
        let pending = r.state == ALARM_PENDING;
        (
            !pending,
            if pending { r.due_ms } else { -r.closed_ms },
            r.id.clone(),
        )
    };
    key(a).cmp(&key(b))
}

/// A stored checkpoint (taken by a node agent before a kill or a restart, or on demand).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointRow {
    pub id: String,
    pub session: SessionRef,
    pub taken_ms: i64,
    /// "kill", "restart" or "manual".
    pub trigger: String,
    /// The command it was taken for.
    pub command_id: String,
    /// Why that command was sent.
    pub reason: String,
    /// The checkpoint itself, `argus.v1.Checkpoint` encoded as protobuf.
    pub data: Vec<u8>,
}

/// Which checkpoints to list: of the fleet, of a node, or of one session (empty fields match
/// everything).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckpointQuery {
    pub node_id: String,
    pub session_name: String,
    pub tmux_socket: String,
}

impl CheckpointQuery {
    /// True when `s` is one of the sessions asked for.
    pub fn matches(&self, s: &SessionRef) -> bool {
        (self.node_id.is_empty() || self.node_id == s.node_id)
            && (self.session_name.is_empty() || self.session_name == s.session_name)
            && (self.tmux_socket.is_empty() || self.tmux_socket == s.tmux_socket)
    }
}

/// A stored handoff: a restart from one agent incarnation to the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandoffRow {
    pub id: String,
    pub session: SessionRef,
    /// `crash`, `stall`, `rate_limit`, `operator`, `quality_gate` or `other`.
    pub reason: String,
    /// The restart command's reason.
    pub detail: String,
    pub checkpoint_id: String,
    pub restart_command_id: String,
    /// The agent before and after (0 while unknown).
    pub from_pid: u32,
    pub from_start: u64,
    pub to_pid: u32,
    pub to_start: u64,
    /// `waiting`, `resumed`, `completed` or `failed`.
    pub state: String,
    pub started_ms: i64,
    pub resumed_ms: i64,
    /// When it completed or failed (0 while open).
    pub ended_ms: i64,
    pub restarts: u32,
    pub resume_attempts: u32,
    pub resume_command_id: String,
    pub message: String,
}

/// Which handoffs to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HandoffQuery {
    /// Also completed and failed ones.
    pub include_ended: bool,
    /// Only this node's (empty: all).
    pub node_id: String,
    /// Only this session's.
    pub session: Option<SessionRef>,
}

impl HandoffQuery {
    /// True when `h` is one of the handoffs asked for.
    pub fn matches(&self, h: &HandoffRow) -> bool {
        (self.include_ended || h.ended_ms == 0)
            && (self.node_id.is_empty() || self.node_id == h.session.node_id)
            && self.session.as_ref().is_none_or(|s| *s == h.session)
    }
}

/// One write for the recorder.
#[derive(Debug, Clone)]
pub enum Write {
    Transition(TransitionRow),
    CommandIssued(CommandRow),
    CommandFinished {
        command_id: String,
        status: String,
        message: String,
        at_ms: i64,
    },
    /// A session's durable policy state (JSON), replacing the previous one.
    Durable {
        session: SessionRef,
        data: String,
        at_ms: i64,
    },
    /// An incident, inserted or replaced.
    Incident(IncidentRow),
    /// A result that arrived after the controller closed its command (as `unknown` or
    /// `expired`), or for a command of a previous controller process: it replaces the closing
    /// outcome and the message says it came late. Only a row of `node_id` that is still pending
    /// or was closed by the controller changes.
    CommandLate {
        command_id: String,
        node_id: String,
        status: String,
        message: String,
        at_ms: i64,
    },
    /// A new alarm; an id already stored is left as it is.
    AlarmScheduled(AlarmRow),
    /// An alarm delivered or cancelled; only a pending alarm changes.
    AlarmClosed {
        id: String,
        state: String,
        at_ms: i64,
        command_id: String,
        message: String,
    },
    /// A checkpoint; an id already stored is left as it is.
    Checkpoint(CheckpointRow),
    /// A handoff, inserted or replaced.
    Handoff(HandoffRow),
    /// Replicas: a session's rate-limit episode started or was renewed (inserted or replaced).
    RateLimit(RateLimitRow),
    /// Replicas: a session's rate-limit episode ended (its row, if any, is deleted).
    RateLimitOver {
        session: SessionRef,
    },
}

/// The status a command row has while no outcome is known.
pub const PENDING: &str = "COMMAND_STATUS_UNSPECIFIED";
/// The statuses the controller closes a command with (see `dispatch`): a late result may
/// replace them.
pub const CLOSED_BY_CONTROLLER: [&str; 2] = ["COMMAND_STATUS_UNKNOWN", "COMMAND_STATUS_EXPIRED"];

/// The message of a late result: what the node said, and that it came after the command was
/// closed (as `closed_as`, a status name).
pub fn late_message(closed_as: &str, message: &str) -> String {
    if closed_as == PENDING {
        format!("arrived late, from a previous controller process: {message}")
    } else {
        let name = closed_as
            .trim_start_matches("COMMAND_STATUS_")
            .to_ascii_lowercase();
        format!("arrived late, after the controller closed it as {name}: {message}")
    }
}

/// A session's recorded history, newest first.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub transitions: Vec<TransitionRow>,
    pub commands: Vec<CommandRow>,
}

/// A stored row that cannot be read back. Reported (named by its session), never dropped
/// silently: see [`Recovered`].
#[derive(Debug, thiserror::Error)]
pub enum UnreadableRow {
    /// A session's durable policy state does not parse.
    #[error("the stored policy state of {} does not parse", describe(.session))]
    Durable {
        session: SessionRef,
        #[source]
        source: serde_json::Error,
    },
    /// A session's last recorded state is not a state this controller knows.
    #[error("the last recorded state {state:?} of {} is not a known state", describe(.session))]
    State { session: SessionRef, state: String },
}

impl UnreadableRow {
    /// The session whose row it is.
    pub fn session(&self) -> &SessionRef {
        match self {
            Self::Durable { session, .. } | Self::State { session, .. } => session,
        }
    }
}

/// A session as people read it in messages.
fn describe(s: &SessionRef) -> String {
    format!(
        "session {:?} on node {:?} (tmux socket {:?})",
        s.session_name, s.node_id, s.tmux_socket
    )
}

/// Rows read back at start-up: those that parsed, and those that did not.
#[derive(Debug)]
pub struct Recovered<T> {
    pub rows: Vec<(SessionRef, T)>,
    pub unreadable: Vec<UnreadableRow>,
}

impl<T> Recovered<T> {
    fn decode(
        raw: Vec<(SessionRef, String)>,
        parse: impl Fn(SessionRef, String) -> Result<(SessionRef, T), UnreadableRow>,
    ) -> Self {
        let mut out = Self {
            rows: Vec::with_capacity(raw.len()),
            unreadable: Vec::new(),
        };
        for (session, text) in raw {
            match parse(session, text) {
                Ok(row) => out.rows.push(row),
                Err(e) => out.unreadable.push(e),
            }
        }
        out
    }

    /// Logs one warning per unreadable row, naming its session and the cause, then a count;
    /// returns the rows that parsed. `what` names the data ("policy state", "last states").
    pub fn reported(self, what: &str) -> Vec<(SessionRef, T)> {
        for e in &self.unreadable {
            let s = e.session();
            let cause = std::error::Error::source(e).map(ToString::to_string);
            tracing::warn!(
                node = %s.node_id,
                tmux_socket = %s.tmux_socket,
                session = %s.session_name,
                cause = cause.as_deref().unwrap_or(""),
                "{e}: ignored; the session starts without it"
            );
        }
        if !self.unreadable.is_empty() {
            tracing::warn!(
                unreadable = self.unreadable.len(),
                readable = self.rows.len(),
                "some stored {what} could not be read back"
            );
        }
        self.rows
    }
}

// === impl dyn Store: typed readers over the backends' raw rows ===

impl dyn Store {
    /// The last recorded state of every session, parsed; unknown states are returned as
    /// [`UnreadableRow::State`].
    pub async fn recorded_states(&self) -> Result<Recovered<SessionState>, StoreError> {
        let raw = self.last_states().await?;
        Ok(Recovered::decode(
            raw,
            |session, state| match SessionState::parse(&state) {
                Some(parsed) => Ok((session, parsed)),
                None => Err(UnreadableRow::State { session, state }),
            },
        ))
    }

    /// The last recorded state of every session and when it was entered (Unix ms), parsed;
    /// unknown states are returned as [`UnreadableRow::State`].
    pub async fn recorded_sessions(&self) -> Result<Recovered<(SessionState, i64)>, StoreError> {
        let mut out = Recovered {
            rows: Vec::new(),
            unreadable: Vec::new(),
        };
        for t in self.last_transitions().await? {
            match SessionState::parse(&t.to) {
                Some(state) => out.rows.push((t.session, (state, t.at_ms))),
                None => out.unreadable.push(UnreadableRow::State {
                    session: t.session,
                    state: t.to,
                }),
            }
        }
        Ok(out)
    }

    /// Replicas: [`Self::recorded_sessions`] of one node's sessions (a takeover loads them).
    pub async fn node_sessions(
        &self,
        node_id: &str,
    ) -> Result<Vec<(SessionRef, (SessionState, i64))>, StoreError> {
        let mut out = Vec::new();
        let mut unreadable = Vec::new();
        for t in self.node_transitions(node_id).await? {
            match SessionState::parse(&t.to) {
                Some(state) => out.push((t.session, (state, t.at_ms))),
                None => unreadable.push(UnreadableRow::State {
                    session: t.session,
                    state: t.to,
                }),
            }
        }
        Ok(Recovered {
            rows: out,
            unreadable,
        }
        .reported("last states"))
    }

    /// Replicas: [`Self::recorded_durables`] of one node's sessions.
    pub async fn node_durable_states<D: serde::de::DeserializeOwned>(
        &self,
        node_id: &str,
    ) -> Result<Vec<(SessionRef, D)>, StoreError> {
        let raw = self.node_durables(node_id).await?;
        Ok(
            Recovered::decode(raw, |session, data| match serde_json::from_str(&data) {
                Ok(d) => Ok((session, d)),
                Err(source) => Err(UnreadableRow::Durable { session, source }),
            })
            .reported("durable session states"),
        )
    }

    /// Every session's durable policy state, deserialized; rows that do not parse as `D` are
    /// returned as [`UnreadableRow::Durable`].
    pub async fn recorded_durables<D: serde::de::DeserializeOwned>(
        &self,
    ) -> Result<Recovered<D>, StoreError> {
        let raw = self.durables().await?;
        Ok(Recovered::decode(
            raw,
            |session, data| match serde_json::from_str(&data) {
                Ok(d) => Ok((session, d)),
                Err(source) => Err(UnreadableRow::Durable { session, source }),
            },
        ))
    }
}

/// The durable store: SQLite (the embedded default), PostgreSQL (shared by controller replicas)
/// and an in-memory one for tests. `store/tests.rs` holds the contract every backend passes.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Records an attach and returns the node's new epoch: larger than any stored before and
    /// than `at_least` (the highest epoch the node agent remembers).
    async fn attach_node(&self, node: &NodeRecord, at_least: u64) -> Result<u64, StoreError>;
    /// Every node ever attached.
    async fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError>;
    /// Applies writes in one transaction.
    async fn write(&self, batch: &[Write]) -> Result<(), StoreError>;
    /// A session's recent history.
    async fn history(&self, session: &SessionRef, limit: u32) -> Result<History, StoreError>;
    /// The last recorded state of every session.
    async fn last_states(&self) -> Result<Vec<(SessionRef, String)>, StoreError>;
    /// Every session's durable policy state (JSON).
    async fn durables(&self) -> Result<Vec<(SessionRef, String)>, StoreError>;
    /// The last recorded transition of every session.
    async fn last_transitions(&self) -> Result<Vec<TransitionRow>, StoreError> {
        // A backend that keeps no times: the states alone.
        Ok(self
            .last_states()
            .await?
            .into_iter()
            .map(|(session, to)| TransitionRow {
                session,
                at_ms: 0,
                from: String::new(),
                to,
                reason: String::new(),
            })
            .collect())
    }
    /// The last recorded transition of each session named `name` on `node_id` (one per tmux
    /// socket): sessions that left the live view, found by name.
    async fn sessions_named(
        &self,
        node_id: &str,
        name: &str,
    ) -> Result<Vec<TransitionRow>, StoreError> {
        Ok(self
            .last_transitions()
            .await?
            .into_iter()
            .filter(|t| t.session.node_id == node_id && t.session.session_name == name)
            .collect())
    }
    /// The last recorded transition of every session of `node_id` (a replica taking the node
    /// over loads them).
    async fn node_transitions(&self, node_id: &str) -> Result<Vec<TransitionRow>, StoreError> {
        let mut all = self.last_transitions().await?;
        all.retain(|t| t.session.node_id == node_id);
        Ok(all)
    }
    /// The durable policy state of every session of `node_id`.
    async fn node_durables(&self, node_id: &str) -> Result<Vec<(SessionRef, String)>, StoreError> {
        let mut all = self.durables().await?;
        all.retain(|(s, _)| s.node_id == node_id);
        Ok(all)
    }
    /// Commands still pending (no outcome recorded), oldest first.
    async fn pending_commands(&self) -> Result<Vec<CommandRow>, StoreError>;
    /// Incidents, open ones first then newest first; closed ones only with `include_closed`.
    async fn incidents(
        &self,
        include_closed: bool,
        limit: u32,
    ) -> Result<Vec<IncidentRow>, StoreError>;
    /// Alarms: pending ones (soonest due first), then with `include_closed` the most recently
    /// closed ones, at most `limit` in all. A backend that keeps no alarms has none.
    async fn alarms(&self, include_closed: bool, limit: u32) -> Result<Vec<AlarmRow>, StoreError> {
        let _ = (include_closed, limit);
        Ok(Vec::new())
    }
    /// One alarm by id.
    async fn alarm(&self, id: &str) -> Result<Option<AlarmRow>, StoreError> {
        let _ = id;
        Ok(None)
    }
    /// Checkpoints matching `q`, newest first. A backend that keeps none has none.
    async fn checkpoints(
        &self,
        _q: &CheckpointQuery,
        _limit: u32,
    ) -> Result<Vec<CheckpointRow>, StoreError> {
        Ok(Vec::new())
    }
    /// One checkpoint by id.
    async fn checkpoint(&self, _id: &str) -> Result<Option<CheckpointRow>, StoreError> {
        Ok(None)
    }
    /// Replicas: every session's open rate-limit episode. A backend that keeps none has none.
    async fn rate_limits(&self) -> Result<Vec<RateLimitRow>, StoreError> {
        Ok(Vec::new())
    }
    /// Handoffs matching `q`: open ones first, then newest first.
    async fn handoffs(
        &self,
        _q: &HandoffQuery,
        _limit: u32,
    ) -> Result<Vec<HandoffRow>, StoreError> {
        Ok(Vec::new())
    }
}

/// Opens the store named by `url`: `sqlite://PATH`, `postgres://USER@HOST:PORT/DB` (also
/// `postgresql://`), or `memory://` (nothing survives the process; for tests and demos).
pub async fn open(url: &str) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(std::sync::Arc::new(sqlite::SqliteStore::open(url).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(std::sync::Arc::new(postgres::PgStore::open(url).await?))
    } else if url.starts_with("memory:") {
        Ok(std::sync::Arc::new(memory::MemoryStore::new()))
    } else {
        Err(StoreError::Unsupported(url.to_owned()))
    }
}
