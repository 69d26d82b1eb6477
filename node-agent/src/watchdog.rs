//! systemd's notify protocol for both binaries (`Type=notify`, `WatchdogSec=`): `READY=1` once
//! serving, then `WATCHDOG=1` every half of `WATCHDOG_USEC` while the loop that proves the
//! process is alive (the probe loop, the controller's tick) keeps beating, and `STOPPING=1` at
//! shutdown. Outside systemd (no `NOTIFY_SOCKET`) every call is a no-op.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Beats of the loop that proves liveness: the watchdog is pinged only when it moved.
#[derive(Debug, Clone, Default)]
pub struct Heartbeat(Arc<AtomicU64>);

impl Heartbeat {
    /// One round of the loop completed.
    pub fn beat(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Set when the node agent runs inside the controller (`--local`): the controller's own tick is
/// then what proves the process alive, and the embedded agent leaves the protocol to it.
static EMBEDDED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Marks this process's node agent as embedded in the controller (before it starts).
pub fn embed() {
    EMBEDDED.store(true, Ordering::Relaxed);
}

/// True when the node agent runs inside the controller.
pub fn embedded() -> bool {
    EMBEDDED.load(Ordering::Relaxed)
}

/// Tells systemd the service is ready (`READY=1`).
pub fn ready() {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
}

/// Tells systemd the service is stopping (`STOPPING=1`).
pub fn stopping() {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
}

/// When systemd's watchdog is on, pings it every half of its timeout as long as `beat` moved
/// since the last ping; a loop that hangs stops the pings, and systemd restarts the service.
/// `beat_every` is how often the loop beats: a loop slower than the ping period is reported.
pub fn watch(
    tasks: &TaskTracker,
    beat: Heartbeat,
    beat_every: Duration,
    stop: CancellationToken,
) -> Option<Duration> {
    let timeout = sd_notify::watchdog_enabled()?;
    let period = timeout / 2;
    if beat_every >= period {
        tracing::warn!(
            ?beat_every,
            ?timeout,
            "the loop the watchdog follows beats no faster than half of WatchdogSec: \
             raise WatchdogSec"
        );
    }
    tasks.spawn(async move {
        let mut seen = beat.count();
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = t.tick() => {}
            }
            let now = beat.count();
            if now == seen {
                tracing::warn!(
                    ?period,
                    "no heartbeat for one watchdog period: not pinging systemd"
                );
                continue;
            }
            seen = now;
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
        }
    });
    Some(period)
}
