//! The readers a restarted controller and the command audit rely on, on every backend: the last
//! transition of each session with its time, sessions found by name, pending commands, and late
//! results recorded only over a pending or controller-closed row of the same node.
//! (SQLite, the in-memory store and PostgreSQL.)

use std::sync::Arc;

use super::memory::MemoryStore;
use super::sqlite::SqliteStore;
use super::*;

async fn backends(test: &str) -> (Vec<Arc<dyn Store>>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("readers.db").display());
    let sqlite: Arc<dyn Store> = Arc::new(SqliteStore::open(&url).await.expect("open sqlite"));
    let memory: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let mut all = vec![sqlite, memory];
    // PostgreSQL too, when installed.
    all.extend(super::tests::postgres(test).await);
    (all, dir)
}

fn sref(node: &str, socket: &str, name: &str) -> SessionRef {
    SessionRef {
        node_id: node.into(),
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

fn command(id: &str, s: &SessionRef, status: &str) -> Write {
    Write::CommandIssued(CommandRow {
        command_id: id.into(),
        session: s.clone(),
        epoch: 1,
        action: "kill".into(),
        origin: "admin".into(),
        reason: "test".into(),
        issued_at_ms: 10,
        status: status.into(),
        result_message: String::new(),
        finished_at_ms: 0,
    })
}

fn late(id: &str, node: &str) -> Write {
    Write::CommandLate {
        command_id: id.into(),
        node_id: node.into(),
        status: "COMMAND_STATUS_OK".into(),
        message: "done".into(),
        at_ms: 99,
    }
}

#[tokio::test]
async fn last_transitions_carry_their_time_and_sessions_are_found_by_name() {
    let (stores, _dir) = backends("readers_1").await;
    for s in stores {
        let a = sref("n1", "/a", "work");
        let b = sref("n1", "/b", "work");
        let other = sref("n2", "/a", "work");
        s.write(&[
            transition(&a, 1, "working"),
            transition(&a, 5, "dead"),
            transition(&b, 3, "working"),
            transition(&other, 4, "stalled"),
        ])
        .await
        .expect("write");
        let mut last = s.last_transitions().await.expect("last");
        last.sort_by_key(|t| t.at_ms);
        let got: Vec<(i64, &str)> = last.iter().map(|t| (t.at_ms, t.to.as_str())).collect();
        assert_eq!(got, [(3, "working"), (4, "stalled"), (5, "dead")]);
        let mut named = s.sessions_named("n1", "work").await.expect("named");
        named.sort_by(|x, y| x.session.tmux_socket.cmp(&y.session.tmux_socket));
        assert_eq!(named.len(), 2);
        assert_eq!((named[0].at_ms, named[0].to.as_str()), (5, "dead"));
        assert!(
            s.sessions_named("n1", "nope")
                .await
                .expect("named")
                .is_empty()
        );
        let typed = s.recorded_sessions().await.expect("typed");
        assert!(typed.rows.contains(&(a.clone(), (SessionState::Dead, 5))));
    }
}

#[tokio::test]
async fn late_results_replace_only_pending_or_closed_rows_of_their_node() {
    let (stores, _dir) = backends("readers_2").await;
    for s in stores {
        let k = sref("n1", "/a", "work");
        s.write(&[
            command("pending", &k, PENDING),
            command("closed", &k, "COMMAND_STATUS_UNKNOWN"),
            command("answered", &k, "COMMAND_STATUS_FAILED"),
            command("foreign", &k, "COMMAND_STATUS_UNKNOWN"),
        ])
        .await
        .expect("write");
        let pending = s.pending_commands().await.expect("pending");
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].command_id, "pending");
        s.write(&[
            late("pending", "n1"),
            late("closed", "n1"),
            late("answered", "n1"),
            late("foreign", "n2"),
            late("never-issued", "n1"),
        ])
        .await
        .expect("write");
        let h = s.history(&k, 10).await.expect("history");
        let row = |id: &str| {
            h.commands
                .iter()
                .find(|c| c.command_id == id)
                .expect("row")
                .clone()
        };
        assert_eq!(row("pending").status, "COMMAND_STATUS_OK");
        assert!(
            row("pending")
                .result_message
                .contains("previous controller")
        );
        assert_eq!(row("closed").status, "COMMAND_STATUS_OK");
        assert_eq!(
            row("closed").result_message,
            "arrived late, after the controller closed it as unknown: done"
        );
        assert_eq!(row("closed").finished_at_ms, 99);
        assert_eq!(row("answered").status, "COMMAND_STATUS_FAILED");
        assert_eq!(row("foreign").status, "COMMAND_STATUS_UNKNOWN");
        assert!(s.pending_commands().await.expect("pending").is_empty());
    }
}
