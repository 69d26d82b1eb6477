//! Controller replicas sharing one PostgreSQL database.
//!
//! A node belongs to the replica that accepted its stream: the epoch bump of the attach is
//! confirmed by a conditional update (`owner` set only while the stored epoch is still the one
//! this replica raised), and the epoch is the fencing token the node agent checks on every
//! command. A replica that finds a higher epoch stored for a node it links to lost it: it drops
//! the link (the stream ends) and sends it nothing more. Admin commands for a node owned
//! elsewhere are forwarded to the owner's advertised address, so the caller keeps the synchronous
//! answer. A lease row elects one leader for fleet-wide duties, with a fencing token of its own:
//! among them provider incidents, counted over every replica's recorded rate-limit episodes
//! (`argus_decide::correlate::fleet`) and read back by every replica for its sessions' cooldowns.
//! A probe of the database feeds readiness: a replica that cannot reach it is not ready.

use crate::tls::{Fingerprint, TlsFiles, fingerprint};
use argus_shared::time::now_ms;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use argus_decide::correlate::IncidentKind;
use argus_decide::correlate::fleet::{self, Episode, OpenLimit, Step};
use argus_proto::v1 as pb;
use argus_proto::v1::admin_service_client::AdminServiceClient;
use dashmap::DashMap;
use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::{Channel, Endpoint};

use crate::supervisor::Supervisor;

/// How often the database is probed, ownership checked and the lease renewed.
pub const ROUND: Duration = Duration::from_secs(1);
/// How long one round's queries may take before the database counts as unreachable.
const QUERY_WAIT: Duration = Duration::from_secs(2);
/// A lease not renewed for this long passes to another replica: with [`ROUND`] renewals, a
/// dead leader is replaced within `LEASE_TTL + ROUND` (under the 10 s asked for).
pub const LEASE_TTL: Duration = Duration::from_secs(6);
/// The lease of the fleet-wide duties.
pub const LEADER_LEASE: &str = "leader";
/// Marks an admin call forwarded by another replica: it is never forwarded again.
pub const FORWARDED: &str = "argus-forwarded-by";
/// The PostgreSQL notification channel the replicas' fleet events travel on.
const EVENTS_CHANNEL: &str = "argus_events";
/// Text of one event's message past which it is cut in a notification (PostgreSQL's payload
/// limit is 8000 bytes; the event is sent hex-encoded).
const EVENT_MESSAGE_MAX: usize = 2000;

/// A query on the replicas' pool.
type PgQuery = sqlx::query::Query<'static, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// `$sql` after the CTE `leader`, which has a row only while the leader lease (`$1`) is held by
/// this replica (`$2`) with its token (`$3`), unexpired in the database's clock: the condition
/// of every write fenced by the leader lease (see `Replica::fenced`).
macro_rules! fenced {
    ($sql:literal) => {
        concat!(
            "WITH leader AS (SELECT 1 FROM leases WHERE name = $1 AND holder = $2 AND token = $3
               AND expires_ms > (extract(epoch from clock_timestamp()) * 1000)::bigint) ",
            $sql
        )
    };
}

/// The leader opens a provider incident (`$4` id, `$5` kind, `$6` scope, `$7` opened, `$8`
/// summary, `$9` sessions, `$10` cooldown end), unless one of the scope is open.
const OPEN_PROVIDER_INCIDENT: &str = fenced!(
    "INSERT INTO incidents (id, kind, scope, opened_ms, summary, sessions, until_ms)
     SELECT $4, $5, $6, $7, $8, $9, $10
     WHERE EXISTS (SELECT 1 FROM leader)
       AND NOT EXISTS (SELECT 1 FROM incidents WHERE kind = $5 AND scope = $6 AND closed_ms = 0)"
);
/// The leader updates an open provider incident (`$4` id, `$5` sessions, `$6` cooldown end, `$7`
/// summary); its acknowledgement stays.
const UPDATE_PROVIDER_INCIDENT: &str = fenced!(
    "UPDATE incidents SET sessions = $5, until_ms = $6, summary = $7
     WHERE id = $4 AND closed_ms = 0 AND EXISTS (SELECT 1 FROM leader)"
);
/// The leader closes an incident (`$4` id) at `$5`.
const CLOSE_INCIDENT: &str = fenced!(
    "UPDATE incidents SET closed_ms = $5
     WHERE id = $4 AND closed_ms = 0 AND EXISTS (SELECT 1 FROM leader)"
);
/// The leader forgets a stale rate-limit episode (`$4`..`$6` the session), only as it read it
/// (`$7` its cooldown end): a renewal since replaced it.
const FORGET_RATE_LIMIT: &str = fenced!(
    "DELETE FROM rate_limits
     WHERE node_id = $4 AND tmux_socket = $5 AND session_name = $6 AND until_ms = $7
       AND EXISTS (SELECT 1 FROM leader)"
);

/// How long a forwarded command may take (the owner waits for the node's answer).
const FORWARD_WAIT: Duration = Duration::from_secs(60);

/// Why a replica operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// The database refused or is unreachable.
    #[error("replica {op} failed: {source}")]
    Db {
        op: &'static str,
        #[source]
        source: sqlx::Error,
    },
    /// The store (the recorded rate-limit episodes) could not be read.
    #[error("replica {op} failed: {source}")]
    Store {
        op: &'static str,
        #[source]
        source: crate::store::StoreError,
    },
    /// The owner's advertised address is not a URL.
    #[error("the owner of node {node:?} advertises {addr:?}, not a URL")]
    BadAddress {
        node: String,
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// This replica's TLS files for calls to other replicas could not be used.
    #[error("TLS to the replica at {addr:?}: {why}")]
    PeerTls { addr: String, why: String },
}

/// What a replica presents and trusts when it forwards a call to another over TLS: its own
/// certificate and key (the controller's, which must carry the URI SAN
/// `spiffe://argus/replica/<name>` and client use, as `argusctl certs` issues it) and, as the
/// CA of the other replicas' certificates, the client CA (one CA for the cluster).
fn peer_tls_config(files: &TlsFiles) -> Result<tonic::transport::ClientTlsConfig, String> {
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    Ok(tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(read(
            &files.client_ca,
        )?))
        .identity(tonic::transport::Identity::from_pem(
            read(&files.cert)?,
            read(&files.key)?,
        )))
}

fn db(op: &'static str) -> impl FnOnce(sqlx::Error) -> ReplicaError {
    move |source| ReplicaError::Db { op, source }
}

/// Who owns a node, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub replica: String,
    pub addr: String,
    pub epoch: u64,
}

/// This replica's part in the cluster.
pub struct Replica {
    /// This replica's id (the controller id).
    pub id: String,
    /// The gRPC URL other replicas forward commands to.
    pub addr: String,
    pool: PgPool,
    /// The database answered the last probe.
    db_ok: watch::Sender<bool>,
    /// This replica holds the leader lease.
    leader: AtomicBool,
    /// The lease's fencing token while held.
    leader_token: std::sync::atomic::AtomicU64,
    /// Channels to other replicas, by address, with the fingerprint of the TLS files they were
    /// made with: renewed files make a new channel at the next forwarded call.
    peers: DashMap<String, (Fingerprint, Channel)>,
    /// The TLS files for those channels (`None`: plaintext, `--insecure`).
    peer_tls: Option<TlsFiles>,
    /// Replicas alive at the last round (their liveness leases unexpired), this one included.
    live: std::sync::atomic::AtomicU32,
}

impl Replica {
    /// Connects to the shared database at `url` (already migrated by the store). Calls
    /// forwarded to other replicas go over TLS with `peer_tls`, plaintext without.
    pub async fn connect(
        url: &str,
        id: &str,
        addr: &str,
        peer_tls: Option<TlsFiles>,
    ) -> Result<Self, ReplicaError> {
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(QUERY_WAIT)
            .connect(url)
            .await
            .map_err(db("connect"))?;
        Ok(Self::with_pool(pool, id, addr, peer_tls))
    }

    /// A replica whose pool connects on first use only: for in-process tests of the
    /// supervisor's replica paths, which run no round and need no database.
    pub fn unconnected(url: &str, id: &str, addr: &str) -> Result<Self, ReplicaError> {
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(QUERY_WAIT)
            .connect_lazy(url)
            .map_err(db("connect"))?;
        Ok(Self::with_pool(pool, id, addr, None))
    }

    fn with_pool(pool: PgPool, id: &str, addr: &str, peer_tls: Option<TlsFiles>) -> Self {
        Self {
            id: id.to_owned(),
            addr: addr.to_owned(),
            pool,
            db_ok: watch::Sender::new(true),
            leader: AtomicBool::new(false),
            leader_token: std::sync::atomic::AtomicU64::new(0),
            peers: DashMap::new(),
            peer_tls,
            live: std::sync::atomic::AtomicU32::new(1),
        }
    }

    /// Confirms this replica's ownership of `node_id` at `epoch` (the epoch its attach raised):
    /// true when the stored epoch is still `epoch`, false when another replica raised it since.
    pub async fn claim(&self, node_id: &str, epoch: u64) -> Result<bool, ReplicaError> {
        let done = sqlx::query(
            "UPDATE nodes SET owner = $1, owner_addr = $2 WHERE node_id = $3 AND epoch = $4",
        )
        .bind(&self.id)
        .bind(&self.addr)
        .bind(node_id)
        .bind(epoch as i64)
        .execute(&self.pool)
        .await
        .map_err(db("claim node"))?;
        Ok(done.rows_affected() == 1)
    }

    /// The stored owner of `node_id`, if any replica claimed it.
    pub async fn owner(&self, node_id: &str) -> Result<Option<Owner>, ReplicaError> {
        let row = sqlx::query("SELECT owner, owner_addr, epoch FROM nodes WHERE node_id = $1")
            .bind(node_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("read owner"))?;
        Ok(row
            .map(|r| Owner {
                replica: r.get("owner"),
                addr: r.get("owner_addr"),
                epoch: r.get::<i64, _>("epoch") as u64,
            })
            .filter(|o| !o.replica.is_empty()))
    }

    /// Of `held` (node, the epoch this replica holds it at), those whose stored epoch is higher:
    /// another replica took them over.
    pub async fn lost(&self, held: &[(String, u64)]) -> Result<Vec<String>, ReplicaError> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = held.iter().map(|(n, _)| n.as_str()).collect();
        let rows = sqlx::query("SELECT node_id, epoch FROM nodes WHERE node_id = ANY($1)")
            .bind(&ids)
            .fetch_all(&self.pool)
            .await
            .map_err(db("check ownership"))?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let node: String = r.get("node_id");
                let stored = r.get::<i64, _>("epoch") as u64;
                held.iter()
                    .any(|(n, mine)| *n == node && stored > *mine)
                    .then_some(node)
            })
            .collect())
    }

    /// Every node's stored owner and whether that replica is alive (its liveness lease held).
    pub async fn owners(
        &self,
    ) -> Result<std::collections::HashMap<String, (Owner, bool)>, ReplicaError> {
        let rows = sqlx::query(
            "SELECT n.node_id, n.owner, n.owner_addr, n.epoch,
                    COALESCE(l.expires_ms > (extract(epoch from clock_timestamp()) * 1000)::bigint,
                             false) AS alive
             FROM nodes n LEFT JOIN leases l ON l.name = 'replica:' || n.owner
             WHERE n.owner <> ''",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("read owners"))?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get("node_id"),
                    (
                        Owner {
                            replica: r.get("owner"),
                            addr: r.get("owner_addr"),
                            epoch: r.get::<i64, _>("epoch") as u64,
                        },
                        r.get("alive"),
                    ),
                )
            })
            .collect())
    }

    /// Takes or renews `lease` for this replica; returns its fencing token while this replica
    /// holds it, `None` while another does. Times are the database's, not this host's.
    pub async fn hold_lease(&self, lease: &str) -> Result<Option<u64>, ReplicaError> {
        let ttl = LEASE_TTL.as_millis() as i64;
        let row = sqlx::query(
            "INSERT INTO leases (name, holder, token, expires_ms)
             VALUES ($1, $2, 1, (extract(epoch from clock_timestamp()) * 1000)::bigint + $3)
             ON CONFLICT (name) DO UPDATE SET
                 token = CASE WHEN leases.holder = excluded.holder THEN leases.token
                              ELSE leases.token + 1 END,
                 holder = excluded.holder,
                 expires_ms = excluded.expires_ms
             WHERE leases.holder = excluded.holder
                OR leases.expires_ms < (extract(epoch from clock_timestamp()) * 1000)::bigint
             RETURNING token",
        )
        .bind(lease)
        .bind(&self.id)
        .bind(ttl)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("hold lease"))?;
        Ok(row.map(|r| r.get::<i64, _>("token") as u64))
    }

    /// The leader's fleet-wide duty: commands left pending by a replica that died, for a node no
    /// live replica took over, are closed (`unknown`, or `expired` for a capture) once past
    /// `timeout` and a second of slack, as each replica closes its own. Fenced by the lease:
    /// the update applies only while `token` is still this replica's leader token. Returns how
    /// many were closed.
    pub async fn close_orphans(&self, token: u64, timeout: Duration) -> Result<u64, ReplicaError> {
        let done = sqlx::query(
            "WITH now AS (SELECT (extract(epoch from clock_timestamp()) * 1000)::bigint AS ms)
             UPDATE commands c SET
                 status = CASE WHEN c.action = 'capture' THEN 'COMMAND_STATUS_EXPIRED'
                               ELSE 'COMMAND_STATUS_UNKNOWN' END,
                 result_message = 'no answer by the deadline: the replica that sent it died and no              replica took the node over; it may have run',
                 finished_at_ms = (SELECT ms FROM now)
             WHERE c.status = $1
               AND c.issued_at_ms < (SELECT ms FROM now) - $2
               AND NOT EXISTS (
                   SELECT 1 FROM nodes n JOIN leases l ON l.name = 'replica:' || n.owner
                   WHERE n.node_id = c.node_id AND l.expires_ms > (SELECT ms FROM now))
               AND EXISTS (
                   SELECT 1 FROM leases l WHERE l.name = $3 AND l.holder = $4 AND l.token = $5
                     AND l.expires_ms > (SELECT ms FROM now))",
        )
        .bind(crate::store::PENDING)
        .bind((timeout.as_millis() + 1000) as i64)
        .bind(LEADER_LEASE)
        .bind(&self.id)
        .bind(token as i64)
        .execute(&self.pool)
        .await
        .map_err(db("close orphaned commands"))?;
        Ok(done.rows_affected())
    }

    /// The leader's notification outbox: every incident change any replica recorded
    /// (`opened`, `closed`) that has no mark in `notified` yet is claimed with a mark, fenced
    /// by the leader token in SQL, and only then handed to `notifier` (claim before post: a
    /// leader that dies between the two loses that one post rather than a new leader posting
    /// it twice). Incidents of one kind and scope opened by several replicas (each correlates
    /// its own nodes' sessions) make one group, posted once under the first one's id: a later
    /// one's opening is folded in, and a close is posted only when no incident of the group is
    /// still open. Returns how many changes were posted.
    pub async fn notify_changes(
        &self,
        token: u64,
        notifier: &crate::notify::Notifier,
    ) -> Result<usize, ReplicaError> {
        let rows = sqlx::query(
            "SELECT i.id, i.kind, i.scope, i.opened_ms, i.closed_ms, i.acked_ms, i.acked_by,
                    i.summary, i.sessions, i.until_ms,
                    o.sent_as AS opened_as
             FROM incidents i
             LEFT JOIN notified o ON o.incident_id = i.id AND o.change = 'opened'
             WHERE o.incident_id IS NULL
                OR (i.closed_ms > 0 AND NOT EXISTS (
                        SELECT 1 FROM notified c WHERE c.incident_id = i.id AND c.change = 'closed'))
             ORDER BY i.opened_ms, i.id
             LIMIT 200",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("read unnotified incidents"))?;
        let mut posted = 0;
        for r in rows {
            let row = crate::store::postgres::incident_row(&r);
            let mut opened_as: Option<String> = r.get("opened_as");
            if opened_as.is_none() {
                // The group's open incident already posted, if any: this one folds into it.
                let first: Option<String> = sqlx::query_scalar(
                    "SELECT o.sent_as FROM incidents i
                     JOIN notified o ON o.incident_id = i.id AND o.change = 'opened'
                     WHERE i.kind = $1 AND i.scope = $2 AND i.id <> $3 AND i.closed_ms = 0
                     ORDER BY i.opened_ms LIMIT 1",
                )
                .bind(&row.kind)
                .bind(&row.scope)
                .bind(&row.id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db("read the incident's group"))?;
                let sent_as = first.clone().unwrap_or_else(|| row.id.clone());
                if !self
                    .mark(token, &row.id, "opened", first.is_none(), &sent_as)
                    .await?
                {
                    return Ok(posted); // no longer the leader
                }
                if first.is_none()
                    && let Some(i) = crate::supervisor::incident_from_row(row.clone())
                {
                    let mut i = i;
                    i.closed_ms = None;
                    notifier.incident(&argus_decide::correlate::Change::Opened(i));
                    posted += 1;
                }
                opened_as = Some(sent_as);
            }
            if row.closed_ms > 0 {
                let others_open: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM incidents
                                    WHERE kind = $1 AND scope = $2 AND id <> $3 AND closed_ms = 0)",
                )
                .bind(&row.kind)
                .bind(&row.scope)
                .bind(&row.id)
                .fetch_one(&self.pool)
                .await
                .map_err(db("read the incident's group"))?;
                let sent_as = opened_as.unwrap_or_else(|| row.id.clone());
                if !self
                    .mark(token, &row.id, "closed", !others_open, &sent_as)
                    .await?
                {
                    return Ok(posted);
                }
                if !others_open && let Some(mut i) = crate::supervisor::incident_from_row(row) {
                    i.id = sent_as;
                    notifier.incident(&argus_decide::correlate::Change::Closed(i));
                    posted += 1;
                }
            }
        }
        Ok(posted)
    }

    /// A new leader takes over the Alertmanager re-sends of the open incidents that earlier
    /// leaders posted (under the id they were posted as, once per group). Returns how many.
    pub async fn adopt_firing(
        &self,
        notifier: &crate::notify::Notifier,
    ) -> Result<usize, ReplicaError> {
        let rows = sqlx::query(
            "SELECT DISTINCT ON (o.sent_as) o.sent_as, i.id, i.kind, i.scope, i.opened_ms,
                    i.closed_ms, i.acked_ms, i.acked_by, i.summary, i.sessions, i.until_ms
             FROM incidents i
             JOIN notified o ON o.incident_id = i.id AND o.change = 'opened'
             WHERE i.closed_ms = 0
             ORDER BY o.sent_as, i.opened_ms",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("read the open incidents"))?;
        let mut adopted = 0;
        for r in rows {
            // Posted under the group's id.
            let row = crate::store::IncidentRow {
                id: r.get("sent_as"),
                ..crate::store::postgres::incident_row(&r)
            };
            if let Some(i) = crate::supervisor::incident_from_row(row) {
                notifier.firing(&i);
                adopted += 1;
            }
        }
        Ok(adopted)
    }

    /// The leader's reminders: an open, unacknowledged incident that was posted (the head of
    /// its group) is posted again once per `repeat` since its opening. The `n`th reminder is the
    /// change `reminder-<n>`, claimed in the outbox like any other before it is posted, so a new
    /// leader never repeats one the old leader sent, and one that comes to lead after several
    /// periods sends only the current one. Returns how many were posted.
    pub async fn remind_open(
        &self,
        token: u64,
        notifier: &crate::notify::Notifier,
        repeat: Duration,
    ) -> Result<usize, ReplicaError> {
        let repeat = repeat.as_millis() as i64;
        if repeat <= 0 {
            return Ok(0);
        }
        let rows = sqlx::query(
            "SELECT i.id, i.kind, i.scope, i.opened_ms, i.closed_ms, i.acked_ms, i.acked_by,
                    i.summary, i.sessions, i.until_ms, o.sent_as
             FROM incidents i
             JOIN notified o ON o.incident_id = i.id AND o.change = 'opened' AND o.sent = 1
             WHERE i.closed_ms = 0 AND i.acked_ms = 0 AND i.opened_ms <= $1
             ORDER BY i.opened_ms LIMIT 200",
        )
        .bind(now_ms() - repeat)
        .fetch_all(&self.pool)
        .await
        .map_err(db("read the incidents due a reminder"))?;
        let mut posted = 0;
        for r in rows {
            let row = crate::store::postgres::incident_row(&r);
            let n = (now_ms() - row.opened_ms) / repeat;
            let sent_as: String = r.get("sent_as");
            if !self
                .mark(token, &row.id, &format!("reminder-{n}"), true, &sent_as)
                .await?
            {
                continue; // sent already (or no longer the leader: the next mark fails too)
            }
            if let Some(mut i) = crate::supervisor::incident_from_row(row) {
                i.id = sent_as;
                notifier.incident(&argus_decide::correlate::Change::Reminder(i));
                posted += 1;
            }
        }
        Ok(posted)
    }

    /// Marks one incident change as notified (`sent`: posted, else folded into its group),
    /// only while `token` is still this replica's leader token. False when the mark was not
    /// made (the lease moved on, or another leader marked it first).
    async fn mark(
        &self,
        token: u64,
        incident: &str,
        change: &str,
        sent: bool,
        sent_as: &str,
    ) -> Result<bool, ReplicaError> {
        let done = sqlx::query(
            "WITH now AS (SELECT (extract(epoch from clock_timestamp()) * 1000)::bigint AS ms)
             INSERT INTO notified (incident_id, change, sent, sent_as, token, at_ms)
             SELECT $1, $2, $3, $4, $5, (SELECT ms FROM now)
             WHERE EXISTS (
                 SELECT 1 FROM leases l WHERE l.name = $6 AND l.holder = $7 AND l.token = $5
                   AND l.expires_ms > (SELECT ms FROM now))
             ON CONFLICT DO NOTHING",
        )
        .bind(incident)
        .bind(change)
        .bind(i64::from(sent))
        .bind(sent_as)
        .bind(token as i64)
        .bind(LEADER_LEASE)
        .bind(&self.id)
        .execute(&self.pool)
        .await
        .map_err(db("mark an incident change notified"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Every replica, every round: the open provider incidents (the leader's, fleet-wide), oldest
    /// first, for its sessions' cooldowns. One indexed query.
    pub async fn open_provider_limits(&self) -> Result<Vec<OpenLimit>, ReplicaError> {
        let rows = sqlx::query(
            "SELECT id, scope, sessions, until_ms FROM incidents
             WHERE kind = $1 AND closed_ms = 0 ORDER BY opened_ms, id",
        )
        .bind(IncidentKind::ProviderLimit.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(db("read the open provider incidents"))?;
        Ok(rows
            .iter()
            .map(|r| OpenLimit {
                id: r.get("id"),
                scope: r.get("scope"),
                sessions: r.get::<i64, _>("sessions") as u32,
                until_ms: r.get("until_ms"),
            })
            .collect())
    }

    /// The leader's provider correlation: every replica's recorded rate-limit episodes against
    /// the open provider incidents (`open`), and the changes applied, each fenced in SQL by
    /// `token` (nothing is written once the lease moved on). Episodes whose cooldown ended long
    /// ago are forgotten. Returns whether anything changed.
    pub async fn correlate_providers(
        &self,
        token: u64,
        sup: &Supervisor,
        open: &[OpenLimit],
    ) -> Result<bool, ReplicaError> {
        let episodes: Vec<Episode> = sup
            .store
            .rate_limits()
            .await
            .map_err(|source| ReplicaError::Store {
                op: "read the rate-limit episodes",
                source,
            })?
            .into_iter()
            .map(|r| Episode {
                session: r.session,
                scope: r.scope,
                at_ms: r.at_ms,
                until_ms: r.until_ms,
            })
            .collect();
        let policy = sup.policy();
        let now = argus_shared::time::now_ms();
        let kind = IncidentKind::ProviderLimit.as_str();
        let mut changed = false;
        for (n, step) in fleet::provider_limits(&episodes, open, now, &policy)
            .into_iter()
            .enumerate()
        {
            let (done, event) = match step {
                Step::Open {
                    scope,
                    sessions,
                    until_ms,
                    summary,
                } => {
                    let id = format!("inc-fleet-{token}-{now}-{n}");
                    let q = self
                        .fenced(token, OPEN_PROVIDER_INCIDENT)
                        .bind(id.clone())
                        .bind(kind)
                        .bind(scope.clone())
                        .bind(now)
                        .bind(summary.clone())
                        .bind(i64::from(sessions))
                        .bind(until_ms);
                    let done = self.changed("open a provider incident", q).await?;
                    if done {
                        crate::metrics::incident_opened(IncidentKind::ProviderLimit);
                    }
                    let message = format!("{kind} {scope} [{id}]: {summary}");
                    (done, Some(("incident_opened", message)))
                }
                Step::Update {
                    id,
                    sessions,
                    until_ms,
                    summary,
                } => {
                    let q = self
                        .fenced(token, UPDATE_PROVIDER_INCIDENT)
                        .bind(id)
                        .bind(i64::from(sessions))
                        .bind(until_ms)
                        .bind(summary);
                    (self.changed("update a provider incident", q).await?, None)
                }
                Step::Close { id } => {
                    let scope = open.iter().find(|o| o.id == id).map_or("", |o| &o.scope);
                    let message =
                        format!("{kind} {scope} [{id}]: the fleet's rate limits are over");
                    let q = self.fenced(token, CLOSE_INCIDENT).bind(id).bind(now);
                    let done = self.changed("close a provider incident", q).await?;
                    (done, Some(("incident_closed", message)))
                }
            };
            if !done {
                return Ok(changed); // no longer the leader, or another writer came first
            }
            changed = true;
            if let Some((event, message)) = event {
                tracing::info!(token, "{message}");
                sup.events.publish("", "", event, message, None);
            }
        }
        for e in episodes.iter().filter(|e| fleet::stale(e, now, &policy)) {
            let q = self
                .fenced(token, FORGET_RATE_LIMIT)
                .bind(e.session.node_id.clone())
                .bind(e.session.tmux_socket.clone())
                .bind(e.session.session_name.clone())
                .bind(e.until_ms);
            self.changed("forget a stale rate-limit episode", q).await?;
        }
        Ok(changed)
    }

    /// `sql` (written with [`fenced!`]) with the leader lease's parameters bound as `$1` to
    /// `$3`: its CTE `leader` has a row only while `token` is still this replica's unexpired
    /// leader token. The caller binds its own parameters from `$4` on.
    fn fenced(&self, token: u64, sql: &'static str) -> PgQuery {
        sqlx::query(sql)
            .bind(LEADER_LEASE)
            .bind(self.id.clone())
            .bind(token as i64)
    }

    /// Runs a [`Self::fenced`] write; true when it changed a row.
    async fn changed(&self, op: &'static str, query: PgQuery) -> Result<bool, ReplicaError> {
        let done = query.execute(&self.pool).await.map_err(db(op))?;
        Ok(done.rows_affected() > 0)
    }

    /// Acknowledges an open fleet-wide provider incident in the store (the leader's: no
    /// replica's correlator holds it). `None` when there is no such open incident.
    pub async fn ack_fleet_incident(
        &self,
        id: &str,
        by: &str,
        now: i64,
    ) -> Result<Option<crate::store::IncidentRow>, ReplicaError> {
        let row = sqlx::query(
            "UPDATE incidents SET acked_ms = $1, acked_by = $2
             WHERE id = $3 AND kind = $4 AND closed_ms = 0
             RETURNING id, kind, scope, opened_ms, closed_ms, acked_ms, acked_by, summary,
                       sessions, until_ms",
        )
        .bind(now)
        .bind(by)
        .bind(id)
        .bind(IncidentKind::ProviderLimit.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(db("acknowledge a provider incident"))?;
        Ok(row.as_ref().map(crate::store::postgres::incident_row))
    }

    /// Whether the database answered the last probe (readiness), as it changes.
    pub fn db_ok(&self) -> watch::Receiver<bool> {
        self.db_ok.subscribe()
    }

    /// Whether the database answered the last probe.
    pub fn db_reachable(&self) -> bool {
        *self.db_ok.borrow()
    }

    /// Replicas alive at the last round, this one included (1 until the first round).
    pub fn live_replicas(&self) -> u32 {
        self.live.load(Ordering::Relaxed).max(1)
    }

    /// True while this replica holds the leader lease.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    /// The leader lease's fencing token while held (0 otherwise).
    pub fn leader_token(&self) -> u64 {
        self.leader_token.load(Ordering::Relaxed)
    }

    /// One round: probe the database, let go of nodes another replica took, hold the lease.
    async fn round(&self, sup: &Supervisor) -> Result<(), ReplicaError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db("probe"))?;
        let held: Vec<(String, u64, u64)> = sup
            .fleet
            .node_ids()
            .into_iter()
            .filter_map(|n| sup.fleet.node(&n))
            .filter(|n| n.link.is_some())
            .map(|n| (n.node_id, n.epoch, n.stream_id))
            .collect();
        let pairs: Vec<(String, u64)> = held.iter().map(|(n, e, _)| (n.clone(), *e)).collect();
        for node in self.lost(&pairs).await? {
            if let Some((_, epoch, stream)) = held.iter().find(|(n, _, _)| *n == node) {
                tracing::warn!(node = %node, epoch, "another replica owns the node now: letting it go");
                if sup.fleet.detach_if_owner(&node, *stream) {
                    sup.events.publish(
                        &node,
                        "",
                        "node_detached",
                        format!("owned by another replica now (this one held epoch {epoch})"),
                        None,
                    );
                }
            }
        }
        // Nodes this replica knows without a stream that another replica owns now: out of this
        // live view (they never turn silent or down here).
        let unlinked: Vec<String> = sup
            .fleet
            .node_ids()
            .into_iter()
            .filter(|n| sup.fleet.node(n).is_some_and(|e| e.link.is_none()))
            .collect();
        for node in unlinked {
            if let Some(o) = self.owner(&node).await?
                && o.replica != self.id
                && sup.fleet.node(&node).is_some_and(|e| e.link.is_none())
            {
                tracing::info!(node = %node, owner = %o.replica, "the node is another replica's now");
                sup.fleet.remove_node(&node);
                sup.events.publish(
                    &node,
                    "",
                    "node_moved",
                    format!("owned by replica {} at epoch {}", o.replica, o.epoch),
                    None,
                );
            }
        }
        // This replica's own liveness (other replicas' leader sweeps read it).
        self.hold_lease(&format!("replica:{}", self.id)).await?;
        let live: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM leases WHERE name LIKE 'replica:%'
               AND expires_ms > (extract(epoch from clock_timestamp()) * 1000)::bigint",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(db("count the live replicas"))?;
        let live = u32::try_from(live).unwrap_or(1).max(1);
        if self.live.swap(live, Ordering::Relaxed) != live {
            tracing::info!(
                replicas = live,
                "live replicas changed: this replica takes 1/{live} of the fleet destructive budget"
            );
        }
        let token = self.hold_lease(LEADER_LEASE).await?;
        // Provider incidents are the leader's, fleet-wide: every replica reads the open ones for
        // its sessions' cooldowns.
        let mut open = self.open_provider_limits().await?;
        if let Some(token) = token {
            if !self.is_leader() {
                let firing = self.adopt_firing(sup.notifier()).await?;
                if firing > 0 {
                    tracing::info!(
                        incidents = firing,
                        "open incidents' alerts taken over by the new leader"
                    );
                }
            }
            let closed = self
                .close_orphans(token, sup.policy().command_timeout)
                .await?;
            if closed > 0 {
                tracing::warn!(
                    commands = closed,
                    token,
                    "closed commands a dead replica left pending on nodes nobody took over"
                );
            }
            // Before the outbox: a provider incident opened now is posted in this round.
            if self.correlate_providers(token, sup, &open).await? {
                open = self.open_provider_limits().await?;
            }
            let posted = self.notify_changes(token, sup.notifier()).await?;
            if posted > 0 {
                tracing::info!(
                    changes = posted,
                    token,
                    "incident changes notified by the leader"
                );
            }
            let reminded = self
                .remind_open(token, sup.notifier(), sup.policy().notify_repeat)
                .await?;
            if reminded > 0 {
                tracing::info!(
                    incidents = reminded,
                    token,
                    "open incidents reminded by the leader"
                );
            }
        }
        sup.set_fleet_limits(open);
        let was = self.leader.swap(token.is_some(), Ordering::Relaxed);
        self.leader_token
            .store(token.unwrap_or(0), Ordering::Relaxed);
        if was != token.is_some() {
            tracing::info!(
                replica = %self.id,
                token = token.unwrap_or(0),
                leader = token.is_some(),
                "leader lease changed"
            );
        }
        Ok(())
    }

    /// Runs [`Self::round`] every [`ROUND`] until `stop`.
    pub fn spawn(
        self: &Arc<Self>,
        sup: Arc<Supervisor>,
        tasks: &TaskTracker,
        stop: CancellationToken,
    ) {
        let me = self.clone();
        let span = tracing::info_span!("replica", id = %self.id);
        tasks.spawn(tracing::Instrument::instrument(
            async move {
                let mut every = tokio::time::interval(ROUND);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        _ = every.tick() => {}
                    }
                    let ok = match tokio::time::timeout(QUERY_WAIT * 2, me.round(&sup)).await {
                        Ok(Ok(())) => true,
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "the shared database does not answer");
                            false
                        }
                        Err(_) => {
                            tracing::warn!("the shared database did not answer in time");
                            false
                        }
                    };
                    if !ok {
                        // Without the database this replica cannot know it still leads.
                        me.leader.store(false, Ordering::Relaxed);
                    }
                    me.db_ok
                        .send_if_modified(|v| std::mem::replace(v, ok) != ok);
                }
                me.leader.store(false, Ordering::Relaxed);
            },
            span,
        ));
    }

    /// Relays fleet events between replicas through the database until `stop`: this replica's
    /// own events are sent with `NOTIFY`, the other replicas' are received with `LISTEN` and
    /// handed to this replica's watchers, marked with their replica. At most once: an event
    /// published while the database is unreachable is not relayed.
    pub fn relay_events(
        self: &Arc<Self>,
        events: crate::events::Events,
        tasks: &TaskTracker,
        stop: CancellationToken,
    ) {
        let me = self.clone();
        let mut local = events.subscribe();
        let out_stop = stop.clone();
        tasks.spawn(tracing::Instrument::instrument(
            async move {
                loop {
                    let mut e = tokio::select! {
                        () = out_stop.cancelled() => break,
                        e = local.recv() => match e {
                            Ok(e) => e,
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                                tracing::warn!(skipped = n, "events not relayed to other replicas");
                                continue;
                            }
                            Err(_) => break,
                        },
                    };
                    if !e.replica.is_empty() {
                        continue; // relayed from another replica
                    }
                    e.replica.clone_from(&me.id);
                    if e.message.len() > EVENT_MESSAGE_MAX {
                        let mut cut = EVENT_MESSAGE_MAX;
                        while !e.message.is_char_boundary(cut) {
                            cut -= 1;
                        }
                        e.message.truncate(cut);
                    }
                    let payload = hex(&prost::Message::encode_to_vec(&e));
                    let sent = sqlx::query("SELECT pg_notify($1, $2)")
                        .bind(EVENTS_CHANNEL)
                        .bind(&payload)
                        .execute(&me.pool);
                    if let Ok(Err(err)) = tokio::time::timeout(QUERY_WAIT, sent).await {
                        tracing::debug!(error = %err, "an event not relayed to other replicas");
                    }
                }
            },
            tracing::info_span!("events_out"),
        ));
        let me = self.clone();
        tasks.spawn(tracing::Instrument::instrument(
            async move {
                let mut listener = loop {
                    let l = async {
                        let mut l = sqlx::postgres::PgListener::connect_with(&me.pool).await?;
                        l.listen(EVENTS_CHANNEL).await?;
                        Ok::<_, sqlx::Error>(l)
                    };
                    match l.await {
                        Ok(l) => break l,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot listen to other replicas' events; retrying");
                            tokio::select! {
                                () = stop.cancelled() => return,
                                () = tokio::time::sleep(ROUND) => {}
                            }
                        }
                    }
                };
                loop {
                    // `recv` reconnects (and listens again) by itself after a lost connection.
                    let n = tokio::select! {
                        () = stop.cancelled() => break,
                        n = listener.recv() => n,
                    };
                    match n {
                        Ok(n) => {
                            let Some(bytes) = unhex(n.payload()) else { continue };
                            let Ok(e) = <pb::FleetEvent as prost::Message>::decode(&bytes[..])
                            else {
                                continue;
                            };
                            if e.replica != me.id {
                                events.relay(e);
                            }
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "listening to other replicas' events");
                            tokio::select! {
                                () = stop.cancelled() => break,
                                () = tokio::time::sleep(ROUND) => {}
                            }
                        }
                    }
                }
            },
            tracing::info_span!("events_in"),
        ));
    }

    /// An admin client to the replica at `addr`.
    fn peer(&self, node: &str, addr: &str) -> Result<AdminServiceClient<Channel>, ReplicaError> {
        let files = self.peer_tls.as_ref().map(fingerprint).unwrap_or_default();
        if let Some(c) = self.peers.get(addr).filter(|c| c.0 == files) {
            return Ok(AdminServiceClient::new(c.1.clone()));
        }
        let bad = |source| ReplicaError::BadAddress {
            node: node.to_owned(),
            addr: addr.to_owned(),
            source,
        };
        let mut endpoint = Endpoint::from_shared(addr.to_owned())
            .map_err(bad)?
            .connect_timeout(Duration::from_secs(2))
            .timeout(FORWARD_WAIT);
        if let Some(tls) = &self.peer_tls {
            let config = peer_tls_config(tls).map_err(|why| ReplicaError::PeerTls {
                addr: addr.to_owned(),
                why,
            })?;
            endpoint = endpoint.tls_config(config).map_err(bad)?;
        }
        let c = endpoint.connect_lazy();
        self.peers.insert(addr.to_owned(), (files, c.clone()));
        Ok(AdminServiceClient::new(c))
    }

    /// Where a command for `node` goes: `None` to run it here (this replica links the node, or
    /// no other replica owns it, or the call was already forwarded), else the owner's client.
    pub async fn route(
        &self,
        node: &str,
        linked_here: bool,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Option<Result<AdminServiceClient<Channel>, tonic::Status>> {
        if linked_here || metadata.contains_key(FORWARDED) {
            return None;
        }
        let owner = match self.owner(node).await {
            Ok(Some(o)) if o.replica != self.id && !o.addr.is_empty() => o,
            Ok(_) => return None,
            Err(e) => {
                return Some(Err(tonic::Status::unavailable(format!(
                    "cannot find the replica that owns node {node:?}: {e}"
                ))));
            }
        };
        tracing::debug!(node, owner = %owner.replica, addr = %owner.addr, "forwarding a command");
        Some(
            self.peer(node, &owner.addr)
                .map_err(|e| tonic::Status::unavailable(e.to_string())),
        )
    }

    /// A request to forward: `msg` naming the caller this replica authenticated (the owner
    /// trusts the name from a replica's certificate only), with the forwarding mark. The
    /// caller's own credentials stay here: a bearer token is not passed on.
    pub fn forwarded<M>(&self, msg: M) -> tonic::Request<M> {
        let mut r = tonic::Request::new(msg);
        if let Some(v) =
            crate::auth::caller().and_then(|c| crate::auth::forwarded_for(&c).parse().ok())
        {
            r.metadata_mut().insert(crate::auth::FORWARDED_FOR, v);
        }
        if let Ok(v) = self.id.parse() {
            r.metadata_mut().insert(FORWARDED, v);
        }
        r
    }
}

/// The node a command request targets (empty when none is named).
pub fn node_of(session: Option<&pb::SessionRef>) -> &str {
    session.map_or("", |s| s.node_id.as_str())
}

/// True when the store at `url` is shared by replicas (PostgreSQL).
pub fn shared(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Lower-case hex (notification payloads are text).
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_round_trips() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(super::unhex(&super::hex(&bytes)), Some(bytes));
        assert_eq!(super::unhex("abc"), None);
        assert_eq!(super::unhex("zz"), None);
    }
}
