//! Fuzzing of the control-mode reader: whatever bytes the `tmux -C` client prints (a broken
//! server, a hostile session name echoed in a notification, a block cut off mid-line), the
//! reader answers or fails the pending commands and ends when the stream ends, without a panic
//! and in bounded time. The bytes come through a real pipe (`cat` of a file), as they do from
//! tmux.

use std::process::Stdio;
use std::sync::Arc;

use tokio::io::BufReader;
use tokio::sync::{Notify, oneshot};

use super::{PendingState, read_loop};
use crate::tmux::fuzz::harness;

/// Feeds `bytes` to `read_loop` with three commands pending; returns how many got an answer.
fn feed(runtime: &tokio::runtime::Runtime, bytes: &[u8]) -> usize {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), bytes).expect("writing the input");
    runtime.block_on(async {
        let mut child = tokio::process::Command::new("cat")
            .arg(file.path())
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("cat");
        let out = child.stdout.take().expect("piped stdout");
        let pending = Arc::new(std::sync::Mutex::new(PendingState::default()));
        let mut replies = Vec::new();
        for _ in 0..3 {
            let (tx, rx) = oneshot::channel();
            pending.lock().expect("lock").queue.push_back(tx);
            replies.push(rx);
        }
        read_loop(
            BufReader::new(out),
            pending.clone(),
            Arc::new(Notify::new()),
        )
        .await;
        let _ = child.wait().await;
        let p = pending.lock().expect("lock");
        assert!(
            p.closed,
            "the reader marks the client closed when the stream ends"
        );
        assert!(p.queue.is_empty(), "no command is left waiting forever");
        drop(p);
        // Every pending command is answered or dropped (its sender gone): none hangs.
        replies
            .into_iter()
            .filter_map(|mut rx| rx.try_recv().ok())
            .count()
    })
}

#[test]
fn control_mode_output() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // A well-formed answer reaches its command: the fuzz target is not vacuous.
    let answered = feed(
        &runtime,
        b"%begin 1 1 1\nalpha\n%end 1 1 1\n%begin 1 2 0\n%end 1 2 0\n%begin 1 3 1\nx\n%error 1 3 1\n",
    );
    assert_eq!(answered, 2);
    harness::fuzz("control-mode", |bytes| {
        feed(&runtime, bytes);
    });
}
