//! Correlation: causes before symptoms. Findings are grouped by failure domain (host,
//! provider/account, the controller itself) into incidents, and the incidents gate what
//! per-session decisions may do: a silent host's sessions get no actions, a provider incident
//! sets a fleet-wide cooldown, a mass death holds a host's restarts, and when much of the fleet
//! goes silent at once the controller suspects its own network and freezes every destructive
//! action. Pure: the supervisor feeds signals and carries out the [`Change`]s.

pub mod fleet;

use std::collections::{HashMap, VecDeque};

use argus_shared::time::UnixMs;

use crate::policy::Policy;
use argus_shared::ids::SessionRef;
use argus_shared::state::Health;

/// What kind of root cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IncidentKind {
    /// A node agent stopped talking (suspect after 6 s, down after 15 s).
    HostSilent,
    /// Several agents died on one host within seconds.
    MassDeath,
    /// Several sessions of one provider/account are rate limited.
    ProviderLimit,
    /// A large share of the fleet went silent at once: probably the controller's own network.
    SelfSuspect,
    /// The controller's store refuses writes (full disk, lock): they are queued and journaled.
    StoreFailing,
    /// A session's quality gate failed its last attempt (or said NOT_READY): a person must look.
    GateFailed,
}

impl IncidentKind {
    /// Lower-case name for the store and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HostSilent => "host_silent",
            Self::MassDeath => "mass_death",
            Self::ProviderLimit => "provider_limit",
            Self::SelfSuspect => "self_suspect",
            Self::StoreFailing => "store_failing",
            Self::GateFailed => "gate_failed",
        }
    }

    /// Parses [`IncidentKind::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "host_silent" => Self::HostSilent,
            "mass_death" => Self::MassDeath,
            "provider_limit" => Self::ProviderLimit,
            "self_suspect" => Self::SelfSuspect,
            "store_failing" => Self::StoreFailing,
            "gate_failed" => Self::GateFailed,
            _ => return None,
        })
    }
}

/// One root cause.
#[derive(Debug, Clone, PartialEq)]
pub struct Incident {
    pub id: String,
    pub kind: IncidentKind,
    /// The failure domain: a node id, `provider/account`, or `controller`.
    pub scope: String,
    pub opened_ms: UnixMs,
    pub closed_ms: Option<UnixMs>,
    pub acked_ms: Option<UnixMs>,
    pub acked_by: String,
    pub summary: String,
    /// Sessions affected.
    pub sessions: u32,
    /// Provider cooldown end, or mass-death hold end (Unix ms); 0 when not applicable.
    pub until_ms: UnixMs,
    /// Last time people were notified.
    pub notified_ms: UnixMs,
}

/// What changed, for the supervisor to record, announce and send to webhooks.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Opened(Incident),
    /// Still open; notify again (repeats are limited by `notify_repeat`).
    Reminder(Incident),
    Closed(Incident),
}

/// Incident bookkeeping for the whole fleet.
#[derive(Debug, Default)]
pub struct Correlator {
    open: HashMap<(IncidentKind, String), Incident>,
    /// Rate-limited sessions per provider scope: (session, seen at, cooldown end).
    provider_hits: HashMap<String, Vec<(SessionRef, UnixMs, UnixMs)>>,
    deaths: HashMap<String, VecDeque<(UnixMs, SessionRef)>>,
    prefix: String,
    next: u64,
}

/// The provider scope of a session's labels: `provider/account` (account may be empty).
pub fn provider_scope(provider: Option<&str>, account: Option<&str>) -> Option<String> {
    provider.map(|p| format!("{p}/{}", account.unwrap_or("")))
}

impl Correlator {
    /// An empty correlator whose incident ids start with `prefix`.
    pub fn new(prefix: String) -> Self {
        Self {
            prefix,
            ..Self::default()
        }
    }

    /// Takes back incidents that were open when the controller stopped.
    pub fn restore(&mut self, incidents: Vec<Incident>) {
        for i in incidents.into_iter().filter(|i| i.closed_ms.is_none()) {
            self.open.insert((i.kind, i.scope.clone()), i);
        }
    }

    fn open(&mut self, kind: IncidentKind, scope: &str, now: UnixMs, summary: String) -> Change {
        self.next += 1;
        let i = Incident {
            id: format!("{}-{}", self.prefix, self.next),
            kind,
            scope: scope.to_owned(),
            opened_ms: now,
            closed_ms: None,
            acked_ms: None,
            acked_by: String::new(),
            summary,
            sessions: 0,
            until_ms: 0,
            notified_ms: now,
        };
        self.open.insert((kind, scope.to_owned()), i.clone());
        Change::Opened(i)
    }

    fn close(&mut self, kind: IncidentKind, scope: &str, now: UnixMs) -> Option<Change> {
        let mut i = self.open.remove(&(kind, scope.to_owned()))?;
        i.closed_ms = Some(now);
        Some(Change::Closed(i))
    }

    /// A session entered a rate-limit cooldown ending at `until`.
    pub fn rate_limited(
        &mut self,
        key: &SessionRef,
        scope: &str,
        until: UnixMs,
        now: UnixMs,
        policy: &Policy,
    ) -> Vec<Change> {
        let window = policy.provider_window.as_millis() as i64;
        let hits = self.provider_hits.entry(scope.to_owned()).or_default();
        hits.retain(|(k, at, _)| k != key && now - at < window);
        hits.push((key.clone(), now, until));
        let sessions = hits.len() as u32;
        let hosts = {
            let mut h: Vec<&str> = hits.iter().map(|(k, _, _)| k.node_id.as_str()).collect();
            h.sort_unstable();
            h.dedup();
            h.len()
        };
        let latest = hits.iter().map(|(_, _, u)| *u).max().unwrap_or(until);
        let mut out = Vec::new();
        let k = (IncidentKind::ProviderLimit, scope.to_owned());
        if !self.open.contains_key(&k) && sessions >= policy.provider_incident_sessions {
            out.push(self.open(IncidentKind::ProviderLimit, scope, now, String::new()));
        }
        if let Some(i) = self.open.get_mut(&k) {
            i.sessions = sessions;
            i.until_ms = i.until_ms.max(latest);
            i.summary = format!(
                "{sessions} sessions on {hosts} hosts rate limited on {scope}; fleet-wide cooldown until Unix ms {}",
                i.until_ms
            );
            if let Some(Change::Opened(o)) = out.last_mut() {
                *o = i.clone();
            }
        }
        out
    }

    /// A session's rate limit is over.
    pub fn rate_cleared(&mut self, key: &SessionRef, scope: &str, now: UnixMs) -> Vec<Change> {
        let Some(hits) = self.provider_hits.get_mut(scope) else {
            return Vec::new();
        };
        hits.retain(|(k, _, _)| k != key);
        if hits.is_empty() {
            self.provider_hits.remove(scope);
            return self
                .close(IncidentKind::ProviderLimit, scope, now)
                .into_iter()
                .collect();
        }
        Vec::new()
    }

    /// The fleet-wide cooldown of a provider scope, while a provider incident is open.
    pub fn provider_cooldown(&self, scope: &str) -> Option<UnixMs> {
        self.open
            .get(&(IncidentKind::ProviderLimit, scope.to_owned()))
            .map(|i| i.until_ms)
    }

    /// The agent of session `key` died. Deaths of several different sessions on one host within
    /// the window are one incident; one session crash-looping is not (crash loops have their own
    /// budget).
    pub fn death(&mut self, key: &SessionRef, now: UnixMs, policy: &Policy) -> Vec<Change> {
        let node = key.node_id.as_str();
        let window = policy.mass_death_window.as_millis() as i64;
        let hold = policy.mass_death_hold.as_millis() as i64;
        let d = self.deaths.entry(node.to_owned()).or_default();
        while d.front().is_some_and(|(at, _)| now - at >= window) {
            d.pop_front();
        }
        d.retain(|(_, k)| k != key);
        d.push_back((now, key.clone()));
        let n = d.len() as u32;
        let k = (IncidentKind::MassDeath, node.to_owned());
        let mut out = Vec::new();
        if !self.open.contains_key(&k) && n >= policy.mass_death_deaths {
            out.push(self.open(IncidentKind::MassDeath, node, now, String::new()));
        }
        if let Some(i) = self.open.get_mut(&k) {
            i.sessions = i.sessions.max(n);
            i.until_ms = now + hold;
            i.summary = format!(
                "{} agents died on {node} within {} s: restarts on this host held",
                i.sessions,
                window / 1000
            );
            if let Some(Change::Opened(o)) = out.last_mut() {
                *o = i.clone();
            }
        }
        out
    }

    /// True while restarts on `node` are held by a mass-death incident.
    pub fn host_held(&self, node: &str) -> bool {
        self.open
            .contains_key(&(IncidentKind::MassDeath, node.to_owned()))
    }

    /// A node's health changed.
    pub fn node_health(&mut self, node: &str, health: Health, now: UnixMs) -> Vec<Change> {
        let mut out = Vec::new();
        let k = (IncidentKind::HostSilent, node.to_owned());
        match health {
            Health::Up => out.extend(self.close(IncidentKind::HostSilent, node, now)),
            Health::Suspect | Health::Down => {
                if !self.open.contains_key(&k) {
                    out.push(self.open(IncidentKind::HostSilent, node, now, String::new()));
                }
                if let Some(i) = self.open.get_mut(&k) {
                    i.summary = format!(
                        "node agent {node} is {}: its sessions get no actions, nothing is killed for silence",
                        if health == Health::Down {
                            "down"
                        } else {
                            "suspect"
                        }
                    );
                    if let Some(Change::Opened(o)) = out.last_mut() {
                        *o = i.clone();
                    }
                }
            }
        }
        out
    }

    /// The whole fleet's health: `silent` of `total` recently seen nodes are not up. When the
    /// share reaches `self_suspect_share` (with at least two nodes), the controller suspects its
    /// own network and freezes every destructive action until it sees the fleet again.
    pub fn fleet(
        &mut self,
        total: usize,
        silent: usize,
        now: UnixMs,
        policy: &Policy,
    ) -> Vec<Change> {
        let share = if total == 0 {
            0.0
        } else {
            silent as f64 / total as f64
        };
        let k = (IncidentKind::SelfSuspect, "controller".to_owned());
        let mut out = Vec::new();
        if total >= 2 && share >= policy.self_suspect_share {
            if !self.open.contains_key(&k) {
                out.push(self.open(
                    IncidentKind::SelfSuspect,
                    "controller",
                    now,
                    format!("{silent} of {total} nodes silent at once: the controller suspects its own network and freezes kills and restarts"),
                ));
            }
        } else {
            out.extend(self.close(IncidentKind::SelfSuspect, "controller", now));
        }
        out
    }

    /// The store's writes fail (`Some(cause)`) or work again (`None`): opens or closes the
    /// controller's `store_failing` incident.
    pub fn store(&mut self, failing: Option<&str>, now: UnixMs) -> Vec<Change> {
        let k = (IncidentKind::StoreFailing, "controller".to_owned());
        match failing {
            Some(cause) if !self.open.contains_key(&k) => vec![self.open(
                IncidentKind::StoreFailing,
                "controller",
                now,
                format!("store writes failing: {cause}"),
            )],
            Some(_) => Vec::new(),
            None => self
                .close(IncidentKind::StoreFailing, "controller", now)
                .into_iter()
                .collect(),
        }
    }

    /// A session's quality gate failed for good (`Some(summary)`: a person is called), or
    /// passed (`None`: its incident, if any, closes). Scope: `node/session`.
    pub fn gate(&mut self, key: &SessionRef, failed: Option<String>, now: UnixMs) -> Vec<Change> {
        let scope = format!("{}/{}", key.node_id, key.session_name);
        match failed {
            // One open incident per session: people were called already.
            Some(_)
                if self
                    .open
                    .contains_key(&(IncidentKind::GateFailed, scope.clone())) =>
            {
                Vec::new()
            }
            Some(summary) => {
                let mut opened = self.open(IncidentKind::GateFailed, &scope, now, summary);
                if let Change::Opened(i) = &mut opened {
                    i.sessions = 1;
                }
                if let Some(i) = self.open.get_mut(&(IncidentKind::GateFailed, scope)) {
                    i.sessions = 1;
                }
                vec![opened]
            }
            None => self
                .close(IncidentKind::GateFailed, &scope, now)
                .into_iter()
                .collect(),
        }
    }

    /// True while every destructive action is frozen.
    pub fn frozen(&self) -> bool {
        self.open
            .contains_key(&(IncidentKind::SelfSuspect, "controller".to_owned()))
    }

    /// Closes incidents whose time is over and reminds people of long-open ones.
    pub fn tick(&mut self, now: UnixMs, policy: &Policy) -> Vec<Change> {
        let grace = policy.provider_window.as_millis() as i64;
        let expired: Vec<(IncidentKind, String)> = self
            .open
            .iter()
            .filter(|(k, i)| match k.0 {
                IncidentKind::MassDeath => now >= i.until_ms,
                IncidentKind::ProviderLimit => now >= i.until_ms + grace,
                _ => false,
            })
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Vec::new();
        for (kind, scope) in expired {
            if kind == IncidentKind::ProviderLimit {
                self.provider_hits.remove(&scope);
            }
            out.extend(self.close(kind, &scope, now));
        }
        let repeat = policy.notify_repeat.as_millis() as i64;
        for i in self.open.values_mut() {
            if i.acked_ms.is_none() && now - i.notified_ms >= repeat {
                i.notified_ms = now;
                out.push(Change::Reminder(i.clone()));
            }
        }
        out
    }

    /// The kinds of the open incidents, one entry per incident.
    pub fn open_kinds(&self) -> Vec<IncidentKind> {
        self.open.values().map(|i| i.kind).collect()
    }

    /// Acknowledges an open incident (no more reminders).
    pub fn ack(&mut self, id: &str, by: &str, now: UnixMs) -> Option<Incident> {
        let i = self.open.values_mut().find(|i| i.id == id)?;
        i.acked_ms = Some(now);
        i.acked_by = by.to_owned();
        Some(i.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(node: &str, name: &str) -> SessionRef {
        SessionRef {
            node_id: node.into(),
            tmux_socket: "/s".into(),
            session_name: name.into(),
        }
    }

    #[test]
    fn a_failing_store_is_one_incident_until_it_recovers() {
        let mut c = Correlator::new("t".into());
        assert!(c.store(None, 1).is_empty(), "nothing to close");
        let opened = c.store(Some("database or disk is full"), 2);
        assert!(
            matches!(&opened[..], [Change::Opened(i)] if i.kind == IncidentKind::StoreFailing
                && i.scope == "controller" && i.summary.contains("disk is full")),
            "{opened:?}"
        );
        assert!(
            c.store(Some("database is locked"), 3).is_empty(),
            "still one"
        );
        let closed = c.store(None, 4);
        assert!(
            matches!(&closed[..], [Change::Closed(i)] if i.closed_ms == Some(4)),
            "{closed:?}"
        );
        assert_eq!(
            IncidentKind::parse("store_failing"),
            Some(IncidentKind::StoreFailing)
        );
    }

    #[test]
    fn one_provider_incident_for_many_sessions() {
        let p = Policy::default();
        let mut c = Correlator::new("i".into());
        assert!(
            c.rate_limited(&key("a", "1"), "anthropic/team", 10_000, 0, &p)
                .is_empty()
        );
        let ch = c.rate_limited(&key("b", "1"), "anthropic/team", 20_000, 100, &p);
        assert!(
            matches!(&ch[..], [Change::Opened(i)] if i.kind == IncidentKind::ProviderLimit && i.until_ms == 20_000)
        );
        assert!(
            c.rate_limited(&key("b", "2"), "anthropic/team", 5_000, 200, &p)
                .is_empty()
        );
        assert_eq!(c.provider_cooldown("anthropic/team"), Some(20_000));
        assert_eq!(c.provider_cooldown("openai/"), None);
        c.rate_cleared(&key("a", "1"), "anthropic/team", 300);
        c.rate_cleared(&key("b", "1"), "anthropic/team", 300);
        let ch = c.rate_cleared(&key("b", "2"), "anthropic/team", 300);
        assert!(matches!(&ch[..], [Change::Closed(_)]));
    }

    #[test]
    fn mass_death_holds_restarts_then_expires() {
        let p = Policy::default();
        let mut c = Correlator::new("i".into());
        // One session dying again and again is a crash loop, not a mass death.
        for at in [0, 500, 900] {
            assert!(c.death(&key("h", "loop"), at, &p).is_empty());
        }
        c.death(&key("h", "a"), 1000, &p);
        assert!(!c.host_held("h"));
        let ch = c.death(&key("h", "b"), 2000, &p);
        assert!(matches!(&ch[..], [Change::Opened(i)] if i.kind == IncidentKind::MassDeath));
        assert!(c.host_held("h") && !c.host_held("other"));
        assert!(c.tick(30_000, &p).is_empty());
        assert!(matches!(&c.tick(62_001, &p)[..], [Change::Closed(_)]));
        assert!(!c.host_held("h"));
    }

    #[test]
    fn the_controller_suspects_itself_when_half_the_fleet_goes_silent() {
        let p = Policy::default();
        let mut c = Correlator::new("i".into());
        assert!(c.fleet(4, 1, 1, &p).is_empty());
        assert!(!c.frozen());
        let ch = c.fleet(4, 2, 2, &p);
        assert!(c.frozen());
        assert!(
            ch.iter()
                .any(|x| matches!(x, Change::Opened(i) if i.kind == IncidentKind::SelfSuspect))
        );
        // One node alone going silent is that node's problem, not the controller's.
        assert!(matches!(&c.fleet(1, 1, 3, &p)[..], [Change::Closed(_)]));
        assert!(!c.frozen());
        // A host incident opens and closes with the node's health.
        assert!(matches!(
            &c.node_health("a", Health::Suspect, 4)[..],
            [Change::Opened(_)]
        ));
        assert!(matches!(
            &c.node_health("a", Health::Up, 5)[..],
            [Change::Closed(_)]
        ));
    }
}
