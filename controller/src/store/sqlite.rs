//! The embedded SQLite backend: one file, WAL, migrations compiled into the binary.
//!
//! Reads go through a small pool; every write (the recorder's batches, the epoch bumps) goes
//! through one dedicated connection that is closed and reopened after any failure. A failed
//! COMMIT (SQLITE_FULL on a full disk) leaves SQLite's transaction open on its connection; a
//! pooled connection in that state went on "committing" later batches as savepoints inside it,
//! held the write lock ("database is locked" for every other connection, for good) and lost
//! everything when it closed. A connection that failed is never used again.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Connection, Row};
use tokio::sync::{mpsc, oneshot};

use super::{
    AlarmRow, CheckpointQuery, CheckpointRow, CommandRow, HandoffQuery, HandoffRow, History,
    IncidentRow, NodeRecord, RateLimitRow, SessionRef, Store, StoreError, TransitionRow, Write,
};

/// How long SQLite waits for a lock held by another connection or process.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a read waits for a pooled connection before the call fails (UNAVAILABLE).
const READ_ACQUIRE: Duration = Duration::from_secs(3);
/// How long an attach waits for its epoch bump before it fails (UNAVAILABLE; the node agent
/// retries).
const ATTACH_WAIT: Duration = Duration::from_secs(5);
/// How long one write transaction may take before its connection is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(8);

/// SQLite through sqlx.
pub struct SqliteStore {
    /// Reads.
    pool: SqlitePool,
    /// Every write, one at a time.
    writer: Arc<Writer>,
    /// Attaches waiting for their epoch bump: a writer task commits them in batches, so that a
    /// fleet reconnecting at once costs one transaction per batch, not one per node.
    attaches: mpsc::Sender<Attach>,
}

type Attach = (NodeRecord, u64, oneshot::Sender<Result<u64, StoreError>>);

const EPOCH_BUMP: &str =
    "INSERT INTO nodes (node_id, epoch, hostname, agent_version, boot_id, last_attach_ms)
     VALUES (?1, ?2 + 1, ?3, ?4, ?5, ?6)
     ON CONFLICT (node_id) DO UPDATE SET
         epoch = MAX(nodes.epoch, ?2) + 1,
         hostname = excluded.hostname,
         agent_version = excluded.agent_version,
         boot_id = excluded.boot_id,
         last_attach_ms = excluded.last_attach_ms
     RETURNING epoch";

/// The write connection: opened on first use, dropped (closed, which rolls back whatever it had
/// open) after any failure, so that the next write starts on a fresh one.
struct Writer {
    options: SqliteConnectOptions,
    conn: tokio::sync::Mutex<Option<SqliteConnection>>,
}

impl Writer {
    /// Runs `work` in a transaction on the write connection, within [`WRITE_TIMEOUT`].
    async fn transaction<T>(
        &self,
        op: &'static str,
        work: impl AsyncFnOnce(&mut SqliteConnection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut slot = self.conn.lock().await;
        let attempt = async {
            let conn = match &mut *slot {
                Some(c) => c,
                None => slot.insert(
                    SqliteConnection::connect_with(&self.options)
                        .await
                        .map_err(db("connect"))?,
                ),
            };
            work(conn).await
        };
        match tokio::time::timeout(WRITE_TIMEOUT, attempt).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                *slot = None;
                Err(e)
            }
            Err(_) => {
                *slot = None;
                Err(StoreError::Timeout {
                    op,
                    after: WRITE_TIMEOUT,
                })
            }
        }
    }
}

/// Commits queued epoch bumps, a batch per transaction; ends when the store is dropped.
async fn bump_epochs(writer: Arc<Writer>, mut rx: mpsc::Receiver<Attach>) {
    let mut batch = Vec::with_capacity(256);
    while rx.recv_many(&mut batch, 256).await > 0 {
        // Attaches that gave up waiting are not bumped.
        batch.retain(|(_, _, reply)| !reply.is_closed());
        let nodes: Vec<(NodeRecord, u64)> = batch.iter().map(|(n, a, _)| (n.clone(), *a)).collect();
        let result = writer
            .transaction("attach node", async |conn| {
                bump_batch(conn, &nodes).await.map_err(db("attach node"))
            })
            .await;
        // One failure answers every attach of the batch, so its cause is shared, not copied.
        let result = result.map_err(|e| match e {
            StoreError::Db { source, .. } => Arc::new(source),
            other => Arc::new(sqlx::Error::Protocol(other.to_string())),
        });
        for (i, (_, _, reply)) in batch.drain(..).enumerate() {
            let _ = reply.send(match &result {
                Ok(epochs) => Ok(epochs[i]),
                Err(e) => Err(StoreError::Batch {
                    op: "attach node",
                    source: e.clone(),
                }),
            });
        }
    }
}

async fn bump_batch(
    conn: &mut SqliteConnection,
    batch: &[(NodeRecord, u64)],
) -> Result<Vec<u64>, sqlx::Error> {
    let mut tx = conn.begin().await?;
    let mut epochs = Vec::with_capacity(batch.len());
    for (n, at_least) in batch {
        let row = sqlx::query(EPOCH_BUMP)
            .bind(&n.node_id)
            .bind(*at_least as i64)
            .bind(&n.hostname)
            .bind(&n.agent_version)
            .bind(&n.boot_id)
            .bind(n.last_attach_ms)
            .fetch_one(&mut *tx)
            .await?;
        epochs.push(row.get::<i64, _>("epoch") as u64);
    }
    tx.commit().await?;
    Ok(epochs)
}

fn db(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Db { op, source }
}

impl SqliteStore {
    /// Opens (creating when missing) the database at `url` (`sqlite://PATH`) and migrates it.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(db("open"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(READ_ACQUIRE)
            .connect_with(options.clone())
            .await
            .map_err(db("open"))?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        let writer = Arc::new(Writer {
            options,
            conn: tokio::sync::Mutex::new(None),
        });
        let (attaches, rx) = mpsc::channel(4096);
        // Ends by itself when the store (the only sender) is dropped.
        drop(tokio::spawn(bump_epochs(writer.clone(), rx)));
        Ok(Self {
            pool,
            writer,
            attaches,
        })
    }
}

fn transition_row(r: &sqlx::sqlite::SqliteRow) -> TransitionRow {
    TransitionRow {
        session: SessionRef {
            node_id: r.get("node_id"),
            tmux_socket: r.get("tmux_socket"),
            session_name: r.get("session_name"),
        },
        at_ms: r.get("at_ms"),
        from: r.get("from_state"),
        to: r.get("to_state"),
        reason: r.get("reason"),
    }
}

fn command_row(r: &sqlx::sqlite::SqliteRow) -> CommandRow {
    CommandRow {
        command_id: r.get("command_id"),
        session: SessionRef {
            node_id: r.get("node_id"),
            tmux_socket: r.get("tmux_socket"),
            session_name: r.get("session_name"),
        },
        epoch: r.get::<i64, _>("epoch") as u64,
        action: r.get("action"),
        origin: r.get("origin"),
        reason: r.get("reason"),
        issued_at_ms: r.get("issued_at_ms"),
        status: r.get("status"),
        result_message: r.get("result_message"),
        finished_at_ms: r.get("finished_at_ms"),
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn attach_node(&self, n: &NodeRecord, at_least: u64) -> Result<u64, StoreError> {
        let (reply, answer) = oneshot::channel();
        let closed = || StoreError::Db {
            op: "attach node",
            source: sqlx::Error::PoolClosed,
        };
        let timeout = || StoreError::Timeout {
            op: "attach node",
            after: ATTACH_WAIT,
        };
        // The Welcome waits for a durable epoch, but only so long: past it the attach fails with
        // UNAVAILABLE and the node agent retries, while its old stream (if any) stays served.
        let send = self.attaches.send((n.clone(), at_least, reply));
        let waited = tokio::time::timeout(ATTACH_WAIT, async {
            send.await.map_err(|_| closed())?;
            answer.await.map_err(|_| closed())?
        })
        .await;
        waited.unwrap_or_else(|_| Err(timeout()))
    }

    async fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM nodes ORDER BY node_id")
            .fetch_all(&self.pool)
            .await
            .map_err(db("list nodes"))?;
        Ok(rows
            .iter()
            .map(|r| NodeRecord {
                node_id: r.get("node_id"),
                epoch: r.get::<i64, _>("epoch") as u64,
                hostname: r.get("hostname"),
                agent_version: r.get("agent_version"),
                boot_id: r.get("boot_id"),
                last_attach_ms: r.get("last_attach_ms"),
            })
            .collect())
    }

    async fn write(&self, batch: &[Write]) -> Result<(), StoreError> {
        self.writer
            .transaction("write batch", async |conn| {
                let mut tx = conn.begin().await.map_err(db("begin"))?;
                for w in batch {
                    apply(&mut tx, w).await?;
                }
                tx.commit().await.map_err(db("commit"))
            })
            .await
    }

    async fn history(&self, s: &SessionRef, limit: u32) -> Result<History, StoreError> {
        let transitions = sqlx::query(
            "SELECT * FROM transitions WHERE node_id = ? AND tmux_socket = ? AND session_name = ?
             ORDER BY id DESC LIMIT ?",
        )
        .bind(&s.node_id)
        .bind(&s.tmux_socket)
        .bind(&s.session_name)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db("read transitions"))?;
        let commands = sqlx::query(
            "SELECT * FROM commands WHERE node_id = ? AND tmux_socket = ? AND session_name = ?
             ORDER BY issued_at_ms DESC, rowid DESC LIMIT ?",
        )
        .bind(&s.node_id)
        .bind(&s.tmux_socket)
        .bind(&s.session_name)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db("read commands"))?;
        Ok(History {
            transitions: transitions.iter().map(transition_row).collect(),
            commands: commands.iter().map(command_row).collect(),
        })
    }

    async fn last_states(&self) -> Result<Vec<(SessionRef, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT t.* FROM transitions t
             JOIN (SELECT MAX(id) AS id FROM transitions GROUP BY node_id, tmux_socket, session_name) m
             ON t.id = m.id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("read last states"))?;
        Ok(rows
            .iter()
            .map(|r| {
                let t = transition_row(r);
                (t.session, t.to)
            })
            .collect())
    }

    async fn durables(&self) -> Result<Vec<(SessionRef, String)>, StoreError> {
        self.read_durables().await
    }

    async fn last_transitions(&self) -> Result<Vec<TransitionRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT t.* FROM transitions t
             JOIN (SELECT MAX(id) AS id FROM transitions GROUP BY node_id, tmux_socket, session_name) m
             ON t.id = m.id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("read last transitions"))?;
        Ok(rows.iter().map(transition_row).collect())
    }

    async fn sessions_named(
        &self,
        node_id: &str,
        name: &str,
    ) -> Result<Vec<TransitionRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT t.* FROM transitions t
             JOIN (SELECT MAX(id) AS id FROM transitions WHERE node_id = ?1 AND session_name = ?2
                   GROUP BY tmux_socket) m
             ON t.id = m.id",
        )
        .bind(node_id)
        .bind(name)
        .fetch_all(&self.pool)
        .await
        .map_err(db("read sessions by name"))?;
        Ok(rows.iter().map(transition_row).collect())
    }

    async fn pending_commands(&self) -> Result<Vec<CommandRow>, StoreError> {
        let rows =
            sqlx::query("SELECT * FROM commands WHERE status = ?1 ORDER BY issued_at_ms, rowid")
                .bind(super::PENDING)
                .fetch_all(&self.pool)
                .await
                .map_err(db("read pending commands"))?;
        Ok(rows.iter().map(command_row).collect())
    }

    async fn incidents(
        &self,
        include_closed: bool,
        limit: u32,
    ) -> Result<Vec<IncidentRow>, StoreError> {
        self.read_incidents(include_closed, limit).await
    }

    async fn alarms(&self, include_closed: bool, limit: u32) -> Result<Vec<AlarmRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM alarms WHERE state = ?1 OR ?2
             ORDER BY state != ?1, CASE WHEN state = ?1 THEN due_ms ELSE -closed_ms END, id
             LIMIT ?3",
        )
        .bind(super::ALARM_PENDING)
        .bind(include_closed)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db("read alarms"))?;
        Ok(rows.iter().map(alarm_row).collect())
    }

    async fn alarm(&self, id: &str) -> Result<Option<AlarmRow>, StoreError> {
        let row = sqlx::query("SELECT * FROM alarms WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("read alarm"))?;
        Ok(row.as_ref().map(alarm_row))
    }

    async fn checkpoints(
        &self,
        q: &CheckpointQuery,
        limit: u32,
    ) -> Result<Vec<CheckpointRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM checkpoints
             WHERE (?1 = '' OR node_id = ?1) AND (?2 = '' OR session_name = ?2)
               AND (?3 = '' OR tmux_socket = ?3)
             ORDER BY taken_ms DESC, rowid DESC LIMIT ?4",
        )
        .bind(&q.node_id)
        .bind(&q.session_name)
        .bind(&q.tmux_socket)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db("read checkpoints"))?;
        Ok(rows.iter().map(checkpoint_row).collect())
    }

    async fn checkpoint(&self, id: &str) -> Result<Option<CheckpointRow>, StoreError> {
        let row = sqlx::query("SELECT * FROM checkpoints WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("read checkpoint"))?;
        Ok(row.as_ref().map(checkpoint_row))
    }

    async fn handoffs(&self, q: &HandoffQuery, limit: u32) -> Result<Vec<HandoffRow>, StoreError> {
        let (node, socket, name) = q.session.as_ref().map_or(("", "", ""), |s| {
            (
                s.node_id.as_str(),
                s.tmux_socket.as_str(),
                s.session_name.as_str(),
            )
        });
        let rows = sqlx::query(
            "SELECT * FROM handoffs
             WHERE (?1 OR ended_ms = 0) AND (?2 = '' OR node_id = ?2)
               AND (NOT ?3 OR (node_id = ?4 AND tmux_socket = ?5 AND session_name = ?6))
             ORDER BY ended_ms = 0 DESC, started_ms DESC, id DESC LIMIT ?7",
        )
        .bind(q.include_ended)
        .bind(&q.node_id)
        .bind(q.session.is_some())
        .bind(node)
        .bind(socket)
        .bind(name)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db("read handoffs"))?;
        Ok(rows.iter().map(handoff_row).collect())
    }

    async fn rate_limits(&self) -> Result<Vec<RateLimitRow>, StoreError> {
        let rows = sqlx::query("SELECT * FROM rate_limits ORDER BY scope, at_ms")
            .fetch_all(&self.pool)
            .await
            .map_err(db("read rate limits"))?;
        Ok(rows
            .iter()
            .map(|r| RateLimitRow {
                session: SessionRef {
                    node_id: r.get("node_id"),
                    tmux_socket: r.get("tmux_socket"),
                    session_name: r.get("session_name"),
                },
                scope: r.get("scope"),
                at_ms: r.get("at_ms"),
                until_ms: r.get("until_ms"),
            })
            .collect())
    }
}

fn alarm_row(r: &sqlx::sqlite::SqliteRow) -> AlarmRow {
    AlarmRow {
        id: r.get("id"),
        session: SessionRef {
            node_id: r.get("node_id"),
            tmux_socket: r.get("tmux_socket"),
            session_name: r.get("session_name"),
        },
        note: r.get("note"),
        origin: r.get("origin"),
        created_ms: r.get("created_ms"),
        due_ms: r.get("due_ms"),
        state: r.get("state"),
        closed_ms: r.get("closed_ms"),
        command_id: r.get("command_id"),
        message: r.get("message"),
    }
}

fn checkpoint_row(r: &sqlx::sqlite::SqliteRow) -> CheckpointRow {
    CheckpointRow {
        id: r.get("id"),
        session: SessionRef {
            node_id: r.get("node_id"),
            tmux_socket: r.get("tmux_socket"),
            session_name: r.get("session_name"),
        },
        taken_ms: r.get("taken_ms"),
        trigger: r.get("trigger"),
        command_id: r.get("command_id"),
        reason: r.get("reason"),
        data: r.get("data"),
    }
}

fn handoff_row(r: &sqlx::sqlite::SqliteRow) -> HandoffRow {
    HandoffRow {
        id: r.get("id"),
        session: SessionRef {
            node_id: r.get("node_id"),
            tmux_socket: r.get("tmux_socket"),
            session_name: r.get("session_name"),
        },
        reason: r.get("reason"),
        detail: r.get("detail"),
        checkpoint_id: r.get("checkpoint_id"),
        restart_command_id: r.get("restart_command_id"),
        from_pid: r.get::<i64, _>("from_pid") as u32,
        from_start: r.get::<i64, _>("from_start") as u64,
        to_pid: r.get::<i64, _>("to_pid") as u32,
        to_start: r.get::<i64, _>("to_start") as u64,
        state: r.get("state"),
        started_ms: r.get("started_ms"),
        resumed_ms: r.get("resumed_ms"),
        ended_ms: r.get("ended_ms"),
        restarts: r.get::<i64, _>("restarts") as u32,
        resume_attempts: r.get::<i64, _>("resume_attempts") as u32,
        resume_command_id: r.get("resume_command_id"),
        message: r.get("message"),
    }
}

impl SqliteStore {
    /// Every session's durable policy state.
    async fn read_durables(&self) -> Result<Vec<(SessionRef, String)>, StoreError> {
        let rows = sqlx::query("SELECT * FROM session_durable")
            .fetch_all(&self.pool)
            .await
            .map_err(db("read session state"))?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    SessionRef {
                        node_id: r.get("node_id"),
                        tmux_socket: r.get("tmux_socket"),
                        session_name: r.get("session_name"),
                    },
                    r.get("data"),
                )
            })
            .collect())
    }

    async fn read_incidents(
        &self,
        include_closed: bool,
        limit: u32,
    ) -> Result<Vec<IncidentRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM incidents WHERE closed_ms = 0 OR ?1
             ORDER BY closed_ms = 0 DESC, opened_ms DESC LIMIT ?2",
        )
        .bind(include_closed)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db("read incidents"))?;
        Ok(rows
            .iter()
            .map(|r| IncidentRow {
                id: r.get("id"),
                kind: r.get("kind"),
                scope: r.get("scope"),
                opened_ms: r.get("opened_ms"),
                closed_ms: r.get("closed_ms"),
                acked_ms: r.get("acked_ms"),
                acked_by: r.get("acked_by"),
                summary: r.get("summary"),
                sessions: r.get::<i64, _>("sessions") as u32,
                until_ms: r.get("until_ms"),
            })
            .collect())
    }
}

// === impl writes: one function per `Write` kind, all inside the batch's transaction ===

/// Applies one write inside the batch's transaction.
async fn apply(tx: &mut SqliteConnection, w: &Write) -> Result<(), StoreError> {
    match w {
        Write::Transition(t) => insert_transition(tx, t).await,
        Write::CommandIssued(c) => insert_command(tx, c).await,
        Write::CommandFinished {
            command_id,
            status,
            message,
            at_ms,
        } => finish_command(tx, command_id, status, message, *at_ms).await,
        Write::Durable {
            session,
            data,
            at_ms,
        } => upsert_durable(tx, session, data, *at_ms).await,
        Write::Incident(i) => upsert_incident(tx, i).await,
        Write::CommandLate {
            command_id,
            node_id,
            status,
            message,
            at_ms,
        } => late_result(tx, command_id, node_id, status, message, *at_ms).await,
        Write::AlarmScheduled(a) => insert_alarm(tx, a).await,
        Write::AlarmClosed {
            id,
            state,
            at_ms,
            command_id,
            message,
        } => close_alarm(tx, id, state, *at_ms, command_id, message).await,
        Write::Checkpoint(c) => insert_checkpoint(tx, c).await,
        Write::Handoff(h) => upsert_handoff(tx, h).await,
        Write::RateLimit(r) => upsert_rate_limit(tx, r).await,
        Write::RateLimitOver { session } => delete_rate_limit(tx, session).await,
    }
}

/// Records a session's rate-limit episode (replicas; see [`Write::RateLimit`]).
async fn upsert_rate_limit(tx: &mut SqliteConnection, r: &RateLimitRow) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT OR REPLACE INTO rate_limits (node_id, tmux_socket, session_name, scope, at_ms, until_ms)
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(&r.session.node_id)
    .bind(&r.session.tmux_socket)
    .bind(&r.session.session_name)
    .bind(&r.scope)
    .bind(r.at_ms)
    .bind(r.until_ms)
    .execute(tx)
    .await
    .map_err(db("record a rate limit"))?;
    Ok(())
}

/// Forgets a session's rate-limit episode.
async fn delete_rate_limit(tx: &mut SqliteConnection, s: &SessionRef) -> Result<(), StoreError> {
    sqlx::query(
        "DELETE FROM rate_limits WHERE node_id = ? AND tmux_socket = ? AND session_name = ?",
    )
    .bind(&s.node_id)
    .bind(&s.tmux_socket)
    .bind(&s.session_name)
    .execute(tx)
    .await
    .map_err(db("forget a rate limit"))?;
    Ok(())
}

/// Stores a new alarm; an id already stored is left as it is.
async fn insert_alarm(tx: &mut SqliteConnection, a: &AlarmRow) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT OR IGNORE INTO alarms (id, node_id, tmux_socket, session_name, note, origin, created_ms, due_ms, state, closed_ms, command_id, message)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&a.id)
    .bind(&a.session.node_id)
    .bind(&a.session.tmux_socket)
    .bind(&a.session.session_name)
    .bind(&a.note)
    .bind(&a.origin)
    .bind(a.created_ms)
    .bind(a.due_ms)
    .bind(&a.state)
    .bind(a.closed_ms)
    .bind(&a.command_id)
    .bind(&a.message)
    .execute(tx)
    .await
    .map_err(db("record alarm"))?;
    Ok(())
}

/// Closes a pending alarm (delivered or cancelled); a closed one stays as it is.
async fn close_alarm(
    tx: &mut SqliteConnection,
    id: &str,
    state: &str,
    at_ms: i64,
    command_id: &str,
    message: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE alarms SET state = ?, closed_ms = ?, command_id = ?, message = ?
         WHERE id = ? AND state = ?",
    )
    .bind(state)
    .bind(at_ms)
    .bind(command_id)
    .bind(message)
    .bind(id)
    .bind(super::ALARM_PENDING)
    .execute(tx)
    .await
    .map_err(db("close alarm"))?;
    Ok(())
}

/// Records a checkpoint; an id already recorded is left as it is.
async fn insert_checkpoint(tx: &mut SqliteConnection, c: &CheckpointRow) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT OR IGNORE INTO checkpoints (id, node_id, tmux_socket, session_name, taken_ms, trigger, command_id, reason, data)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&c.id)
    .bind(&c.session.node_id)
    .bind(&c.session.tmux_socket)
    .bind(&c.session.session_name)
    .bind(c.taken_ms)
    .bind(&c.trigger)
    .bind(&c.command_id)
    .bind(&c.reason)
    .bind(&c.data)
    .execute(tx)
    .await
    .map_err(db("record checkpoint"))?;
    Ok(())
}

/// Inserts or replaces a handoff.
async fn upsert_handoff(tx: &mut SqliteConnection, h: &HandoffRow) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT OR REPLACE INTO handoffs (id, node_id, tmux_socket, session_name, reason, detail, checkpoint_id, restart_command_id, from_pid, from_start, to_pid, to_start, state, started_ms, resumed_ms, ended_ms, restarts, resume_attempts, resume_command_id, message)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&h.id)
    .bind(&h.session.node_id)
    .bind(&h.session.tmux_socket)
    .bind(&h.session.session_name)
    .bind(&h.reason)
    .bind(&h.detail)
    .bind(&h.checkpoint_id)
    .bind(&h.restart_command_id)
    .bind(i64::from(h.from_pid))
    .bind(h.from_start as i64)
    .bind(i64::from(h.to_pid))
    .bind(h.to_start as i64)
    .bind(&h.state)
    .bind(h.started_ms)
    .bind(h.resumed_ms)
    .bind(h.ended_ms)
    .bind(i64::from(h.restarts))
    .bind(i64::from(h.resume_attempts))
    .bind(&h.resume_command_id)
    .bind(&h.message)
    .execute(tx)
    .await
    .map_err(db("record handoff"))?;
    Ok(())
}

/// Records a late result over the controller's closing outcome (see [`Write::CommandLate`]).
async fn late_result(
    tx: &mut SqliteConnection,
    command_id: &str,
    node_id: &str,
    status: &str,
    message: &str,
    at_ms: i64,
) -> Result<(), StoreError> {
    let row = sqlx::query("SELECT status FROM commands WHERE command_id = ? AND node_id = ?")
        .bind(command_id)
        .bind(node_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db("read command"))?;
    let Some(row) = row else {
        return Ok(());
    };
    let closed_as: String = row.get("status");
    if closed_as != super::PENDING && !super::CLOSED_BY_CONTROLLER.contains(&closed_as.as_str()) {
        return Ok(());
    }
    finish_command(
        tx,
        command_id,
        status,
        &super::late_message(&closed_as, message),
        at_ms,
    )
    .await
}

async fn insert_transition(tx: &mut SqliteConnection, t: &TransitionRow) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO transitions (node_id, tmux_socket, session_name, at_ms, from_state, to_state, reason)
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&t.session.node_id)
    .bind(&t.session.tmux_socket)
    .bind(&t.session.session_name)
    .bind(t.at_ms)
    .bind(&t.from)
    .bind(&t.to)
    .bind(&t.reason)
    .execute(tx)
    .await
    .map_err(db("record transition"))?;
    Ok(())
}

/// Records an issued command; a command id already recorded is left as it is.
async fn insert_command(tx: &mut SqliteConnection, c: &CommandRow) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT OR IGNORE INTO commands (command_id, node_id, tmux_socket, session_name, epoch, action, origin, reason, issued_at_ms, status, result_message, finished_at_ms)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&c.command_id)
    .bind(&c.session.node_id)
    .bind(&c.session.tmux_socket)
    .bind(&c.session.session_name)
    .bind(c.epoch as i64)
    .bind(&c.action)
    .bind(&c.origin)
    .bind(&c.reason)
    .bind(c.issued_at_ms)
    .bind(&c.status)
    .bind(&c.result_message)
    .bind(c.finished_at_ms)
    .execute(tx)
    .await
    .map_err(db("record command"))?;
    Ok(())
}

/// Records a command's result; a command id never recorded changes nothing.
async fn finish_command(
    tx: &mut SqliteConnection,
    command_id: &str,
    status: &str,
    message: &str,
    at_ms: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE commands SET status = ?, result_message = ?, finished_at_ms = ? WHERE command_id = ?",
    )
    .bind(status)
    .bind(message)
    .bind(at_ms)
    .bind(command_id)
    .execute(tx)
    .await
    .map_err(db("record command result"))?;
    Ok(())
}

/// Replaces a session's durable policy state.
async fn upsert_durable(
    tx: &mut SqliteConnection,
    session: &SessionRef,
    data: &str,
    at_ms: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO session_durable (node_id, tmux_socket, session_name, data, updated_ms)
         VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (node_id, tmux_socket, session_name)
         DO UPDATE SET data = excluded.data, updated_ms = excluded.updated_ms",
    )
    .bind(&session.node_id)
    .bind(&session.tmux_socket)
    .bind(&session.session_name)
    .bind(data)
    .bind(at_ms)
    .execute(tx)
    .await
    .map_err(db("record session state"))?;
    Ok(())
}

/// Inserts or replaces an incident.
async fn upsert_incident(tx: &mut SqliteConnection, i: &IncidentRow) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT OR REPLACE INTO incidents (id, kind, scope, opened_ms, closed_ms, acked_ms, acked_by, summary, sessions, until_ms)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&i.id)
    .bind(&i.kind)
    .bind(&i.scope)
    .bind(i.opened_ms)
    .bind(i.closed_ms)
    .bind(i.acked_ms)
    .bind(&i.acked_by)
    .bind(&i.summary)
    .bind(i64::from(i.sessions))
    .bind(i.until_ms)
    .execute(tx)
    .await
    .map_err(db("record incident"))?;
    Ok(())
}

/// SQLite-only behaviour; the contract every backend keeps is tested in `store/tests.rs`.
#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> NodeRecord {
        NodeRecord {
            node_id: id.into(),
            epoch: 0,
            hostname: "h".into(),
            agent_version: "v".into(),
            boot_id: "b".into(),
            last_attach_ms: 1,
        }
    }

    /// The epoch bump waits a bounded time for a database locked elsewhere, fails with
    /// UNAVAILABLE, and works again once the lock is gone.
    #[tokio::test]
    async fn an_attach_fails_cleanly_while_the_database_is_locked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("a.db").display());
        let s = SqliteStore::open(&url).await.expect("open");
        assert_eq!(s.attach_node(&node("n1"), 0).await.expect("attach"), 1);
        let mut other = SqliteConnection::connect(&url).await.expect("connect");
        sqlx::raw_sql("BEGIN EXCLUSIVE")
            .execute(&mut other)
            .await
            .expect("lock");
        let started = std::time::Instant::now();
        let e = s.attach_node(&node("n1"), 0).await.expect_err("locked");
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e}");
        assert!(started.elapsed() < ATTACH_WAIT + Duration::from_secs(2));
        // Reads still answer (WAL).
        assert_eq!(s.nodes().await.expect("nodes").len(), 1);
        sqlx::raw_sql("ROLLBACK")
            .execute(&mut other)
            .await
            .expect("unlock");
        let epoch = s.attach_node(&node("n1"), 0).await.expect("attach");
        assert!(epoch >= 2, "{epoch}");
    }

    #[tokio::test]
    async fn epochs_grow_and_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("a.db").display());
        let s = SqliteStore::open(&url).await.expect("open");
        assert_eq!(s.attach_node(&node("n1"), 0).await.expect("attach"), 1);
        assert_eq!(s.attach_node(&node("n1"), 0).await.expect("attach"), 2);
        // The node agent remembers a higher epoch (the database was replaced): go above it.
        assert_eq!(s.attach_node(&node("n1"), 10).await.expect("attach"), 11);
        drop(s);
        let s = SqliteStore::open(&url).await.expect("reopen");
        assert_eq!(s.attach_node(&node("n1"), 0).await.expect("attach"), 12);
        assert_eq!(s.nodes().await.expect("nodes").len(), 1);
    }
}
