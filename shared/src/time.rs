//! Wall-clock helpers. Decision code never reads the clock itself: it takes `now` as an argument,
//! and only the I/O edges call [`now_ms`].

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub type UnixMs = i64;

/// The current wall-clock time in Unix milliseconds.
pub fn now_ms() -> UnixMs {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Seconds east of UTC of this host's local time zone right now (used to read wall-clock reset
/// times such as "resets 3pm" off an agent's screen).
pub fn local_utc_offset_secs() -> i32 {
    chrono::Local::now().offset().local_minus_utc()
}
