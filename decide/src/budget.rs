//! The fleet-wide budget of kills and restarts: a token bucket refilled continuously. The core
//! reserves a token at the moment it decides a destructive command, through the [`Gate`] in its
//! context, so a command it returns is never held back or dropped afterwards.

use argus_shared::time::UnixMs;

/// Where destructive commands take their token.
pub trait Gate {
    /// Takes one token at `now`; false when the budget is spent.
    fn reserve(&self, now: UnixMs) -> bool;
}

/// No limit (tests, and the default context).
#[derive(Debug, Clone, Copy, Default)]
pub struct Unlimited;

impl Gate for Unlimited {
    fn reserve(&self, _now: UnixMs) -> bool {
        true
    }
}

/// A token bucket of `per_minute` tokens, refilled continuously.
#[derive(Debug, Clone)]
pub struct Budget {
    tokens: f64,
    last_ms: UnixMs,
}

impl Budget {
    /// A full bucket at `now`.
    pub fn new(per_minute: u32, now: UnixMs) -> Self {
        Self {
            tokens: f64::from(per_minute),
            last_ms: now,
        }
    }

    fn refill(&mut self, now: UnixMs, per_minute: u32) {
        let cap = f64::from(per_minute);
        let elapsed = (now - self.last_ms).max(0) as f64;
        self.tokens = (self.tokens + elapsed * cap / 60_000.0).min(cap);
        self.last_ms = self.last_ms.max(now);
    }

    /// Takes one token when there is one.
    pub fn take(&mut self, now: UnixMs, per_minute: u32) -> bool {
        self.refill(now, per_minute);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_empties_and_refills_with_time() {
        let mut b = Budget::new(2, 0);
        assert!(b.take(0, 2));
        assert!(b.take(0, 2));
        assert!(!b.take(0, 2), "two per minute");
        assert!(!b.take(29_000, 2), "a token takes 30 s to come back");
        assert!(b.take(30_000, 2));
        // A clock going backwards never adds tokens.
        assert!(!b.take(10_000, 2));
    }
}
