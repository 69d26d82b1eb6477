//! A bounded buffer of events waiting for the controller. While the controller is away the node
//! agent keeps probing and buffering; when the buffer is full the oldest events are dropped
//! (and counted), never the process.
//!
//! Events have no acknowledgement: one sent on a stream that broke afterwards (a controller
//! killed before it read it, a link cut in a partition) is lost with the stream. So the exits
//! of the last [`RECENT_MS`] are kept apart and sent again after every snapshot
//! ([`EventBuffer::resync`]). The controller takes an exit twice without harm: an agent exit
//! counts only for the agent it names, a pane's only while the pane still runs that process.

use std::collections::VecDeque;
use std::sync::Mutex;

use argus_proto::v1 as pb;
use tokio::sync::Notify;

/// How long exits are kept to be sent again at the next attach, in ms.
pub const RECENT_MS: i64 = 60_000;
/// At most this many of them.
const RECENT_MAX: usize = 256;

/// Shared between the prober (producer) and the link (consumer).
pub struct EventBuffer {
    queue: Mutex<VecDeque<pb::Event>>,
    /// The exits of the last [`RECENT_MS`], sent or not.
    recent: Mutex<VecDeque<pb::Event>>,
    capacity: usize,
    dropped: std::sync::atomic::AtomicU64,
    notify: Notify,
}

impl EventBuffer {
    /// An empty buffer holding at most `capacity` events.
    pub fn new(capacity: usize) -> Self {
        Self {
            queue: Mutex::new(VecDeque::new()),
            recent: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            dropped: Default::default(),
            notify: Notify::new(),
        }
    }

    /// Adds an event, dropping the oldest one when full.
    pub fn push(&self, event: pb::Event) {
        if is_exit(&event)
            && let Ok(mut r) = self.recent.lock()
        {
            if r.len() == RECENT_MAX {
                r.pop_front();
            }
            r.push_back(event.clone());
        }
        if let Ok(mut q) = self.queue.lock() {
            if q.len() == self.capacity {
                q.pop_front();
                self.dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            q.push_back(event);
        }
        self.notify.notify_one();
    }

    /// Takes every buffered event.
    pub fn drain(&self) -> Vec<pb::Event> {
        self.queue
            .lock()
            .map(|mut q| q.drain(..).collect())
            .unwrap_or_default()
    }

    /// What a new stream gets after its snapshot: every buffered event, and the exits of the
    /// last [`RECENT_MS`] before `now_ms` that the previous streams may have lost, oldest first.
    pub fn resync(&self, now_ms: i64) -> Vec<pb::Event> {
        let mut out = self.drain();
        if let Ok(mut r) = self.recent.lock() {
            while r.front().is_some_and(|e| e.at_ms < now_ms - RECENT_MS) {
                r.pop_front();
            }
            let again: Vec<pb::Event> = r.iter().filter(|e| !out.contains(e)).cloned().collect();
            out.extend(again);
        }
        out.sort_by_key(|e| e.at_ms);
        out
    }

    /// Resolves when an event was pushed since the last call.
    pub async fn wait(&self) {
        self.notify.notified().await
    }

    /// How many events were dropped because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// An agent's or a pane's process exit.
fn is_exit(e: &pb::Event) -> bool {
    matches!(
        pb::EventKind::try_from(e.kind),
        Ok(pb::EventKind::AgentExited | pb::EventKind::PaneDied)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_oldest_when_full() {
        let b = EventBuffer::new(2);
        for i in 0..3 {
            b.push(pb::Event {
                at_ms: i,
                ..Default::default()
            });
        }
        let got: Vec<i64> = b.drain().iter().map(|e| e.at_ms).collect();
        assert_eq!(got, vec![1, 2]);
        assert_eq!(b.dropped(), 1);
        assert!(b.drain().is_empty());
    }

    #[test]
    fn recent_exits_are_sent_again_after_every_snapshot() {
        let b = EventBuffer::new(16);
        let event = |kind: pb::EventKind, at_ms: i64| pb::Event {
            kind: kind as i32,
            session_name: "s".into(),
            at_ms,
            ..Default::default()
        };
        b.push(event(pb::EventKind::AgentExited, 1_000));
        b.push(event(pb::EventKind::GuardRestored, 2_000));
        b.push(event(pb::EventKind::PaneDied, 3_000));
        // Sent on a stream that then broke.
        assert_eq!(b.drain().len(), 3);
        b.push(event(pb::EventKind::AgentExited, 50_000));
        // The next stream: the new exit once, and the earlier exits again (not the rest).
        let at: Vec<i64> = b.resync(60_000).iter().map(|e| e.at_ms).collect();
        assert_eq!(at, vec![1_000, 3_000, 50_000]);
        // A minute on, the first two are too old to matter.
        let at: Vec<i64> = b.resync(62_000).iter().map(|e| e.at_ms).collect();
        assert_eq!(at, vec![3_000, 50_000]);
        let at: Vec<i64> = b.resync(63_001).iter().map(|e| e.at_ms).collect();
        assert_eq!(at, vec![50_000]);
    }
}
