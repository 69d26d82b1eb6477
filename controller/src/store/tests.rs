//! One test suite for every backend: each test below runs against SQLite (a temporary file),
//! PostgreSQL (a database of its own on a private server, see `test_postgres`) and the in-memory
//! store, so that the three keep the same contract.

use std::sync::Arc;
use std::time::Duration;

use argus_shared::state::SessionState;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::memory::MemoryStore;
use super::sqlite::SqliteStore;
use super::*;

/// A backend under test; the temporary directory (SQLite only) lives as long as the store.
struct Backend {
    store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
}

async fn sqlite() -> Backend {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("suite.db").display());
    let store = Arc::new(SqliteStore::open(&url).await.expect("open sqlite"));
    Backend {
        store,
        _dir: Some(dir),
    }
}

/// A database of its own on the test binary's private PostgreSQL server; `None` (after a loud
/// notice) only when PostgreSQL is not installed.
pub(super) async fn postgres(test: &str) -> Option<Arc<dyn Store>> {
    let url = tokio::task::spawn_blocking({
        let test = test.to_owned();
        move || Some(super::test_postgres::shared(&test)?.create_database(&test))
    })
    .await
    .expect("create database")?;
    Some(Arc::new(
        super::postgres::PgStore::open(&url)
            .await
            .expect("open postgres"),
    ))
}

async fn memory() -> Backend {
    Backend {
        store: open("memory://").await.expect("open memory"),
        _dir: None,
    }
}

/// Runs each named test against every backend: `sqlite::NAME`, `postgres::NAME` and
/// `memory::NAME`.
macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let b = super::sqlite().await;
                    super::$name(&b.store).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(s) = super::postgres(stringify!($name)).await else { return };
                    super::$name(&s).await;
                }
            )*
        }
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    let b = super::memory().await;
                    super::$name(&b.store).await;
                }
            )*
        }
    };
}

suite!(
    epochs_grow_above_stored_and_remembered,
    nodes_are_listed_with_their_latest_attach,
    history_is_per_session_newest_first_and_limited,
    commands_are_recorded_once_and_finished,
    last_states_are_per_session,
    durables_replace_the_previous_one,
    incidents_open_first_then_newest,
    unreadable_rows_are_reported_by_session,
    recorder_writes_everything_before_it_stops,
    alarms_pending_first_and_closed_once,
    a_nodes_sessions_are_read_alone,
    rate_limit_episodes_are_replaced_and_forgotten,
);

fn node(id: &str, host: &str) -> NodeRecord {
    NodeRecord {
        node_id: id.into(),
        epoch: 0,
        hostname: host.into(),
        agent_version: "v".into(),
        boot_id: "b".into(),
        last_attach_ms: 1,
    }
}

fn sref(socket: &str, name: &str) -> SessionRef {
    SessionRef {
        node_id: "n1".into(),
        tmux_socket: socket.into(),
        session_name: name.into(),
    }
}

fn transition(s: &SessionRef, at_ms: i64, to: &str) -> Write {
    Write::Transition(TransitionRow {
        session: s.clone(),
        at_ms,
        from: "booting".into(),
        to: to.into(),
        reason: format!("to {to}"),
    })
}

fn command(id: &str, s: &SessionRef, issued_at_ms: i64) -> CommandRow {
    CommandRow {
        command_id: id.into(),
        session: s.clone(),
        epoch: 3,
        action: "nudge".into(),
        origin: "admin".into(),
        reason: "test".into(),
        issued_at_ms,
        status: "COMMAND_STATUS_UNSPECIFIED".into(),
        result_message: String::new(),
        finished_at_ms: 0,
    }
}

fn incident(id: &str, opened_ms: i64, closed_ms: i64) -> IncidentRow {
    IncidentRow {
        id: id.into(),
        kind: "host_silent".into(),
        scope: "n1".into(),
        opened_ms,
        closed_ms,
        acked_ms: 0,
        acked_by: String::new(),
        summary: format!("incident {id}"),
        sessions: 2,
        until_ms: 0,
    }
}

async fn epochs_grow_above_stored_and_remembered(s: &Arc<dyn Store>) {
    assert_eq!(s.attach_node(&node("n1", "h"), 0).await.expect("attach"), 1);
    assert_eq!(s.attach_node(&node("n1", "h"), 0).await.expect("attach"), 2);
    // The node agent remembers a higher epoch (the database was replaced): go above it.
    assert_eq!(
        s.attach_node(&node("n1", "h"), 10).await.expect("attach"),
        11
    );
    // A remembered epoch below the stored one changes nothing.
    assert_eq!(
        s.attach_node(&node("n1", "h"), 5).await.expect("attach"),
        12
    );
    // Epochs are per node.
    assert_eq!(s.attach_node(&node("n2", "h"), 0).await.expect("attach"), 1);
}

async fn nodes_are_listed_with_their_latest_attach(s: &Arc<dyn Store>) {
    s.attach_node(&node("n2", "old"), 0).await.expect("attach");
    s.attach_node(&node("n1", "h1"), 0).await.expect("attach");
    let mut again = node("n2", "new");
    again.last_attach_ms = 7;
    s.attach_node(&again, 0).await.expect("attach");
    let nodes = s.nodes().await.expect("nodes");
    let ids: Vec<&str> = nodes.iter().map(|n| n.node_id.as_str()).collect();
    assert_eq!(ids, ["n1", "n2"]);
    assert_eq!(nodes[1].hostname, "new");
    assert_eq!(nodes[1].epoch, 2);
    assert_eq!(nodes[1].last_attach_ms, 7);
}

async fn history_is_per_session_newest_first_and_limited(s: &Arc<dyn Store>) {
    let a = sref("/s1", "a");
    // Same name on another tmux server: a different session.
    let a2 = sref("/s2", "a");
    s.write(&[
        transition(&a, 1, "working"),
        transition(&a2, 2, "dead"),
        transition(&a, 3, "stalled"),
        transition(&a, 4, "working"),
        Write::CommandIssued(command("c1", &a, 5)),
        Write::CommandIssued(command("c2", &a, 6)),
        Write::CommandIssued(command("c3", &a2, 7)),
    ])
    .await
    .expect("write");
    let h = s.history(&a, 10).await.expect("history");
    let to: Vec<&str> = h.transitions.iter().map(|t| t.to.as_str()).collect();
    assert_eq!(to, ["working", "stalled", "working"]);
    let ids: Vec<&str> = h.commands.iter().map(|c| c.command_id.as_str()).collect();
    assert_eq!(ids, ["c2", "c1"]);
    let h = s.history(&a, 2).await.expect("history");
    assert_eq!(h.transitions.len(), 2);
    assert_eq!(h.transitions[0].at_ms, 4);
    assert_eq!(h.commands.len(), 2);
    let h = s.history(&a2, 10).await.expect("history");
    assert_eq!(h.transitions.len(), 1);
    assert_eq!(h.commands[0].command_id, "c3");
    let none = s.history(&sref("/s1", "x"), 10).await.expect("history");
    assert!(none.transitions.is_empty() && none.commands.is_empty());
}

async fn commands_are_recorded_once_and_finished(s: &Arc<dyn Store>) {
    let a = sref("/s", "a");
    let mut dup = command("c1", &a, 5);
    dup.reason = "a second issue of the same id".into();
    s.write(&[
        Write::CommandIssued(command("c1", &a, 5)),
        Write::CommandIssued(dup),
        Write::CommandFinished {
            command_id: "c1".into(),
            status: "COMMAND_STATUS_OK".into(),
            message: "done".into(),
            at_ms: 6,
        },
        // A result for a command never recorded changes nothing.
        Write::CommandFinished {
            command_id: "unknown".into(),
            status: "COMMAND_STATUS_OK".into(),
            message: String::new(),
            at_ms: 6,
        },
    ])
    .await
    .expect("write");
    let h = s.history(&a, 10).await.expect("history");
    assert_eq!(h.commands.len(), 1);
    let c = &h.commands[0];
    assert_eq!(c.reason, "test");
    assert_eq!(c.status, "COMMAND_STATUS_OK");
    assert_eq!(c.result_message, "done");
    assert_eq!(c.finished_at_ms, 6);
    assert_eq!(c.epoch, 3);
}

async fn last_states_are_per_session(s: &Arc<dyn Store>) {
    s.write(&[
        transition(&sref("/s", "a"), 1, "working"),
        transition(&sref("/s", "a"), 2, "stalled"),
        transition(&sref("/s", "b"), 3, "dead"),
        transition(&sref("/t", "a"), 4, "completed"),
    ])
    .await
    .expect("write");
    let mut last = s.last_states().await.expect("last states");
    last.sort();
    assert_eq!(
        last,
        vec![
            (sref("/s", "a"), "stalled".to_owned()),
            (sref("/s", "b"), "dead".to_owned()),
            (sref("/t", "a"), "completed".to_owned()),
        ]
    );
}

async fn durables_replace_the_previous_one(s: &Arc<dyn Store>) {
    let durable = |name: &str, data: &str, at_ms| Write::Durable {
        session: sref("/s", name),
        data: data.into(),
        at_ms,
    };
    s.write(&[durable("a", r#"{"v":1}"#, 1), durable("b", r#"{"v":2}"#, 2)])
        .await
        .expect("write");
    s.write(&[durable("a", r#"{"v":3}"#, 3)])
        .await
        .expect("write");
    let mut rows = s.durables().await.expect("durables");
    rows.sort();
    assert_eq!(
        rows,
        vec![
            (sref("/s", "a"), r#"{"v":3}"#.to_owned()),
            (sref("/s", "b"), r#"{"v":2}"#.to_owned()),
        ]
    );
}

async fn incidents_open_first_then_newest(s: &Arc<dyn Store>) {
    s.write(&[
        Write::Incident(incident("old-open", 1, 0)),
        Write::Incident(incident("closed", 5, 6)),
        Write::Incident(incident("new-open", 3, 0)),
        Write::Incident(incident("acked", 2, 0)),
    ])
    .await
    .expect("write");
    // Replacing an incident keeps one row with the new content.
    let mut acked = incident("acked", 2, 0);
    acked.acked_ms = 9;
    acked.acked_by = "alice".into();
    s.write(&[Write::Incident(acked)]).await.expect("write");
    let ids = |rows: Vec<IncidentRow>| rows.into_iter().map(|i| i.id).collect::<Vec<_>>();
    let open = s.incidents(false, 10).await.expect("incidents");
    assert_eq!(
        open.iter().find(|i| i.id == "acked").map(|i| i.acked_ms),
        Some(9)
    );
    assert_eq!(ids(open), ["new-open", "acked", "old-open"]);
    let all = s.incidents(true, 10).await.expect("incidents");
    assert_eq!(ids(all), ["new-open", "acked", "old-open", "closed"]);
    let two = s.incidents(true, 2).await.expect("incidents");
    assert_eq!(ids(two), ["new-open", "acked"]);
}

#[derive(Debug, PartialEq, serde::Deserialize)]
struct Data {
    v: u32,
}

async fn unreadable_rows_are_reported_by_session(s: &Arc<dyn Store>) {
    s.write(&[
        transition(&sref("/s", "good"), 1, "working"),
        transition(&sref("/s", "bad"), 2, "levitating"),
        Write::Durable {
            session: sref("/s", "good"),
            data: r#"{"v":1}"#.into(),
            at_ms: 1,
        },
        Write::Durable {
            session: sref("/s", "bad"),
            data: "{not json".into(),
            at_ms: 1,
        },
    ])
    .await
    .expect("write");

    let states = s.recorded_states().await.expect("states");
    assert_eq!(
        states.rows,
        vec![(sref("/s", "good"), SessionState::Working)]
    );
    assert_eq!(states.unreadable.len(), 1);
    let e = &states.unreadable[0];
    assert_eq!(e.session(), &sref("/s", "bad"));
    assert!(matches!(e, UnreadableRow::State { state, .. } if state == "levitating"));
    assert!(e.to_string().contains("\"bad\""), "{e}");

    let durables = s.recorded_durables::<Data>().await.expect("durables");
    assert_eq!(durables.rows, vec![(sref("/s", "good"), Data { v: 1 })]);
    let e = &durables.unreadable[0];
    assert_eq!(e.session(), &sref("/s", "bad"));
    // The parse error is kept as the source, not flattened into the message.
    assert!(std::error::Error::source(e).is_some(), "{e:?}");
    assert_eq!(durables.reported("policy state").len(), 1);
}

async fn recorder_writes_everything_before_it_stops(s: &Arc<dyn Store>) {
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let recorder = Recorder::start(s.clone(), stop.clone(), &tasks);
    for i in 0..100 {
        recorder.record(transition(&sref("/s", "a"), i, "working"));
    }
    stop.cancel();
    tasks.close();
    tokio::time::timeout(Duration::from_secs(10), tasks.wait())
        .await
        .expect("the recorder stops");
    let h = s.history(&sref("/s", "a"), 1000).await.expect("history");
    assert_eq!(h.transitions.len(), 100);
}

/// A store that fails for a while loses nothing: the recorder retries.
#[tokio::test]
async fn recorder_retries_a_failing_store() {
    let memory = Arc::new(MemoryStore::new());
    memory.fail_writes(2);
    let store: Arc<dyn Store> = memory.clone();
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let recorder = Recorder::start(store.clone(), stop.clone(), &tasks);
    recorder.record(transition(&sref("/s", "a"), 1, "working"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let h = store.history(&sref("/s", "a"), 10).await.expect("history");
        if h.transitions.len() == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the write never landed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    tasks.close();
    tasks.wait().await;
}

#[tokio::test]
async fn unsupported_urls_are_refused() {
    let e = open("mysql://x").await.err().expect("refused");
    assert!(matches!(e, StoreError::Unsupported(_)), "{e}");
}

fn alarm(id: &str, due_ms: i64) -> AlarmRow {
    AlarmRow {
        id: id.into(),
        session: SessionRef {
            node_id: "n1".into(),
            tmux_socket: "/s".into(),
            session_name: "w".into(),
        },
        note: "check the CI run".into(),
        origin: "self".into(),
        created_ms: 1,
        due_ms,
        state: ALARM_PENDING.into(),
        closed_ms: 0,
        command_id: String::new(),
        message: String::new(),
    }
}

async fn alarms_pending_first_and_closed_once(s: &Arc<dyn Store>) {
    let close = |id: &str, state: &str, at_ms: i64| Write::AlarmClosed {
        id: id.into(),
        state: state.into(),
        at_ms,
        command_id: format!("c-{id}-{at_ms}"),
        message: state.into(),
    };
    s.write(&[
        Write::AlarmScheduled(alarm("a", 30)),
        Write::AlarmScheduled(alarm("b", 10)),
        Write::AlarmScheduled(alarm("c", 20)),
        Write::AlarmScheduled(alarm("d", 5)),
        // The same id again changes nothing.
        Write::AlarmScheduled(alarm("b", 99)),
    ])
    .await
    .expect("schedule");
    s.write(&[close("c", "delivered", 40), close("d", "cancelled", 41)])
        .await
        .expect("close");
    // A closed alarm stays as it was closed.
    s.write(&[close("c", "cancelled", 50)])
        .await
        .expect("close again");
    let pending: Vec<String> = s
        .alarms(false, 100)
        .await
        .expect("alarms")
        .into_iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(pending, ["b", "a"]);
    let all = s.alarms(true, 100).await.expect("alarms");
    let ids: Vec<&str> = all.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, ["b", "a", "d", "c"]);
    assert_eq!(all[0].due_ms, 10);
    let c = s.alarm("c").await.expect("alarm").expect("stored");
    assert_eq!(
        (c.state.as_str(), c.closed_ms, c.command_id.as_str()),
        ("delivered", 40, "c-c-40")
    );
    assert_eq!(s.alarms(true, 1).await.expect("alarms").len(), 1);
    assert!(s.alarm("zz").await.expect("alarm").is_none());
}

/// A replica taking one node over reads that node's sessions only.
async fn a_nodes_sessions_are_read_alone(s: &Arc<dyn Store>) {
    let mine = sref("/s", "a");
    let other = SessionRef {
        node_id: "n2".into(),
        ..sref("/s", "a")
    };
    let durable = |session: &SessionRef, data: &str| Write::Durable {
        session: session.clone(),
        data: data.into(),
        at_ms: 1,
    };
    s.write(&[
        transition(&mine, 1, "working"),
        transition(&mine, 2, "stalled"),
        transition(&other, 3, "dead"),
        durable(&mine, r#"{"v":1}"#),
        durable(&other, r#"{"v":2}"#),
    ])
    .await
    .expect("write");
    assert_eq!(
        s.node_sessions("n1").await.expect("sessions"),
        vec![(mine.clone(), (SessionState::Stalled, 2))]
    );
    assert_eq!(
        s.node_durable_states::<Data>("n1").await.expect("durables"),
        vec![(mine, Data { v: 1 })]
    );
    assert!(s.node_sessions("n3").await.expect("none").is_empty());
}

/// Replicas record each session's rate-limit episode for the leader: a renewal replaces it, its
/// end forgets it (and forgetting one not stored is no error).
async fn rate_limit_episodes_are_replaced_and_forgotten(s: &Arc<dyn Store>) {
    let (a, b) = (sref("/s", "a"), sref("/s", "b"));
    let row = |session: &SessionRef, at_ms: i64, until_ms: i64| RateLimitRow {
        session: session.clone(),
        scope: "anthropic/team".into(),
        at_ms,
        until_ms,
    };
    s.write(&[
        Write::RateLimit(row(&a, 1, 100)),
        Write::RateLimit(row(&b, 2, 200)),
        Write::RateLimit(row(&a, 3, 300)),
        Write::RateLimitOver {
            session: sref("/s", "never"),
        },
    ])
    .await
    .expect("write");
    assert_eq!(
        s.rate_limits().await.expect("read"),
        vec![row(&b, 2, 200), row(&a, 3, 300)]
    );
    s.write(&[Write::RateLimitOver { session: b }])
        .await
        .expect("write");
    assert_eq!(s.rate_limits().await.expect("read"), vec![row(&a, 3, 300)]);
}
