//! Test harness for the multi-process tests: private tmux servers, the real binaries started as
//! child processes from typed specs (`spec`; stopped by pid on drop, their logs printed when a
//! test fails), an admin client, and `eventually`, the only way tests wait.

pub mod bench;
pub mod browser;
pub mod cluster;
pub mod fake_controller;
pub mod monitoring;
pub mod postgres;
pub mod process;
pub mod spec;
pub mod sqlite_lock;
pub mod tmux;
pub mod webhook;

pub use process::binary;

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `check` until it returns `Some`, or fails after `deadline` with `what` and the last
/// value seen. Never a fixed sleep: the loop ends as soon as the condition holds.
pub async fn eventually<T, F, Fut>(
    what: &str,
    deadline: Duration,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let start = Instant::now();
    let mut last_err = String::new();
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = format!("{e:#}"),
        }
        if start.elapsed() > deadline {
            anyhow::bail!(
                "timed out after {deadline:?} waiting for {what} (last error: {last_err})"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free loopback port (bound and released; the race is harmless on a test machine).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}
