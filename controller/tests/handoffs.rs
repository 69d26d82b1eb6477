//! In-process tests of handoffs: a restart done (its result carrying the checkpoint) becomes a
//! handoff; the new agent gets one resume message built from the checkpoint once it shows its
//! prompt; the handoff completes on activity, continues through another restart, and fails when
//! the message cannot be delivered. The supervisor against the in-memory store and a node's link
//! (a channel), on a simulated clock.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use argus_controller::dispatch::Origin;
use argus_controller::fleet::{Health, NodeEntry};
use argus_controller::store::{CheckpointQuery, HandoffQuery, HandoffRow};
use argus_controller::supervisor::Supervisor;
use argus_decide::detect::{Input, Observation};
use argus_decide::policy::Policy;
use argus_proto::v1 as pb;
use argus_shared::command::Action;
use argus_shared::ids::{Incarnation, SessionRef};
use argus_shared::profile::Condition;
use argus_shared::time::now_ms;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

type LinkRx = mpsc::Receiver<Result<pb::ControllerMessage, tonic::Status>>;

struct Rig {
    sup: Arc<Supervisor>,
    link: LinkRx,
    stop: CancellationToken,
    now: i64,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn key() -> SessionRef {
    SessionRef {
        node_id: "n1".into(),
        tmux_socket: "/tmp/tmux-test/default".into(),
        session_name: "w".into(),
    }
}

fn obs(pid: u32, condition: Condition, screen: &str) -> Observation {
    Observation {
        pane_id: "%1".into(),
        exit_status: -1,
        agent: Some(Incarnation {
            pid,
            start_time: u64::from(pid),
        }),
        agent_name: "claude".into(),
        profile: "claude".into(),
        screen_hash: screen.into(),
        condition,
        cwd: "/src/app".into(),
        start_command: "claude".into(),
        labels: [("restart".to_owned(), "claude -c".to_owned())]
            .into_iter()
            .collect::<BTreeMap<_, _>>(),
        ..Default::default()
    }
}

fn checkpoint(id: &str, pid: u32) -> pb::Checkpoint {
    pb::Checkpoint {
        id: id.into(),
        tmux_socket: key().tmux_socket,
        session_name: "w".into(),
        taken_at_ms: now_ms(),
        took_ms: 40,
        trigger: "restart".into(),
        cwd: "/src/app".into(),
        agent_name: "claude".into(),
        profile: "claude".into(),
        labels: [("task".to_owned(), "T-42 the parser".to_owned())]
            .into_iter()
            .collect(),
        agent: Some(pb::Incarnation {
            pid,
            start_time: u64::from(pid),
        }),
        screen: vec!["⏺ Editing src/parse.rs".into(), "│ > │".into()],
        git: Some(pb::GitState {
            top_level: "/src/app".into(),
            branch: "feature/x".into(),
            head: "0123456789abcdef".into(),
            head_subject: "first cut".into(),
            files: vec![
                pb::GitFile {
                    path: "src/parse.rs".into(),
                    status: "M".into(),
                    added: 3,
                    removed: 1,
                    ..Default::default()
                },
                pb::GitFile {
                    path: "notes.md".into(),
                    status: "??".into(),
                    added: 1,
                    ..Default::default()
                },
            ],
            files_total: 2,
            insertions: 4,
            deletions: 1,
            saved_commit: "feedbeef".into(),
            saved_ref: format!("refs/argus/checkpoints/w/{id}"),
        }),
        problems: Vec::new(),
    }
}

impl Rig {
    async fn start() -> anyhow::Result<Self> {
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let sup = Supervisor::in_memory(Policy::default(), &tasks, stop.clone()).await?;
        let (tx, link) = mpsc::channel(1024);
        let now = now_ms();
        sup.fleet.attach_node(NodeEntry {
            node_id: "n1".into(),
            hostname: "host".into(),
            agent_version: "test".into(),
            epoch: 1,
            last_seen_ms: now,
            back_ms: now,
            health: Health::Up,
            link: Some(tx),
            stream_id: 1,
            probe_ms: 250,
            synced: true,
        });
        Ok(Self {
            sup,
            link,
            stop,
            now,
        })
    }

    async fn observe(&self, o: Observation) {
        self.sup
            .apply(&key(), Input::Observed(Box::new(o)), self.now)
            .await;
    }

    /// Ticks for 2.5 s, past the quiet time a new agent must show at its prompt before its
    /// resume message; returns the nudges sent meanwhile.
    async fn quiet(&mut self) -> Vec<(String, String)> {
        let mut sent = Vec::new();
        for _ in 0..25 {
            self.tick().await;
            sent.extend(nudges(&self.commands()));
        }
        sent
    }

    async fn tick(&mut self) {
        self.now += 100;
        self.sup.fleet.heard_from("n1", 1, self.now);
        self.sup.tick(self.now).await;
    }

    /// The commands sent to the node so far.
    fn commands(&mut self) -> Vec<pb::Command> {
        let mut out = Vec::new();
        while let Ok(Ok(m)) = self.link.try_recv() {
            if let Some(pb::controller_message::Msg::Command(c)) = m.msg {
                out.push(c);
            }
        }
        out
    }

    /// The policy restarts the session (as the decision core words it) and the node answers
    /// with a checkpoint.
    async fn restarted(&mut self, ckpt: Option<pb::Checkpoint>) -> anyhow::Result<String> {
        let (id, _rx) = self
            .sup
            .dispatch
            .send(
                &key(),
                Action::Restart {
                    command: "claude -c".into(),
                    cwd: "/src/app".into(),
                    labels: BTreeMap::new(),
                    replaces_pane_pid: 0,
                },
                None,
                Origin::Policy,
                "restart: escalation (confirmed still idle)",
            )
            .await?;
        self.answer(&id, pb::CommandStatus::Ok, pb::Delivery::Unspecified, ckpt)
            .await;
        Ok(id)
    }

    async fn answer(
        &mut self,
        id: &str,
        status: pb::CommandStatus,
        delivery: pb::Delivery,
        checkpoint: Option<pb::Checkpoint>,
    ) {
        let result = pb::CommandResult {
            command_id: id.to_owned(),
            status: status as i32,
            message: String::new(),
            output: String::new(),
            delivery: delivery as i32,
            checkpoint,
            ..Default::default()
        };
        self.sup.command_result("n1", result, self.now).await;
    }

    /// The session's handoffs as stored (after the recorder caught up).
    async fn stored(&self) -> anyhow::Result<Vec<HandoffRow>> {
        let q = HandoffQuery {
            include_ended: true,
            ..HandoffQuery::default()
        };
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if self.sup.recorder.backlog().0 == 0 {
                break;
            }
        }
        Ok(self.sup.store.handoffs(&q, 100).await?)
    }
}

fn nudges(cmds: &[pb::Command]) -> Vec<(String, String)> {
    cmds.iter()
        .filter_map(|c| match &c.action {
            Some(pb::command::Action::Nudge(n)) => Some((c.command_id.clone(), n.text.clone())),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_restart_is_handed_over_with_one_resume_message() -> anyhow::Result<()> {
    let mut rig = Rig::start().await?;
    rig.observe(obs(100, Condition::AtPrompt, "a")).await;
    let restart = rig.restarted(Some(checkpoint("ck-1-aa", 100))).await?;
    rig.commands();
    let rows = rig.stored().await?;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let h = &rows[0];
    assert_eq!(
        (
            h.state.as_str(),
            h.reason.as_str(),
            h.checkpoint_id.as_str()
        ),
        ("waiting", "stall", "ck-1-aa")
    );
    assert_eq!(
        (h.from_pid, h.restart_command_id.as_str()),
        (100, restart.as_str())
    );
    // The checkpoint is stored with the restart's command.
    let ck = rig
        .sup
        .store
        .checkpoints(&CheckpointQuery::default(), 10)
        .await?;
    assert_eq!(ck.len(), 1);
    assert_eq!(
        (ck[0].command_id.as_str(), ck[0].trigger.as_str()),
        (restart.as_str(), "restart")
    );

    // The old agent still shows (the probe has not seen the new one): nothing is sent.
    rig.tick().await;
    assert!(nudges(&rig.commands()).is_empty());
    // The new agent boots (busy), then shows its prompt: one resume message.
    rig.observe(obs(200, Condition::Thinking, "boot")).await;
    rig.tick().await;
    assert!(nudges(&rig.commands()).is_empty(), "not before its prompt");
    rig.observe(obs(200, Condition::AtPrompt, "prompt")).await;
    let sent = rig.quiet().await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    let (nudge_id, text) = &sent[0];
    for part in [
        "restarted (stall)",
        "Task: T-42 the parser",
        "Branch: feature/x, last commit 0123456789 \"first cut\"",
        "src/parse.rs (modified), notes.md (new)",
        "refs/argus/checkpoints/w/ck-1-aa",
        "⏺ Editing src/parse.rs",
    ] {
        assert!(text.contains(part), "{part:?} not in {text:?}");
    }
    // Ticks while it is in flight send nothing more.
    rig.tick().await;
    rig.tick().await;
    assert!(nudges(&rig.commands()).is_empty());
    rig.answer(
        nudge_id,
        pb::CommandStatus::Ok,
        pb::Delivery::Delivered,
        None,
    )
    .await;
    rig.tick().await;
    let rows = rig.stored().await?;
    assert_eq!(rows[0].state, "resumed", "{rows:?}");
    assert_eq!((rows[0].to_pid, rows[0].resume_attempts), (200, 1));
    // Still at its prompt a moment later: not yet complete. Then it works.
    rig.tick().await;
    assert_eq!(rig.sup.handoffs.open_count(), 1);
    rig.observe(obs(200, Condition::Thinking, "working")).await;
    rig.tick().await;
    assert_eq!(rig.sup.handoffs.open_count(), 0);
    let rows = rig.stored().await?;
    assert_eq!(rows[0].state, "completed", "{rows:?}");
    assert!(rows[0].ended_ms > 0);
    // Exactly one resume message in all.
    for _ in 0..10 {
        rig.tick().await;
    }
    assert!(nudges(&rig.commands()).is_empty());
    Ok(())
}

#[tokio::test]
async fn a_new_agent_that_dies_continues_the_same_handoff() -> anyhow::Result<()> {
    let mut rig = Rig::start().await?;
    rig.observe(obs(100, Condition::AtPrompt, "a")).await;
    rig.restarted(Some(checkpoint("ck-1-aa", 100))).await?;
    rig.observe(obs(200, Condition::Thinking, "boot")).await;
    rig.tick().await;
    // Restarted again before it ever showed its prompt: one handoff, two restarts, the first
    // checkpoint kept.
    rig.restarted(Some(checkpoint("ck-2-bb", 200))).await?;
    rig.commands();
    let rows = rig.stored().await?;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].restarts, 2);
    assert_eq!(rows[0].checkpoint_id, "ck-1-aa");
    assert_eq!(rows[0].from_pid, 200);
    rig.observe(obs(300, Condition::AtPrompt, "p")).await;
    let sent = rig.quiet().await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(sent[0].1.contains("ck-1-aa"), "{}", sent[0].1);
    Ok(())
}

#[tokio::test]
async fn a_resume_message_never_delivered_fails_the_handoff() -> anyhow::Result<()> {
    let mut rig = Rig::start().await?;
    rig.observe(obs(100, Condition::AtPrompt, "a")).await;
    rig.restarted(None).await?;
    rig.observe(obs(200, Condition::AtPrompt, "p")).await;
    let mut attempts = 0;
    for _ in 0..200 {
        rig.tick().await;
        for (id, text) in nudges(&rig.commands()) {
            attempts += 1;
            // Without a checkpoint the message still reads well.
            assert!(text.contains("restarted (stall)"), "{text}");
            rig.answer(
                &id,
                pb::CommandStatus::Failed,
                pb::Delivery::NotDelivered,
                None,
            )
            .await;
        }
        if rig.sup.handoffs.open_count() == 0 {
            break;
        }
    }
    assert_eq!(attempts, 3);
    let rows = rig.stored().await?;
    assert_eq!(rows[0].state, "failed", "{rows:?}");
    assert!(
        rows[0].message.contains("not delivered in 3 attempts"),
        "{rows:?}"
    );
    Ok(())
}

#[tokio::test]
async fn an_operator_kill_ends_the_open_handoff() -> anyhow::Result<()> {
    let mut rig = Rig::start().await?;
    rig.observe(obs(100, Condition::AtPrompt, "a")).await;
    rig.restarted(None).await?;
    let (kill, _rx) = rig
        .sup
        .dispatch
        .send(
            &key(),
            Action::Kill { grace_ms: 100 },
            None,
            Origin::Admin,
            "kill requested through the admin API",
        )
        .await?;
    rig.answer(
        &kill,
        pb::CommandStatus::Ok,
        pb::Delivery::Unspecified,
        Some(checkpoint("ck-9-cc", 100)),
    )
    .await;
    assert_eq!(rig.sup.handoffs.open_count(), 0);
    let rows = rig.stored().await?;
    assert_eq!(
        (rows[0].state.as_str(), rows[0].message.as_str()),
        ("failed", "the session was killed")
    );
    let ck = rig.sup.store.checkpoint("ck-9-cc").await?.expect("stored");
    assert_eq!(
        (ck.trigger.as_str(), ck.command_id.as_str()),
        ("restart", kill.as_str())
    );
    Ok(())
}

#[tokio::test]
async fn a_program_that_is_not_an_agent_gets_no_resume_message() -> anyhow::Result<()> {
    let mut rig = Rig::start().await?;
    let plain = |pid: u32, screen: &str| Observation {
        profile: "shell".into(),
        agent_name: "node".into(),
        labels: BTreeMap::new(),
        ..obs(pid, Condition::AtPrompt, screen)
    };
    rig.observe(plain(100, "a")).await;
    rig.restarted(None).await?;
    rig.observe(plain(200, "b")).await;
    for _ in 0..5 {
        rig.tick().await;
    }
    assert!(nudges(&rig.commands()).is_empty(), "nothing typed into it");
    let rows = rig.stored().await?;
    assert_eq!(rows[0].state, "resumed", "{rows:?}");
    // Its output moves on: complete.
    rig.now += 2_000;
    rig.observe(plain(200, "c")).await;
    rig.tick().await;
    assert_eq!(rig.stored().await?[0].state, "completed");
    Ok(())
}

#[tokio::test]
async fn a_late_restart_result_still_hands_over() -> anyhow::Result<()> {
    let mut rig = Rig::start().await?;
    rig.observe(obs(100, Condition::AtPrompt, "a")).await;
    let (id, _rx) = rig
        .sup
        .dispatch
        .send(
            &key(),
            Action::Restart {
                command: "claude -c".into(),
                cwd: "/src/app".into(),
                labels: BTreeMap::new(),
                replaces_pane_pid: 0,
            },
            None,
            Origin::Policy,
            "restart: agent died",
        )
        .await?;
    // The checkpoint and the restart outlast the command's deadline: closed as unknown.
    rig.sup.dispatch.expire(now_ms() + 60_000).await;
    rig.stored().await?;
    rig.answer(
        &id,
        pb::CommandStatus::Ok,
        pb::Delivery::Unspecified,
        Some(checkpoint("ck-5-ee", 100)),
    )
    .await;
    let rows = rig.stored().await?;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (rows[0].reason.as_str(), rows[0].restart_command_id.as_str()),
        ("crash", id.as_str())
    );
    let ck = rig.sup.store.checkpoint("ck-5-ee").await?.expect("stored");
    assert_eq!(ck.command_id, id);
    Ok(())
}
