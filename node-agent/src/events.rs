//! A bounded buffer of events waiting for the controller. While the controller is away the node
//! agent keeps probing and buffering; when the buffer is full the oldest events are dropped
//! (and counted), never the process.

use std::collections::VecDeque;
use std::sync::Mutex;

use argus_proto::v1 as pb;
use tokio::sync::Notify;

/// Shared between the prober (producer) and the link (consumer).
pub struct EventBuffer {
    queue: Mutex<VecDeque<pb::Event>>,
    capacity: usize,
    dropped: std::sync::atomic::AtomicU64,
    notify: Notify,
}

impl EventBuffer {
    /// An empty buffer holding at most `capacity` events.
    pub fn new(capacity: usize) -> Self {
        Self {
            queue: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            dropped: Default::default(),
            notify: Notify::new(),
        }
    }

    /// Adds an event, dropping the oldest one when full.
    pub fn push(&self, event: pb::Event) {
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

    /// Resolves when an event was pushed since the last call.
    pub async fn wait(&self) {
        self.notify.notified().await
    }

    /// How many events were dropped because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }
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
}
