//! Node health from silence, and the share of the fleet that is silent (the controller's
//! self-suspicion). Pure: the supervisor reads the clock and the live fleet.

use argus_shared::state::Health;
use argus_shared::time::UnixMs;

use crate::policy::Policy;

/// A node silent longer than this is no longer counted in the fleet's share of silent nodes:
/// it has been gone long enough to be its own incident, not a sign of the controller's network.
pub const RECENTLY_SEEN_MS: i64 = 300_000;

/// A node's health after `silent_ms` without a message.
pub fn from_silence(silent_ms: i64, policy: &Policy) -> Health {
    if silent_ms >= policy.node_down_after.as_millis() as i64 {
        Health::Down
    } else if silent_ms >= policy.node_suspect_after.as_millis() as i64 {
        Health::Suspect
    } else {
        Health::Up
    }
}

/// Nodes counted for self-suspicion: `(total, silent)` over nodes that are up or were seen
/// within [`RECENTLY_SEEN_MS`], from each node's health and last message time.
pub fn fleet_silence(
    nodes: impl IntoIterator<Item = (Health, UnixMs)>,
    now: UnixMs,
) -> (usize, usize) {
    let (mut total, mut silent) = (0, 0);
    for (health, last_seen_ms) in nodes {
        if health == Health::Up {
            total += 1;
        } else if now - last_seen_ms < RECENTLY_SEEN_MS {
            total += 1;
            silent += 1;
        }
    }
    (total, silent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_turns_a_node_suspect_then_down() {
        let p = Policy::default();
        assert_eq!(from_silence(5_999, &p), Health::Up);
        assert_eq!(from_silence(6_000, &p), Health::Suspect);
        assert_eq!(from_silence(15_000, &p), Health::Down);
    }

    #[test]
    fn long_gone_nodes_do_not_count_towards_self_suspicion() {
        let now = 1_000_000;
        let nodes = [
            (Health::Up, now),
            (Health::Down, now - 20_000),
            (Health::Down, now - RECENTLY_SEEN_MS - 1),
        ];
        assert_eq!(fleet_silence(nodes, now), (2, 1));
    }
}
