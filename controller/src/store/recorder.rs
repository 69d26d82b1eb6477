//! The write-behind recorder: transitions, commands, durable state and incidents are handed to
//! it without waiting ([`Recorder::record`] never blocks), and one writer task commits them to
//! the store in batches, in order.
//!
//! When the store fails (a full disk, a lock held elsewhere) the writer retries with backoff and
//! reports the failure ([`Recorder::health`]); the queue grows in memory up to [`SPILL_AT`]
//! writes, then spills to the journal beside the database (appended and fsync'd per batch), and
//! is read back from there once the store answers again. When the journal cannot be written
//! either (the same full disk), writes stay in memory up to [`MEMORY_LIMIT`]; past it new writes
//! are dropped and counted, loudly. At shutdown the queue drains into the store, or into the
//! journal, which the next start replays before serving.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use argus_shared::time::now_ms;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::journal::{Journal, JournalError};
use super::{Store, Write};

/// Writes per transaction.
const BATCH: usize = 512;
/// Writes held in memory while the store fails before they spill to the journal.
pub const SPILL_AT: usize = 16_384;
/// Writes held in memory when the journal cannot be written either; past it new writes are
/// dropped (counted and logged). About 0.5 GB at ~500 bytes a write.
pub const MEMORY_LIMIT: usize = 1_000_000;
/// One store write may take this long before it counts as failed (SQLite's busy timeout is 5 s).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Backoff between failed writes.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// At shutdown, how long a working store may take to drain the queue before the rest is
/// journaled.
const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// How long start-up replay of the journal may take before the writer carries on with it.
const REPLAY_GRACE: Duration = Duration::from_secs(30);

/// Whether the store takes writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreHealth {
    /// The last write was committed.
    Ok,
    /// Writes fail since `since_ms`; `cause` is the last error.
    Failing { since_ms: i64, cause: String },
}

impl StoreHealth {
    /// True while writes fail.
    pub fn is_failing(&self) -> bool {
        matches!(self, Self::Failing { .. })
    }
}

/// Write-behind queue in front of the store.
#[derive(Clone)]
pub struct Recorder {
    shared: Arc<Shared>,
}

struct Shared {
    queue: Mutex<VecDeque<Write>>,
    wake: Notify,
    /// The queue reached [`SPILL_AT`]: a writer waiting out a failure spills at once.
    spill: Notify,
    health: watch::Sender<StoreHealth>,
    /// Writes in the journal, not yet applied.
    journaled: AtomicUsize,
    /// Writes dropped past [`MEMORY_LIMIT`].
    dropped: AtomicU64,
    /// Last time a drop was logged (ms), to keep the log readable.
    dropped_logged_ms: AtomicU64,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, VecDeque<Write>> {
        // Pushing and draining cannot panic halfway: a poisoned lock still guards a whole queue.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_ok(&self) {
        self.health.send_if_modified(|h| {
            if h.is_failing() {
                tracing::info!("store recovered: writes are committed again");
                *h = StoreHealth::Ok;
                true
            } else {
                false
            }
        });
    }

    fn set_failing(&self, cause: String) {
        self.health.send_if_modified(|h| match h {
            StoreHealth::Ok => {
                tracing::error!(%cause, "store failing: writes are queued (and journaled) until it recovers; supervision goes on");
                *h = StoreHealth::Failing {
                    since_ms: now_ms(),
                    cause,
                };
                true
            }
            StoreHealth::Failing { cause: c, .. } if *c != cause => {
                *c = cause;
                true
            }
            StoreHealth::Failing { .. } => false,
        });
    }
}

impl Recorder {
    /// Queues a write. Never waits: the caller (ingest, the supervisor, dispatch) goes on at
    /// once whatever the store does.
    pub fn record(&self, w: Write) {
        let mut q = self.shared.queue();
        if q.len() >= MEMORY_LIMIT {
            drop(q);
            let n = self.shared.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            let now = now_ms() as u64;
            let last = self.shared.dropped_logged_ms.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= 1000 {
                self.shared.dropped_logged_ms.store(now, Ordering::Relaxed);
                tracing::error!(
                    dropped = n,
                    limit = MEMORY_LIMIT,
                    "store and journal both failing and {MEMORY_LIMIT} writes held in memory: writes are being lost"
                );
            }
            return;
        }
        q.push_back(w);
        let full = q.len() == SPILL_AT;
        drop(q);
        self.shared.wake.notify_one();
        if full {
            self.shared.spill.notify_one();
        }
    }

    /// The store's health as the writer sees it; changes are announced.
    pub fn health(&self) -> watch::Receiver<StoreHealth> {
        self.shared.health.subscribe()
    }

    /// Writes waiting: (in memory, in the journal, dropped since start).
    pub fn backlog(&self) -> (usize, usize, u64) {
        (
            self.shared.queue().len(),
            self.shared.journaled.load(Ordering::Relaxed),
            self.shared.dropped.load(Ordering::Relaxed),
        )
    }

    /// A line for people: what the store is doing.
    pub fn describe(&self) -> String {
        let (queued, journaled, dropped) = self.backlog();
        let health = self.shared.health.borrow().clone();
        let mut s = match health {
            StoreHealth::Ok => "store ok".to_owned(),
            StoreHealth::Failing { since_ms, cause } => format!(
                "store failing for {} s: {cause}",
                (now_ms() - since_ms).max(0) / 1000
            ),
        };
        s.push_str(&format!(
            "; {queued} writes queued in memory, {journaled} in the journal"
        ));
        if dropped > 0 {
            s.push_str(&format!(", {dropped} lost (memory limit)"));
        }
        s
    }

    /// Starts the writer without a journal (`memory://`, tests): a failing store keeps writes in
    /// memory. It drains the queue before it ends on `shutdown`.
    pub fn start(store: Arc<dyn Store>, shutdown: CancellationToken, tasks: &TaskTracker) -> Self {
        Self::spawn(store, None, shutdown, tasks)
    }

    /// Opens the journal at `journal`, replays what an earlier run left in it (for up to 30 s:
    /// a store still failing leaves the rest to the writer), then starts the writer.
    pub async fn start_journaled(
        store: Arc<dyn Store>,
        journal: &Path,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<Self, JournalError> {
        let path = journal.to_owned();
        let (journal, problems) = blocking(move || Journal::open(&path)).await?;
        for p in &problems {
            tracing::error!("{p}");
        }
        let journal = Arc::new(Mutex::new(journal));
        let pending = lock(&journal).pending();
        if pending > 0 {
            let started = Instant::now();
            tracing::info!(writes = pending, journal = %lock(&journal).path().display(), "replaying the journal of an earlier run");
            while started.elapsed() < REPLAY_GRACE {
                match replay_one(&store, &journal).await {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "journal replay paused: the writer retries");
                        break;
                    }
                }
            }
            let left = lock(&journal).pending();
            tracing::info!(
                replayed = pending - left,
                left,
                took_ms = started.elapsed().as_millis() as u64,
                "journal replayed"
            );
        }
        Ok(Self::spawn(store, Some(journal), shutdown, tasks))
    }

    fn spawn(
        store: Arc<dyn Store>,
        journal: Option<Arc<Mutex<Journal>>>,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> Self {
        let (health, _) = watch::channel(StoreHealth::Ok);
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            spill: Notify::new(),
            health,
            journaled: AtomicUsize::new(journal.as_ref().map_or(0, |j| lock(j).pending())),
            dropped: AtomicU64::new(0),
            dropped_logged_ms: AtomicU64::new(0),
        });
        let writer = Writer {
            shared: shared.clone(),
            store,
            journal,
            shutdown,
        };
        tasks.spawn(writer.run());
        Self { shared }
    }
}

fn lock(j: &Mutex<Journal>) -> MutexGuard<'_, Journal> {
    j.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs blocking journal I/O off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, JournalError> + Send + 'static,
) -> Result<T, JournalError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// Applies one batch from the front of the journal; returns how many writes it applied.
async fn replay_one(
    store: &Arc<dyn Store>,
    journal: &Arc<Mutex<Journal>>,
) -> Result<usize, String> {
    let j = journal.clone();
    let (batch, pos) = blocking(move || lock(&j).peek(BATCH))
        .await
        .map_err(|e| e.to_string())?;
    if batch.is_empty() {
        let j = journal.clone();
        blocking(move || lock(&j).consume(pos))
            .await
            .map_err(|e| e.to_string())?;
        return Ok(0);
    }
    match tokio::time::timeout(WRITE_TIMEOUT, store.write(&batch)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(crate::server::message_chain(&e)),
        Err(_) => return Err(format!("no answer within {WRITE_TIMEOUT:?}")),
    }
    let j = journal.clone();
    blocking(move || lock(&j).consume(pos))
        .await
        .map_err(|e| e.to_string())?;
    Ok(batch.len())
}

// === the writer task ===

struct Writer {
    shared: Arc<Shared>,
    store: Arc<dyn Store>,
    journal: Option<Arc<Mutex<Journal>>>,
    shutdown: CancellationToken,
}

/// The batch in hand, not yet committed.
enum Held {
    None,
    /// Taken from the memory queue: older than anything still queued.
    Memory(Vec<Write>),
    /// Read from the journal's front (still in the journal until consumed).
    Journal(Vec<Write>, super::journal::Position),
}

impl Writer {
    fn journal_pending(&self) -> usize {
        self.journal.as_ref().map_or(0, |j| lock(j).pending())
    }

    async fn run(self) {
        let mut held = Held::None;
        let mut backoff = RETRY_MIN;
        let mut drain_deadline: Option<Instant> = None;
        let mut journal_broken = false;
        loop {
            if self.shutdown.is_cancelled() && drain_deadline.is_none() {
                drain_deadline = Some(Instant::now() + DRAIN_GRACE);
            }
            if drain_deadline.is_some_and(|d| Instant::now() >= d) {
                // A working but slow store had its grace: the rest goes to the journal.
                if !journal_broken {
                    held = self.spill(held).await;
                }
                self.give_up(held);
                return;
            }
            if matches!(held, Held::None) {
                held = match self.next_batch(journal_broken).await {
                    Ok(h) => h,
                    Err(e) => {
                        tracing::error!(error = %e, "journal unreadable; its writes stay in it for the next start");
                        journal_broken = true;
                        self.take_memory()
                    }
                };
            }
            let batch = match &held {
                Held::None => {
                    if drain_deadline.is_some() {
                        break;
                    }
                    tokio::select! {
                        () = self.shared.wake.notified() => {}
                        () = self.shutdown.cancelled() => {}
                    }
                    continue;
                }
                Held::Memory(b) | Held::Journal(b, _) => b,
            };
            let started = Instant::now();
            let result = match tokio::time::timeout(WRITE_TIMEOUT, self.store.write(batch)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(crate::server::message_chain(&e)),
                Err(_) => Err(format!("the store did not answer within {WRITE_TIMEOUT:?}")),
            };
            crate::metrics::store_write(batch.len(), started.elapsed());
            match result {
                Ok(()) => {
                    if let Held::Journal(_, pos) = std::mem::replace(&mut held, Held::None)
                        && let Some(j) = self.journal.clone()
                    {
                        let consumed = blocking(move || lock(&j).consume(pos)).await;
                        if let Err(e) = consumed {
                            // The batch is committed but still in the journal: a replay would
                            // apply it again. Stop reading the journal; the next start does.
                            tracing::error!(error = %e, "journal could not be advanced");
                            journal_broken = true;
                        }
                        self.shared
                            .journaled
                            .store(self.journal_pending(), Ordering::Relaxed);
                    }
                    held = Held::None;
                    backoff = RETRY_MIN;
                    self.shared.set_ok();
                }
                Err(cause) => {
                    let n = match &held {
                        Held::Memory(b) | Held::Journal(b, _) => b.len(),
                        Held::None => 0,
                    };
                    tracing::warn!(error = %cause, writes = n, "store write failed; retrying");
                    self.shared.set_failing(cause);
                    let queued = self.shared.queue().len();
                    // Shutting down with the store failing: journal the rest now rather than
                    // retry until the process is killed.
                    let stopping = drain_deadline.is_some();
                    if !journal_broken && self.journal.is_some() && (queued >= SPILL_AT || stopping)
                    {
                        held = self.spill(held).await;
                    }
                    if stopping {
                        self.give_up(held);
                        return;
                    }
                    // Wait out the backoff; a queue that fills meanwhile spills at once.
                    let retry_at = tokio::time::Instant::now() + backoff;
                    loop {
                        tokio::select! {
                            () = tokio::time::sleep_until(retry_at) => break,
                            () = self.shutdown.cancelled(), if drain_deadline.is_none() => break,
                            () = self.shared.spill.notified() => {
                                if !journal_broken && self.journal.is_some() {
                                    held = self.spill(held).await;
                                }
                            }
                        }
                    }
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// The next batch: the journal's front while it holds anything (it is older than memory),
    /// else the memory queue's. A journal that failed (`skip_journal`) is left to the next start.
    async fn next_batch(&self, skip_journal: bool) -> Result<Held, JournalError> {
        if let Some(j) = &self.journal
            && !skip_journal
            && lock(j).pending() > 0
        {
            let j = j.clone();
            let (batch, pos) = blocking(move || lock(&j).peek(BATCH)).await?;
            if batch.is_empty() {
                let j = self.journal.clone();
                if let Some(j) = j {
                    blocking(move || lock(&j).consume(pos)).await?;
                }
                return Ok(self.take_memory());
            }
            return Ok(Held::Journal(batch, pos));
        }
        Ok(self.take_memory())
    }

    fn take_memory(&self) -> Held {
        let mut q = self.shared.queue();
        let n = q.len().min(BATCH);
        if n == 0 {
            Held::None
        } else {
            Held::Memory(q.drain(..n).collect())
        }
    }

    /// Moves the batch in hand (when it came from memory) and the whole memory queue to the end
    /// of the journal, oldest first. On failure everything goes back where it was.
    async fn spill(&self, held: Held) -> Held {
        let Some(j) = self.journal.clone() else {
            return held;
        };
        let (mut writes, held) = match held {
            Held::Memory(b) => (b, Held::None),
            other => (Vec::new(), other),
        };
        let from_memory = writes.len();
        writes.extend(self.shared.queue().drain(..));
        if writes.is_empty() {
            return held;
        }
        let (back, appended) = blocking(move || {
            let r = lock(&j).append(&writes);
            Ok((writes, r))
        })
        .await
        .unwrap_or_else(|e: JournalError| (Vec::new(), Err(e)));
        match appended {
            Ok(()) => {
                tracing::warn!(
                    writes = back.len(),
                    journaled = self.journal_pending(),
                    "store failing: writes spilled to the journal"
                );
                self.shared
                    .journaled
                    .store(self.journal_pending(), Ordering::Relaxed);
                held
            }
            Err(e) => {
                tracing::error!(error = %e, writes = back.len(), limit = MEMORY_LIMIT, "journal cannot be written either: writes stay in memory");
                let mut back = back;
                let rest = back.split_off(from_memory);
                let mut q = self.shared.queue();
                for w in rest.into_iter().rev() {
                    q.push_front(w);
                }
                drop(q);
                if back.is_empty() {
                    held
                } else {
                    Held::Memory(back)
                }
            }
        }
    }

    /// Shutdown with the store still failing and nothing more journaled: say what is lost.
    fn give_up(&self, held: Held) {
        let in_hand = match held {
            Held::Memory(b) => b.len(),
            _ => 0,
        };
        let lost = in_hand + self.shared.queue().len();
        let journaled = self.journal_pending();
        if lost > 0 {
            tracing::error!(
                writes = lost,
                "store and journal unavailable at shutdown: writes lost"
            );
        }
        if journaled > 0 {
            tracing::warn!(
                writes = journaled,
                "store unavailable at shutdown: writes kept in the journal for the next start"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use crate::store::{SessionRef, TransitionRow};

    fn transition(i: i64) -> Write {
        Write::Transition(TransitionRow {
            session: SessionRef {
                node_id: "n1".into(),
                tmux_socket: "/s".into(),
                session_name: format!("w{}", i % 7),
            },
            at_ms: i,
            from: "idle".into(),
            to: "working".into(),
            reason: "r".into(),
        })
    }

    async fn rows(store: &MemoryStore) -> Vec<i64> {
        let mut out = Vec::new();
        for k in 0..7 {
            let h = store
                .history(
                    &SessionRef {
                        node_id: "n1".into(),
                        tmux_socket: "/s".into(),
                        session_name: format!("w{k}"),
                    },
                    u32::MAX,
                )
                .await
                .expect("history");
            out.extend(h.transitions.iter().map(|t| t.at_ms));
        }
        out.sort_unstable();
        out
    }

    async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
        let start = Instant::now();
        while !f() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "timed out: {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_failing_store_spills_to_the_journal_and_loses_nothing_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.db.journal");
        let store = Arc::new(MemoryStore::new());
        let tasks = TaskTracker::new();
        let stop = CancellationToken::new();
        let r = Recorder::start_journaled(store.clone(), &path, stop.clone(), &tasks)
            .await
            .expect("start");
        let mut health = r.health();
        store.fail_writes(u32::MAX);
        let n = (SPILL_AT * 2 + 100) as i64;
        for i in 0..n {
            r.record(transition(i));
        }
        health
            .wait_for(StoreHealth::is_failing)
            .await
            .expect("failing");
        wait_for("a spill", || r.backlog().1 > 0).await;
        store.fail_writes(0);
        wait_for("the backlog to drain", || {
            let (q, j, _) = r.backlog();
            q == 0 && j == 0
        })
        .await;
        health.wait_for(|h| !h.is_failing()).await.expect("ok");
        stop.cancel();
        tasks.close();
        tasks.wait().await;
        assert_eq!(rows(&store).await, (0..n).collect::<Vec<_>>());
        assert_eq!(std::fs::metadata(&path).expect("meta").len(), 0);
    }

    #[tokio::test]
    async fn shutdown_with_a_failing_store_journals_and_the_next_start_replays() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.db.journal");
        let failing = Arc::new(MemoryStore::new());
        failing.fail_writes(u32::MAX);
        let tasks = TaskTracker::new();
        let stop = CancellationToken::new();
        let r = Recorder::start_journaled(failing.clone(), &path, stop.clone(), &tasks)
            .await
            .expect("start");
        for i in 0..1000 {
            r.record(transition(i));
        }
        r.health()
            .wait_for(StoreHealth::is_failing)
            .await
            .expect("failing");
        stop.cancel();
        tasks.close();
        tokio::time::timeout(Duration::from_secs(10), tasks.wait())
            .await
            .expect("the writer stops promptly");
        assert!(std::fs::metadata(&path).expect("meta").len() > 0);

        let fresh = Arc::new(MemoryStore::new());
        let tasks = TaskTracker::new();
        let r = Recorder::start_journaled(fresh.clone(), &path, CancellationToken::new(), &tasks)
            .await
            .expect("restart");
        // Replayed before start_journaled returns.
        assert_eq!(rows(&fresh).await, (0..1000).collect::<Vec<_>>());
        assert_eq!(r.backlog(), (0, 0, 0));
    }
}

/// Throughput of the recorder into SQLite and into PostgreSQL (a private server, see
/// `store::test_postgres`), side by side, with the store working and with it failing (every
/// write spilled to the journal, then replayed): `cargo test -p argus-controller --lib
/// recorder_throughput -- --ignored --nocapture --test-threads 1`. Figures in
/// docs/performance.md.
#[cfg(test)]
mod throughput {
    use super::*;
    use crate::store::postgres::PgStore;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{
        CommandRow, History, IncidentRow, NodeRecord, SessionRef, StoreError, TransitionRow,
    };
    use std::sync::atomic::AtomicBool;

    /// A store that refuses writes while `failing`.
    struct Flaky {
        inner: Arc<dyn Store>,
        failing: AtomicBool,
    }

    #[async_trait::async_trait]
    impl Store for Flaky {
        async fn attach_node(&self, n: &NodeRecord, at_least: u64) -> Result<u64, StoreError> {
            self.inner.attach_node(n, at_least).await
        }
        async fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
            self.inner.nodes().await
        }
        async fn write(&self, batch: &[Write]) -> Result<(), StoreError> {
            if self.failing.load(Ordering::Relaxed) {
                return Err(StoreError::Timeout {
                    op: "write batch",
                    after: Duration::ZERO,
                });
            }
            self.inner.write(batch).await
        }
        async fn history(&self, s: &SessionRef, limit: u32) -> Result<History, StoreError> {
            self.inner.history(s, limit).await
        }
        async fn last_states(&self) -> Result<Vec<(SessionRef, String)>, StoreError> {
            self.inner.last_states().await
        }
        async fn durables(&self) -> Result<Vec<(SessionRef, String)>, StoreError> {
            self.inner.durables().await
        }
        async fn pending_commands(&self) -> Result<Vec<CommandRow>, StoreError> {
            self.inner.pending_commands().await
        }
        async fn incidents(&self, c: bool, l: u32) -> Result<Vec<IncidentRow>, StoreError> {
            self.inner.incidents(c, l).await
        }
    }

    fn write(i: usize) -> Write {
        Write::Transition(TransitionRow {
            session: SessionRef {
                node_id: format!("n{}", i % 50),
                tmux_socket: "/tmp/tmux-1000/default".into(),
                session_name: format!("agent-{}", i % 997),
            },
            at_ms: i as i64,
            from: "working".into(),
            to: "idle".into(),
            reason: "no screen change, output or CPU for 3 probe intervals".into(),
        })
    }

    async fn drained(r: &Recorder) -> Duration {
        let start = Instant::now();
        loop {
            let (q, j, _) = r.backlog();
            if q == 0 && j == 0 && !r.health().borrow().is_failing() {
                return start.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a measurement; run by hand"]
    async fn recorder_throughput() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("a.db").display());
        let sqlite: Arc<dyn Store> = Arc::new(SqliteStore::open(&url).await.expect("open"));
        println!("== SQLite (a file, WAL, synchronous=NORMAL)");
        measure(sqlite, dir.path()).await;
        let pg_url = tokio::task::spawn_blocking(|| {
            crate::store::test_postgres::shared("recorder_throughput")
                .map(|s| s.create_database("throughput"))
        })
        .await
        .expect("create database");
        if let Some(pg_url) = pg_url {
            let pg: Arc<dyn Store> = Arc::new(PgStore::open(&pg_url).await.expect("open"));
            println!(
                "== PostgreSQL (loopback TCP, {})",
                if std::env::var_os("ARGUS_PG_DURABLE").is_some() {
                    "fsync and synchronous_commit on"
                } else {
                    "fsync=off, synchronous_commit=off"
                }
            );
            measure(pg, dir.path()).await;
            let pool = sqlx::PgPool::connect(&pg_url).await.expect("connect");
            let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM transitions")
                .fetch_one(&pool)
                .await
                .expect("count");
            assert_eq!(rows, 200_000, "every write of both phases committed");
        }
        let pool = sqlx::SqlitePool::connect(&url).await.expect("connect");
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM transitions")
            .fetch_one(&pool)
            .await
            .expect("count");
        assert_eq!(rows, 200_000, "every write of both phases committed");
    }

    async fn measure(inner: Arc<dyn Store>, dir: &std::path::Path) {
        const N: usize = 100_000;
        let store = Arc::new(Flaky {
            inner,
            failing: AtomicBool::new(false),
        });
        let tasks = TaskTracker::new();
        let stop = CancellationToken::new();
        let journal = dir.join(format!("{}.journal", now_ms()));
        let r = Recorder::start_journaled(store.clone(), &journal, stop.clone(), &tasks)
            .await
            .expect("start");

        // 1. The store works: record N, wait until all are committed.
        let start = Instant::now();
        for i in 0..N {
            r.record(write(i));
        }
        let record = start.elapsed();
        drained(&r).await;
        let healthy = start.elapsed();

        // 2. The store fails: record N; they spill to the journal.
        store.failing.store(true, Ordering::Relaxed);
        let start = Instant::now();
        for i in N..2 * N {
            r.record(write(i));
        }
        let record_failing = start.elapsed();
        // Everything but the last partial spill is in the journal.
        while r.backlog().1 < N - SPILL_AT {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let spilled = start.elapsed();
        let journaled = r.backlog().1;

        // 3. The store recovers: everything (journal, then memory) is committed.
        store.failing.store(false, Ordering::Relaxed);
        let recovered = drained(&r).await;

        let per_s = |n: usize, d: Duration| n as f64 / d.as_secs_f64();
        println!(
            "record() calls, store working:  {:>10.0}/s",
            per_s(N, record)
        );
        println!(
            "record() calls, store failing:  {:>10.0}/s",
            per_s(N, record_failing)
        );
        println!(
            "committed, store working:       {:>10.0} writes/s ({N} in {healthy:?})",
            per_s(N, healthy)
        );
        println!(
            "spilled to the journal:         {:>10.0} writes/s ({journaled} in {spilled:?})",
            per_s(journaled, spilled)
        );
        println!(
            "replayed after recovery:        {:>10.0} writes/s ({N} in {recovered:?})",
            per_s(N, recovered)
        );
        stop.cancel();
        tasks.close();
        tasks.wait().await;
    }
}
