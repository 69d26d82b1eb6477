//! The in-memory backend: the same [`Store`] contract as SQLite, kept in a map behind a mutex, so
//! that the supervisor, ingest and dispatch can be tested in-process without a database file.
//! Nothing survives the process; `memory://` opens one.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;

use super::{
    AlarmRow, CheckpointQuery, CheckpointRow, CommandRow, HandoffQuery, HandoffRow, History,
    IncidentRow, NodeRecord, RateLimitRow, SessionRef, Store, StoreError, TransitionRow, Write,
};

/// A [`Store`] held in memory.
#[derive(Default)]
pub struct MemoryStore {
    // A std mutex: no `.await` happens while it is held, and every operation is short.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    nodes: HashMap<String, NodeRecord>,
    /// Every transition in the order written (the order SQLite's row ids give).
    transitions: Vec<TransitionRow>,
    /// Every command in the order first issued, and where each id sits.
    commands: Vec<CommandRow>,
    command_index: HashMap<String, usize>,
    durables: HashMap<SessionRef, String>,
    incidents: HashMap<String, IncidentRow>,
    alarms: HashMap<String, AlarmRow>,
    /// Checkpoints in the order stored, and their ids.
    checkpoints: Vec<CheckpointRow>,
    checkpoint_ids: std::collections::HashSet<String>,
    handoffs: HashMap<String, HandoffRow>,
    rate_limits: HashMap<SessionRef, RateLimitRow>,
    /// Batches still to refuse (see [`MemoryStore::fail_writes`]).
    failing_writes: u32,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the next `batches` calls to [`Store::write`] fail (and write nothing), as a database
    /// that is briefly unreachable would: for testing the writers' retries.
    pub fn fail_writes(&self, batches: u32) {
        self.lock().failing_writes = batches;
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Applying a write cannot panic halfway, so a lock poisoned by a panicking test thread
        // still guards consistent state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

// === impl State: one function per `Write` kind ===

impl State {
    fn apply(&mut self, w: &Write) {
        match w {
            Write::Transition(t) => self.transitions.push(t.clone()),
            Write::CommandIssued(c) => self.insert_command(c),
            Write::CommandFinished {
                command_id,
                status,
                message,
                at_ms,
            } => self.finish_command(command_id, status, message, *at_ms),
            Write::Durable { session, data, .. } => {
                self.durables.insert(session.clone(), data.clone());
            }
            Write::Incident(i) => {
                self.incidents.insert(i.id.clone(), i.clone());
            }
            Write::CommandLate {
                command_id,
                node_id,
                status,
                message,
                at_ms,
            } => self.late_result(command_id, node_id, status, message, *at_ms),
            Write::AlarmScheduled(a) => {
                self.alarms.entry(a.id.clone()).or_insert_with(|| a.clone());
            }
            Write::AlarmClosed {
                id,
                state,
                at_ms,
                command_id,
                message,
            } => {
                if let Some(a) = self.alarms.get_mut(id)
                    && a.state == super::ALARM_PENDING
                {
                    state.clone_into(&mut a.state);
                    a.closed_ms = *at_ms;
                    command_id.clone_into(&mut a.command_id);
                    message.clone_into(&mut a.message);
                }
            }
            Write::Checkpoint(c) => {
                // Like SQLite's `INSERT OR IGNORE`.
                if self.checkpoint_ids.insert(c.id.clone()) {
                    self.checkpoints.push(c.clone());
                }
            }
            Write::Handoff(h) => {
                self.handoffs.insert(h.id.clone(), h.clone());
            }
            Write::RateLimit(r) => {
                self.rate_limits.insert(r.session.clone(), r.clone());
            }
            Write::RateLimitOver { session } => {
                self.rate_limits.remove(session);
            }
        }
    }

    /// Like SQLite: only a pending row, or one the controller closed, of the same node.
    fn late_result(
        &mut self,
        command_id: &str,
        node_id: &str,
        status: &str,
        message: &str,
        at_ms: i64,
    ) {
        let Some(&i) = self.command_index.get(command_id) else {
            return;
        };
        let c = &self.commands[i];
        let closed_as = c.status.clone();
        if c.session.node_id != node_id
            || (closed_as != super::PENDING
                && !super::CLOSED_BY_CONTROLLER.contains(&closed_as.as_str()))
        {
            return;
        }
        self.finish_command(
            command_id,
            status,
            &super::late_message(&closed_as, message),
            at_ms,
        );
    }

    /// Like SQLite's `INSERT OR IGNORE`: an id already recorded is left as it is.
    fn insert_command(&mut self, c: &CommandRow) {
        if !self.command_index.contains_key(&c.command_id) {
            self.command_index
                .insert(c.command_id.clone(), self.commands.len());
            self.commands.push(c.clone());
        }
    }

    /// A command id never recorded changes nothing.
    fn finish_command(&mut self, command_id: &str, status: &str, message: &str, at_ms: i64) {
        if let Some(&i) = self.command_index.get(command_id) {
            let c = &mut self.commands[i];
            status.clone_into(&mut c.status);
            message.clone_into(&mut c.result_message);
            c.finished_at_ms = at_ms;
        }
    }
}

fn injected_failure() -> StoreError {
    StoreError::Db {
        op: "write batch",
        source: sqlx::Error::PoolTimedOut,
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn attach_node(&self, n: &NodeRecord, at_least: u64) -> Result<u64, StoreError> {
        let mut s = self.lock();
        let stored = s.nodes.get(&n.node_id).map_or(0, |r| r.epoch);
        let epoch = stored.max(at_least) + 1;
        s.nodes
            .insert(n.node_id.clone(), NodeRecord { epoch, ..n.clone() });
        Ok(epoch)
    }

    async fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let mut nodes: Vec<NodeRecord> = self.lock().nodes.values().cloned().collect();
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(nodes)
    }

    async fn write(&self, batch: &[Write]) -> Result<(), StoreError> {
        let mut s = self.lock();
        if s.failing_writes > 0 {
            s.failing_writes -= 1;
            return Err(injected_failure());
        }
        for w in batch {
            s.apply(w);
        }
        Ok(())
    }

    async fn history(&self, session: &SessionRef, limit: u32) -> Result<History, StoreError> {
        let s = self.lock();
        let limit = limit as usize;
        let transitions = s
            .transitions
            .iter()
            .rev()
            .filter(|t| &t.session == session)
            .take(limit)
            .cloned()
            .collect();
        let mut commands: Vec<(usize, &CommandRow)> = s
            .commands
            .iter()
            .enumerate()
            .filter(|(_, c)| &c.session == session)
            .collect();
        // SQLite: ORDER BY issued_at_ms DESC, rowid DESC.
        commands.sort_by(|(ia, a), (ib, b)| (b.issued_at_ms, ib).cmp(&(a.issued_at_ms, ia)));
        Ok(History {
            transitions,
            commands: commands
                .into_iter()
                .take(limit)
                .map(|(_, c)| c.clone())
                .collect(),
        })
    }

    async fn last_states(&self) -> Result<Vec<(SessionRef, String)>, StoreError> {
        let s = self.lock();
        let mut last: HashMap<&SessionRef, &str> = HashMap::new();
        for t in &s.transitions {
            last.insert(&t.session, &t.to);
        }
        Ok(last
            .into_iter()
            .map(|(k, to)| (k.clone(), to.to_owned()))
            .collect())
    }

    async fn last_transitions(&self) -> Result<Vec<TransitionRow>, StoreError> {
        let s = self.lock();
        let mut last: HashMap<&SessionRef, &TransitionRow> = HashMap::new();
        for t in &s.transitions {
            last.insert(&t.session, t);
        }
        Ok(last.into_values().cloned().collect())
    }

    async fn pending_commands(&self) -> Result<Vec<CommandRow>, StoreError> {
        Ok(self
            .lock()
            .commands
            .iter()
            .filter(|c| c.status == super::PENDING)
            .cloned()
            .collect())
    }

    async fn durables(&self) -> Result<Vec<(SessionRef, String)>, StoreError> {
        Ok(self
            .lock()
            .durables
            .iter()
            .map(|(k, d)| (k.clone(), d.clone()))
            .collect())
    }

    async fn incidents(
        &self,
        include_closed: bool,
        limit: u32,
    ) -> Result<Vec<IncidentRow>, StoreError> {
        let mut rows: Vec<IncidentRow> = self
            .lock()
            .incidents
            .values()
            .filter(|i| include_closed || i.closed_ms == 0)
            .cloned()
            .collect();
        // SQLite: ORDER BY closed_ms = 0 DESC, opened_ms DESC.
        rows.sort_by_key(|i| std::cmp::Reverse((i.closed_ms == 0, i.opened_ms)));
        rows.truncate(limit as usize);
        Ok(rows)
    }

    async fn alarms(&self, include_closed: bool, limit: u32) -> Result<Vec<AlarmRow>, StoreError> {
        let mut rows: Vec<AlarmRow> = self
            .lock()
            .alarms
            .values()
            .filter(|a| include_closed || a.state == super::ALARM_PENDING)
            .cloned()
            .collect();
        // SQLite: pending first by due time, then closed ones newest first.
        rows.sort_by(super::alarm_order);
        rows.truncate(limit as usize);
        Ok(rows)
    }

    async fn alarm(&self, id: &str) -> Result<Option<AlarmRow>, StoreError> {
        Ok(self.lock().alarms.get(id).cloned())
    }

    async fn checkpoints(
        &self,
        q: &CheckpointQuery,
        limit: u32,
    ) -> Result<Vec<CheckpointRow>, StoreError> {
        let s = self.lock();
        let mut rows: Vec<(usize, &CheckpointRow)> = s
            .checkpoints
            .iter()
            .enumerate()
            .filter(|(_, c)| q.matches(&c.session))
            .collect();
        // SQLite: ORDER BY taken_ms DESC, rowid DESC.
        rows.sort_by(|(ia, a), (ib, b)| (b.taken_ms, ib).cmp(&(a.taken_ms, ia)));
        Ok(rows
            .into_iter()
            .take(limit as usize)
            .map(|(_, c)| c.clone())
            .collect())
    }

    async fn checkpoint(&self, id: &str) -> Result<Option<CheckpointRow>, StoreError> {
        Ok(self.lock().checkpoints.iter().find(|c| c.id == id).cloned())
    }

    async fn handoffs(&self, q: &HandoffQuery, limit: u32) -> Result<Vec<HandoffRow>, StoreError> {
        let mut rows: Vec<HandoffRow> = self
            .lock()
            .handoffs
            .values()
            .filter(|h| q.matches(h))
            .cloned()
            .collect();
        // SQLite: ORDER BY ended_ms = 0 DESC, started_ms DESC, id DESC.
        rows.sort_by(|a, b| {
            (b.ended_ms == 0, b.started_ms, &b.id).cmp(&(a.ended_ms == 0, a.started_ms, &a.id))
        });
        rows.truncate(limit as usize);
        Ok(rows)
    }

    async fn rate_limits(&self) -> Result<Vec<RateLimitRow>, StoreError> {
        let mut rows: Vec<RateLimitRow> = self.lock().rate_limits.values().cloned().collect();
        // SQLite: ORDER BY scope, at_ms.
        rows.sort_by(|a, b| (&a.scope, a.at_ms).cmp(&(&b.scope, b.at_ms)));
        Ok(rows)
    }
}
