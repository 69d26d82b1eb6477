//! The PostgreSQL backend: one database that any number of controller replicas share, migrations
//! compiled into the binary (`migrations/postgres`, mirroring the SQLite ones).
//!
//! Reads and epoch bumps go through a pool; the recorder's batches go through one dedicated
//! connection that is dropped after any failure or timeout, as on SQLite: a connection whose
//! transaction was cut off mid-way is never handed to the next batch.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, Row};

use super::{
    AlarmRow, CheckpointQuery, CheckpointRow, CommandRow, HandoffQuery, HandoffRow, History,
    IncidentRow, NodeRecord, RateLimitRow, SessionRef, Store, StoreError, TransitionRow, Write,
};

/// How long a read waits for a pooled connection (or a new one) before the call fails
/// (UNAVAILABLE).
const READ_ACQUIRE: Duration = Duration::from_secs(3);
/// How long an attach waits for its epoch bump before it fails (UNAVAILABLE; the node agent
/// retries).
const ATTACH_WAIT: Duration = Duration::from_secs(5);
/// How long one write transaction may take before its connection is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(8);
/// Pooled connections per controller: replicas multiply it, PostgreSQL's default limit is 100.
const POOL_SIZE: u32 = 8;

/// PostgreSQL through sqlx.
pub struct PgStore {
    /// Reads and epoch bumps.
    pool: PgPool,
    /// The recorder's batches, one at a time.
    writer: Writer,
}

const EPOCH_BUMP: &str =
    "INSERT INTO nodes (node_id, epoch, hostname, agent_version, boot_id, last_attach_ms)
     VALUES ($1, $2 + 1, $3, $4, $5, $6)
     ON CONFLICT (node_id) DO UPDATE SET
         epoch = GREATEST(nodes.epoch, $2) + 1,
         hostname = excluded.hostname,
         agent_version = excluded.agent_version,
         boot_id = excluded.boot_id,
         last_attach_ms = excluded.last_attach_ms
     RETURNING epoch";

/// The write connection: opened on first use, dropped after any failure.
struct Writer {
    options: PgConnectOptions,
    conn: tokio::sync::Mutex<Option<PgConnection>>,
}

impl Writer {
    /// Runs `work` on the write connection, within [`WRITE_TIMEOUT`].
    async fn run<T>(
        &self,
        op: &'static str,
        work: impl AsyncFnOnce(&mut PgConnection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut slot = self.conn.lock().await;
        let attempt = async {
            let conn = match &mut *slot {
                Some(c) => c,
                None => slot.insert(
                    PgConnection::connect_with(&self.options)
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

fn db(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Db { op, source }
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://USER@HOST:PORT/DB`) and migrates it.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(db("open"))?
            .application_name("argus-controller");
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(READ_ACQUIRE)
            .connect_with(options.clone())
            .await
            .map_err(db("open"))?;
        // Replicas starting together: sqlx takes an advisory lock around the migrations.
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(Self {
            pool,
            writer: Writer {
                options,
                conn: tokio::sync::Mutex::new(None),
            },
        })
    }

    /// The pool, for the replica layer's own tables (ownership, leases).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

fn session(r: &PgRow) -> SessionRef {
    SessionRef {
        node_id: r.get("node_id"),
        tmux_socket: r.get("tmux_socket"),
        session_name: r.get("session_name"),
    }
}

fn transition_row(r: &PgRow) -> TransitionRow {
    TransitionRow {
        session: session(r),
        at_ms: r.get("at_ms"),
        from: r.get("from_state"),
        to: r.get("to_state"),
        reason: r.get("reason"),
    }
}

fn command_row(r: &PgRow) -> CommandRow {
    CommandRow {
        command_id: r.get("command_id"),
        session: session(r),
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

fn node_row(r: &PgRow) -> NodeRecord {
    NodeRecord {
        node_id: r.get("node_id"),
        epoch: r.get::<i64, _>("epoch") as u64,
        hostname: r.get("hostname"),
        agent_version: r.get("agent_version"),
        boot_id: r.get("boot_id"),
        last_attach_ms: r.get("last_attach_ms"),
    }
}

/// An `incidents` row (the columns of [`IncidentRow`], by name).
pub(crate) fn incident_row(r: &PgRow) -> IncidentRow {
    IncidentRow {
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
    }
}

fn alarm_row(r: &PgRow) -> AlarmRow {
    AlarmRow {
        id: r.get("id"),
        session: session(r),
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

fn checkpoint_row(r: &PgRow) -> CheckpointRow {
    CheckpointRow {
        id: r.get("id"),
        session: session(r),
        taken_ms: r.get("taken_ms"),
        trigger: r.get("trigger"),
        command_id: r.get("command_id"),
        reason: r.get("reason"),
        data: r.get("data"),
    }
}

fn handoff_row(r: &PgRow) -> HandoffRow {
    HandoffRow {
        id: r.get("id"),
        session: session(r),
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

/// The last transition of every session (of one node and name when both are given).
const LAST_TRANSITIONS: &str = "SELECT DISTINCT ON (node_id, tmux_socket, session_name) *
     FROM transitions
     WHERE ($1 = '' OR node_id = $1) AND ($2 = '' OR session_name = $2)
     ORDER BY node_id, tmux_socket, session_name, id DESC";

#[async_trait]
impl Store for PgStore {
    async fn attach_node(&self, n: &NodeRecord, at_least: u64) -> Result<u64, StoreError> {
        // The Welcome waits for a durable epoch, but only so long: past it the attach fails with
        // UNAVAILABLE and the node agent retries.
        let bump = sqlx::query(EPOCH_BUMP)
            .bind(&n.node_id)
            .bind(at_least as i64)
            .bind(&n.hostname)
            .bind(&n.agent_version)
            .bind(&n.boot_id)
            .bind(n.last_attach_ms)
            .fetch_one(&self.pool);
        match tokio::time::timeout(ATTACH_WAIT, bump).await {
            Ok(row) => Ok(row.map_err(db("attach node"))?.get::<i64, _>("epoch") as u64),
            Err(_) => Err(StoreError::Timeout {
                op: "attach node",
                after: ATTACH_WAIT,
            }),
        }
    }

    async fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM nodes ORDER BY node_id")
            .fetch_all(&self.pool)
            .await
            .map_err(db("list nodes"))?;
        Ok(rows.iter().map(node_row).collect())
    }

    async fn write(&self, batch: &[Write]) -> Result<(), StoreError> {
        self.writer
            .run("write batch", async |conn| {
                let mut tx = conn.begin().await.map_err(db("begin"))?;
                apply_all(&mut tx, batch).await?;
                tx.commit().await.map_err(db("commit"))
            })
            .await
    }

    async fn history(&self, s: &SessionRef, limit: u32) -> Result<History, StoreError> {
        let transitions = sqlx::query(
            "SELECT * FROM transitions WHERE node_id = $1 AND tmux_socket = $2 AND session_name = $3
             ORDER BY id DESC LIMIT $4",
        )
        .bind(&s.node_id)
        .bind(&s.tmux_socket)
        .bind(&s.session_name)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db("read transitions"))?;
        let commands = sqlx::query(
            "SELECT * FROM commands WHERE node_id = $1 AND tmux_socket = $2 AND session_name = $3
             ORDER BY issued_at_ms DESC, seq DESC LIMIT $4",
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
        Ok(self
            .last_transitions()
            .await?
            .into_iter()
            .map(|t| (t.session, t.to))
            .collect())
    }

    async fn durables(&self) -> Result<Vec<(SessionRef, String)>, StoreError> {
        let rows = sqlx::query("SELECT * FROM session_durable")
            .fetch_all(&self.pool)
            .await
            .map_err(db("read session state"))?;
        Ok(rows.iter().map(|r| (session(r), r.get("data"))).collect())
    }

    async fn last_transitions(&self) -> Result<Vec<TransitionRow>, StoreError> {
        let rows = sqlx::query(LAST_TRANSITIONS)
            .bind("")
            .bind("")
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
        if node_id.is_empty() || name.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(LAST_TRANSITIONS)
            .bind(node_id)
            .bind(name)
            .fetch_all(&self.pool)
            .await
            .map_err(db("read sessions by name"))?;
        Ok(rows.iter().map(transition_row).collect())
    }

    async fn node_transitions(&self, node_id: &str) -> Result<Vec<TransitionRow>, StoreError> {
        if node_id.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(LAST_TRANSITIONS)
            .bind(node_id)
            .bind("")
            .fetch_all(&self.pool)
            .await
            .map_err(db("read a node's last transitions"))?;
        Ok(rows.iter().map(transition_row).collect())
    }

    async fn node_durables(&self, node_id: &str) -> Result<Vec<(SessionRef, String)>, StoreError> {
        let rows = sqlx::query("SELECT * FROM session_durable WHERE node_id = $1")
            .bind(node_id)
            .fetch_all(&self.pool)
            .await
            .map_err(db("read a node's session state"))?;
        Ok(rows.iter().map(|r| (session(r), r.get("data"))).collect())
    }

    async fn pending_commands(&self) -> Result<Vec<CommandRow>, StoreError> {
        let rows =
            sqlx::query("SELECT * FROM commands WHERE status = $1 ORDER BY issued_at_ms, seq")
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
        let rows = sqlx::query(
            "SELECT * FROM incidents WHERE closed_ms = 0 OR $1
             ORDER BY closed_ms = 0 DESC, opened_ms DESC LIMIT $2",
        )
        .bind(include_closed)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db("read incidents"))?;
        Ok(rows.iter().map(incident_row).collect())
    }

    async fn alarms(&self, include_closed: bool, limit: u32) -> Result<Vec<AlarmRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM alarms WHERE state = $1 OR $2
             ORDER BY state != $1, CASE WHEN state = $1 THEN due_ms ELSE -closed_ms END, id
             LIMIT $3",
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
        let row = sqlx::query("SELECT * FROM alarms WHERE id = $1")
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
             WHERE ($1 = '' OR node_id = $1) AND ($2 = '' OR session_name = $2)
               AND ($3 = '' OR tmux_socket = $3)
             ORDER BY taken_ms DESC, seq DESC LIMIT $4",
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
        let row = sqlx::query("SELECT * FROM checkpoints WHERE id = $1")
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
             WHERE ($1 OR ended_ms = 0) AND ($2 = '' OR node_id = $2)
               AND (NOT $3 OR (node_id = $4 AND tmux_socket = $5 AND session_name = $6))
             ORDER BY ended_ms = 0 DESC, started_ms DESC, id DESC LIMIT $7",
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

// === impl writes: one function per `Write` kind, all inside the batch's transaction ===

/// Applies a batch in order. Runs of transitions (most of what the recorder writes) go in one
/// statement each: a round trip per row would cap the rate at the connection's latency.
async fn apply_all(tx: &mut PgConnection, batch: &[Write]) -> Result<(), StoreError> {
    let mut i = 0;
    while i < batch.len() {
        let run = batch[i..]
            .iter()
            .take_while(|w| matches!(w, Write::Transition(_)))
            .count();
        if run > 1 {
            let rows: Vec<&TransitionRow> = batch[i..i + run]
                .iter()
                .filter_map(|w| match w {
                    Write::Transition(t) => Some(t),
                    _ => None,
                })
                .collect();
            insert_transitions(tx, &rows).await?;
            i += run;
        } else {
            apply(tx, &batch[i]).await?;
            i += 1;
        }
    }
    Ok(())
}

/// Applies one write inside the batch's transaction.
async fn apply(tx: &mut PgConnection, w: &Write) -> Result<(), StoreError> {
    match w {
        Write::Transition(t) => insert_transitions(tx, &[t]).await,
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
async fn upsert_rate_limit(tx: &mut PgConnection, r: &RateLimitRow) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO rate_limits (node_id, tmux_socket, session_name, scope, at_ms, until_ms)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (node_id, tmux_socket, session_name) DO UPDATE SET
             scope = excluded.scope, at_ms = excluded.at_ms, until_ms = excluded.until_ms",
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
async fn delete_rate_limit(tx: &mut PgConnection, s: &SessionRef) -> Result<(), StoreError> {
    sqlx::query(
        "DELETE FROM rate_limits WHERE node_id = $1 AND tmux_socket = $2 AND session_name = $3",
    )
    .bind(&s.node_id)
    .bind(&s.tmux_socket)
    .bind(&s.session_name)
    .execute(tx)
    .await
    .map_err(db("forget a rate limit"))?;
    Ok(())
}

/// Inserts transitions in their order (ids grow in the order of the arrays).
async fn insert_transitions(
    tx: &mut PgConnection,
    rows: &[&TransitionRow],
) -> Result<(), StoreError> {
    let col = |f: fn(&TransitionRow) -> &str| rows.iter().map(|t| f(t)).collect::<Vec<&str>>();
    sqlx::query(
        "INSERT INTO transitions (node_id, tmux_socket, session_name, at_ms, from_state, to_state, reason)
         SELECT a, b, c, d, e, f, g FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[], $7::text[])
         WITH ORDINALITY AS u(a, b, c, d, e, f, g, n) ORDER BY n",
    )
    .bind(col(|t| &t.session.node_id))
    .bind(col(|t| &t.session.tmux_socket))
    .bind(col(|t| &t.session.session_name))
    .bind(rows.iter().map(|t| t.at_ms).collect::<Vec<i64>>())
    .bind(col(|t| &t.from))
    .bind(col(|t| &t.to))
    .bind(col(|t| &t.reason))
    .execute(tx)
    .await
    .map_err(db("record transition"))?;
    Ok(())
}

/// Records an issued command; a command id already recorded is left as it is.
async fn insert_command(tx: &mut PgConnection, c: &CommandRow) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO commands (command_id, node_id, tmux_socket, session_name, epoch, action, origin, reason, issued_at_ms, status, result_message, finished_at_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
         ON CONFLICT (command_id) DO NOTHING",
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
    tx: &mut PgConnection,
    command_id: &str,
    status: &str,
    message: &str,
    at_ms: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE commands SET status = $1, result_message = $2, finished_at_ms = $3
         WHERE command_id = $4",
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

/// Records a late result over the controller's closing outcome (see [`Write::CommandLate`]).
async fn late_result(
    tx: &mut PgConnection,
    command_id: &str,
    node_id: &str,
    status: &str,
    message: &str,
    at_ms: i64,
) -> Result<(), StoreError> {
    let row = sqlx::query(
        "SELECT status FROM commands WHERE command_id = $1 AND node_id = $2 FOR UPDATE",
    )
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

/// Replaces a session's durable policy state.
async fn upsert_durable(
    tx: &mut PgConnection,
    session: &SessionRef,
    data: &str,
    at_ms: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO session_durable (node_id, tmux_socket, session_name, data, updated_ms)
         VALUES ($1, $2, $3, $4, $5)
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
async fn upsert_incident(tx: &mut PgConnection, i: &IncidentRow) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO incidents (id, kind, scope, opened_ms, closed_ms, acked_ms, acked_by, summary, sessions, until_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, scope = excluded.scope,
             opened_ms = excluded.opened_ms, closed_ms = excluded.closed_ms,
             acked_ms = excluded.acked_ms, acked_by = excluded.acked_by,
             summary = excluded.summary, sessions = excluded.sessions, until_ms = excluded.until_ms",
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

/// Stores a new alarm; an id already stored is left as it is.
async fn insert_alarm(tx: &mut PgConnection, a: &AlarmRow) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO alarms (id, node_id, tmux_socket, session_name, note, origin, created_ms, due_ms, state, closed_ms, command_id, message)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
         ON CONFLICT (id) DO NOTHING",
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
    tx: &mut PgConnection,
    id: &str,
    state: &str,
    at_ms: i64,
    command_id: &str,
    message: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE alarms SET state = $1, closed_ms = $2, command_id = $3, message = $4
         WHERE id = $5 AND state = $6",
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
async fn insert_checkpoint(tx: &mut PgConnection, c: &CheckpointRow) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO checkpoints (id, node_id, tmux_socket, session_name, taken_ms, trigger, command_id, reason, data)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (id) DO NOTHING",
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
async fn upsert_handoff(tx: &mut PgConnection, h: &HandoffRow) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO handoffs (id, node_id, tmux_socket, session_name, reason, detail, checkpoint_id, restart_command_id, from_pid, from_start, to_pid, to_start, state, started_ms, resumed_ms, ended_ms, restarts, resume_attempts, resume_command_id, message)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)
         ON CONFLICT (id) DO UPDATE SET node_id = excluded.node_id,
             tmux_socket = excluded.tmux_socket, session_name = excluded.session_name,
             reason = excluded.reason, detail = excluded.detail,
             checkpoint_id = excluded.checkpoint_id,
             restart_command_id = excluded.restart_command_id, from_pid = excluded.from_pid,
             from_start = excluded.from_start, to_pid = excluded.to_pid,
             to_start = excluded.to_start, state = excluded.state,
             started_ms = excluded.started_ms, resumed_ms = excluded.resumed_ms,
             ended_ms = excluded.ended_ms, restarts = excluded.restarts,
             resume_attempts = excluded.resume_attempts,
             resume_command_id = excluded.resume_command_id, message = excluded.message",
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

/// PostgreSQL-only behaviour; the contract every backend keeps is tested in `store/tests.rs`.
#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;

    use super::*;
    use crate::store::Recorder;
    use crate::store::test_postgres::{PgServer, skip_notice};

    fn transition(i: i64) -> Write {
        Write::Transition(TransitionRow {
            session: SessionRef {
                node_id: "n1".into(),
                tmux_socket: "/s".into(),
                session_name: "a".into(),
            },
            at_ms: i,
            from: "idle".into(),
            to: "working".into(),
            reason: "r".into(),
        })
    }

    /// The server stops (a dead database): reads fail with UNAVAILABLE, the recorder reports the
    /// failure and keeps every write queued; once the server is back the writes land, in order.
    #[tokio::test]
    async fn a_dead_database_queues_writes_until_it_is_back() {
        let server = tokio::task::spawn_blocking(PgServer::start)
            .await
            .expect("join")
            .expect("start PostgreSQL");
        let Some(server) = server else {
            skip_notice("a_dead_database_queues_writes_until_it_is_back");
            return;
        };
        let server = Arc::new(server);
        let url = server.create_database("dead");
        let store: Arc<dyn Store> = Arc::new(PgStore::open(&url).await.expect("open"));
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let recorder = Recorder::start(store.clone(), stop.clone(), &tasks);
        recorder.record(transition(0));

        let s = server.clone();
        tokio::task::spawn_blocking(move || s.stop())
            .await
            .expect("join")
            .expect("stop");
        let e = store.nodes().await.expect_err("the database is down");
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e}");
        for i in 1..100 {
            recorder.record(transition(i));
        }
        let mut health = recorder.health();
        tokio::time::timeout(Duration::from_secs(30), health.wait_for(|h| h.is_failing()))
            .await
            .expect("the failure is reported")
            .expect("health");
        // The writes wait (in the queue, or in the writer's hands while it retries).

        let s = server.clone();
        tokio::task::spawn_blocking(move || s.restart())
            .await
            .expect("join")
            .expect("restart");
        tokio::time::timeout(
            Duration::from_secs(30),
            health.wait_for(|h| !h.is_failing()),
        )
        .await
        .expect("the store recovers")
        .expect("health");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let s = SessionRef {
            node_id: "n1".into(),
            tmux_socket: "/s".into(),
            session_name: "a".into(),
        };
        loop {
            let h = store.history(&s, 1000).await.expect("history");
            if h.transitions.len() == 100 {
                let at: Vec<i64> = h.transitions.iter().rev().map(|t| t.at_ms).collect();
                assert_eq!(at, (0..100).collect::<Vec<_>>(), "in order, none lost");
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}",
                recorder.describe()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.cancel();
        tasks.close();
        tasks.wait().await;
    }
}
