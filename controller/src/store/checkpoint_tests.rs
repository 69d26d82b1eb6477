//! The checkpoint and handoff part of the store's contract, against SQLite (a temporary file),
//! PostgreSQL (when installed) and the in-memory store alike.

use std::sync::Arc;

use super::memory::MemoryStore;
use super::sqlite::SqliteStore;
use super::*;

async fn both(test: &str) -> Vec<(&'static str, Arc<dyn Store>, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("ck.db").display());
    let sqlite: Arc<dyn Store> = Arc::new(SqliteStore::open(&url).await.expect("open sqlite"));
    let mut all = vec![
        ("sqlite", sqlite, Some(dir)),
        (
            "memory",
            Arc::new(MemoryStore::new()) as Arc<dyn Store>,
            None,
        ),
    ];
    if let Some(pg) = super::tests::postgres(test).await {
        all.push(("postgres", pg, None));
    }
    all
}

fn sref(node: &str, name: &str) -> SessionRef {
    SessionRef {
        node_id: node.into(),
        tmux_socket: "/t.sock".into(),
        session_name: name.into(),
    }
}

fn checkpoint(id: &str, s: &SessionRef, taken_ms: i64) -> Write {
    Write::Checkpoint(CheckpointRow {
        id: id.into(),
        session: s.clone(),
        taken_ms,
        trigger: "kill".into(),
        command_id: format!("cmd-{id}"),
        reason: "r".into(),
        data: vec![1, 2, 3, 0, 255],
    })
}

fn handoff(id: &str, s: &SessionRef, started_ms: i64, ended_ms: i64) -> HandoffRow {
    HandoffRow {
        id: id.into(),
        session: s.clone(),
        reason: "stall".into(),
        detail: "restart: escalation".into(),
        checkpoint_id: "ck".into(),
        restart_command_id: "c".into(),
        from_pid: 1,
        from_start: 2,
        to_pid: 0,
        to_start: 0,
        state: if ended_ms == 0 {
            "waiting"
        } else {
            "completed"
        }
        .into(),
        started_ms,
        resumed_ms: 0,
        ended_ms,
        restarts: 1,
        resume_attempts: 0,
        resume_command_id: String::new(),
        message: String::new(),
    }
}

#[tokio::test]
async fn checkpoints_are_stored_once_and_listed_newest_first() {
    for (name, s, _dir) in both("checkpoints").await {
        let a = sref("n1", "a");
        let b = sref("n1", "b");
        let c = sref("n2", "a");
        s.write(&[
            checkpoint("ck-1", &a, 10),
            checkpoint("ck-2", &b, 20),
            checkpoint("ck-3", &a, 30),
            checkpoint("ck-4", &c, 40),
        ])
        .await
        .expect("write");
        // The same id again changes nothing.
        let mut again = checkpoint("ck-1", &a, 99);
        if let Write::Checkpoint(r) = &mut again {
            r.data = vec![9];
        }
        s.write(&[again]).await.expect("write");
        let ids = |rows: Vec<CheckpointRow>| rows.into_iter().map(|r| r.id).collect::<Vec<_>>();
        let all = s
            .checkpoints(&CheckpointQuery::default(), 100)
            .await
            .expect("read");
        assert_eq!(ids(all), ["ck-4", "ck-3", "ck-2", "ck-1"], "{name}");
        let q = CheckpointQuery {
            node_id: "n1".into(),
            session_name: "a".into(),
            tmux_socket: String::new(),
        };
        assert_eq!(
            ids(s.checkpoints(&q, 100).await.expect("read")),
            ["ck-3", "ck-1"],
            "{name}"
        );
        assert_eq!(
            ids(s.checkpoints(&q, 1).await.expect("read")),
            ["ck-3"],
            "{name}"
        );
        let one = s.checkpoint("ck-1").await.expect("read").expect("found");
        assert_eq!(one.data, vec![1, 2, 3, 0, 255], "{name}");
        assert_eq!(
            (one.taken_ms, one.command_id.as_str()),
            (10, "cmd-ck-1"),
            "{name}"
        );
        assert!(
            s.checkpoint("ck-9").await.expect("read").is_none(),
            "{name}"
        );
    }
}

#[tokio::test]
async fn handoffs_are_replaced_and_listed_open_first() {
    for (name, s, _dir) in both("handoffs").await {
        let a = sref("n1", "a");
        let b = sref("n2", "b");
        s.write(&[
            Write::Handoff(handoff("h1", &a, 10, 0)),
            Write::Handoff(handoff("h2", &b, 20, 25)),
            Write::Handoff(handoff("h3", &a, 30, 0)),
        ])
        .await
        .expect("write");
        let mut h1 = handoff("h1", &a, 10, 50);
        h1.state = "completed".into();
        h1.to_pid = 77;
        s.write(&[Write::Handoff(h1.clone())]).await.expect("write");
        let ids = |rows: Vec<HandoffRow>| rows.into_iter().map(|r| r.id).collect::<Vec<_>>();
        let open = s
            .handoffs(&HandoffQuery::default(), 100)
            .await
            .expect("read");
        assert_eq!(ids(open), ["h3"], "{name}");
        let all = HandoffQuery {
            include_ended: true,
            ..HandoffQuery::default()
        };
        let rows = s.handoffs(&all, 100).await.expect("read");
        assert_eq!(rows.iter().find(|h| h.id == "h1"), Some(&h1), "{name}");
        assert_eq!(ids(rows), ["h3", "h2", "h1"], "{name}");
        let of_a = HandoffQuery {
            include_ended: true,
            session: Some(a.clone()),
            ..HandoffQuery::default()
        };
        assert_eq!(
            ids(s.handoffs(&of_a, 100).await.expect("read")),
            ["h3", "h1"],
            "{name}"
        );
        let of_n2 = HandoffQuery {
            include_ended: true,
            node_id: "n2".into(),
            ..HandoffQuery::default()
        };
        assert_eq!(
            ids(s.handoffs(&of_n2, 100).await.expect("read")),
            ["h2"],
            "{name}"
        );
    }
}
