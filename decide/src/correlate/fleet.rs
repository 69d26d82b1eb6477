//! Provider incidents across controller replicas: the leader's pure count of the rate-limit
//! episodes every replica records for its own nodes' sessions, into at most one open
//! `provider_limit` incident per provider scope. The same rules as [`super::Correlator`]'s
//! (`provider_incident_sessions` sessions limited within `provider_window` open it; it closes
//! when the last of them clears, or `provider_window` after its cooldown ended), over the whole
//! fleet instead of one replica's nodes. The leader applies the [`Step`]s to the store.

use std::collections::BTreeMap;

use argus_shared::ids::SessionRef;
use argus_shared::time::UnixMs;

use crate::policy::Policy;

/// A session in a rate-limit episode, as the replica that owns its node recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Episode {
    pub session: SessionRef,
    /// `provider/account` (see [`super::provider_scope`]).
    pub scope: String,
    /// When the episode started or was last renewed.
    pub at_ms: UnixMs,
    /// The session's cooldown end.
    pub until_ms: UnixMs,
}

/// An open fleet-wide provider incident, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenLimit {
    pub id: String,
    pub scope: String,
    pub sessions: u32,
    /// The fleet-wide cooldown's end.
    pub until_ms: UnixMs,
}

/// What the leader changes in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Opens the provider incident of `scope`.
    Open {
        scope: String,
        sessions: u32,
        until_ms: UnixMs,
        summary: String,
    },
    /// An open incident's sessions or cooldown changed.
    Update {
        id: String,
        sessions: u32,
        until_ms: UnixMs,
        summary: String,
    },
    /// Closes an incident: its sessions' limits cleared, its cooldown is long over, or it is a
    /// second open incident of a scope (opened by a replica before the leader took provider
    /// incidents over).
    Close { id: String },
}

/// The summary of a provider incident (the single controller's words).
pub fn summary(sessions: u32, hosts: usize, scope: &str, until_ms: UnixMs) -> String {
    format!(
        "{sessions} sessions on {hosts} hosts rate limited on {scope}; fleet-wide cooldown until Unix ms {until_ms}"
    )
}

/// One round of the leader: the episodes of every replica and the open provider incidents
/// (oldest first) in, the changes out. Writes nothing when nothing changed.
pub fn provider_limits(
    episodes: &[Episode],
    open: &[OpenLimit],
    now: UnixMs,
    policy: &Policy,
) -> Vec<Step> {
    let window = policy.provider_window.as_millis() as i64;
    let mut by_scope: BTreeMap<&str, Vec<&Episode>> = BTreeMap::new();
    for e in episodes {
        by_scope.entry(e.scope.as_str()).or_default().push(e);
    }
    let mut open_by_scope: BTreeMap<&str, &OpenLimit> = BTreeMap::new();
    let mut out = Vec::new();
    for o in open {
        if open_by_scope.contains_key(o.scope.as_str()) {
            out.push(Step::Close { id: o.id.clone() });
        } else {
            open_by_scope.insert(o.scope.as_str(), o);
        }
    }
    let hosts = |live: &[&Episode]| {
        let mut h: Vec<&str> = live.iter().map(|e| e.session.node_id.as_str()).collect();
        h.sort_unstable();
        h.dedup();
        h.len()
    };
    let latest = |live: &[&Episode]| live.iter().map(|e| e.until_ms).max().unwrap_or(0);
    for (scope, o) in &open_by_scope {
        let live = by_scope.get(scope).map_or(&[][..], Vec::as_slice);
        let until = o.until_ms.max(latest(live));
        if live.is_empty() || now >= until + window {
            out.push(Step::Close { id: o.id.clone() });
            continue;
        }
        let sessions = live.len() as u32;
        if sessions != o.sessions || until != o.until_ms {
            out.push(Step::Update {
                id: o.id.clone(),
                sessions,
                until_ms: until,
                summary: summary(sessions, hosts(live), scope, until),
            });
        }
    }
    for (scope, live) in &by_scope {
        if open_by_scope.contains_key(scope) {
            continue;
        }
        let recent = live.iter().filter(|e| now - e.at_ms < window).count() as u32;
        let until = latest(live);
        if recent >= policy.provider_incident_sessions && now < until + window {
            let sessions = live.len() as u32;
            out.push(Step::Open {
                scope: (*scope).to_owned(),
                sessions,
                until_ms: until,
                summary: summary(sessions, hosts(live), scope, until),
            });
        }
    }
    out
}

/// Episodes nobody will end: their cooldown ended `provider_window` ago (a session that left
/// the fleet while limited). The leader forgets them, as the correlator forgets an expired
/// scope's hits.
pub fn stale(e: &Episode, now: UnixMs, policy: &Policy) -> bool {
    now >= e.until_ms + policy.provider_window.as_millis() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(node: &str, name: &str, scope: &str, at_ms: UnixMs, until_ms: UnixMs) -> Episode {
        Episode {
            session: SessionRef {
                node_id: node.into(),
                tmux_socket: "/s".into(),
                session_name: name.into(),
            },
            scope: scope.into(),
            at_ms,
            until_ms,
        }
    }

    fn open(id: &str, scope: &str, sessions: u32, until_ms: UnixMs) -> OpenLimit {
        OpenLimit {
            id: id.into(),
            scope: scope.into(),
            sessions,
            until_ms,
        }
    }

    #[test]
    fn sessions_of_two_replicas_open_one_incident_per_scope() {
        let p = Policy::default();
        // One limited session per node (each node on another replica): below the threshold
        // alone, at it together.
        let eps = [
            ep("a", "1", "anthropic/team", 1_000, 600_000),
            ep("b", "1", "anthropic/team", 2_000, 900_000),
            ep("b", "2", "openai/", 2_000, 900_000),
        ];
        let steps = provider_limits(&eps, &[], 3_000, &p);
        assert_eq!(
            steps,
            vec![Step::Open {
                scope: "anthropic/team".into(),
                sessions: 2,
                until_ms: 900_000,
                summary: summary(2, 2, "anthropic/team", 900_000),
            }]
        );
        // Once open, an unchanged round changes nothing (no write).
        let o = [open("i1", "anthropic/team", 2, 900_000)];
        assert!(provider_limits(&eps, &o, 4_000, &p).is_empty());
    }

    #[test]
    fn episodes_outside_the_window_do_not_open_one() {
        let p = Policy::default();
        let window = p.provider_window.as_millis() as i64;
        let eps = [
            ep("a", "1", "s/", 0, 10 * window),
            ep("b", "1", "s/", window + 1, 10 * window),
        ];
        assert!(provider_limits(&eps, &[], window + 2, &p).is_empty());
        assert!(matches!(
            &provider_limits(&eps, &[], window - 1, &p)[..],
            [Step::Open { .. }]
        ));
    }

    #[test]
    fn an_open_incident_follows_its_sessions_and_closes_when_they_clear() {
        let p = Policy::default();
        let o = [open("i1", "s/", 2, 900_000)];
        let three = [
            ep("a", "1", "s/", 0, 900_000),
            ep("b", "1", "s/", 0, 900_000),
            ep("b", "2", "s/", 10, 950_000),
        ];
        assert_eq!(
            provider_limits(&three, &o, 100, &p),
            vec![Step::Update {
                id: "i1".into(),
                sessions: 3,
                until_ms: 950_000,
                summary: summary(3, 2, "s/", 950_000),
            }]
        );
        // One left: still open (the cooldown never shrinks).
        let o = [open("i1", "s/", 3, 950_000)];
        let one = [ep("b", "2", "s/", 10, 950_000)];
        assert_eq!(
            provider_limits(&one, &o, 200, &p),
            vec![Step::Update {
                id: "i1".into(),
                sessions: 1,
                until_ms: 950_000,
                summary: summary(1, 1, "s/", 950_000),
            }]
        );
        assert_eq!(
            provider_limits(&[], &o, 300, &p),
            vec![Step::Close { id: "i1".into() }]
        );
    }

    #[test]
    fn a_cooldown_long_over_closes_it_and_its_episodes_are_stale() {
        let p = Policy::default();
        let window = p.provider_window.as_millis() as i64;
        let o = [open("i1", "s/", 2, 1_000)];
        let eps = [ep("a", "1", "s/", 0, 1_000), ep("b", "1", "s/", 0, 1_000)];
        assert!(provider_limits(&eps, &o, 1_000 + window - 1, &p).is_empty());
        assert_eq!(
            provider_limits(&eps, &o, 1_000 + window, &p),
            vec![Step::Close { id: "i1".into() }]
        );
        // Not opened again by the same old episodes, which the leader forgets.
        assert!(provider_limits(&eps, &[], 1_000 + window, &p).is_empty());
        assert!(eps.iter().all(|e| stale(e, 1_000 + window, &p)));
        assert!(!stale(&eps[0], 1_000 + window - 1, &p));
    }

    #[test]
    fn a_second_open_incident_of_a_scope_is_closed() {
        let p = Policy::default();
        let eps = [ep("a", "1", "s/", 0, 9_000), ep("b", "1", "s/", 0, 9_000)];
        let o = [open("old", "s/", 2, 9_000), open("dup", "s/", 1, 9_000)];
        assert_eq!(
            provider_limits(&eps, &o, 100, &p),
            vec![Step::Close { id: "dup".into() }]
        );
    }
}
