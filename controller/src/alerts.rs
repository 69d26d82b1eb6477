//! Alerts for people: incidents and needs-a-person events as Alertmanager alerts (its v2 API,
//! `POST /api/v2/alerts`) and as Slack-compatible messages (`{"text": ...}`).
//!
//! [`Alerts`] is the pure part: it keeps the firing alerts and says what to post on each change
//! and when to post them again (Alertmanager resolves an alert that is not re-sent before its
//! `endsAt`, so a firing alert is re-sent every [`RESEND`] with `endsAt` [`HOLD`] ahead, as
//! Prometheus does). An alert resolves by being posted once more with `endsAt` set to when it
//! ended. The notifier's task (`crate::notify`) owns it and does the posting.

use std::collections::BTreeMap;
use std::time::Duration;

use argus_decide::correlate::{Change, Incident};
use argus_shared::ids::SessionRef;
use argus_shared::time::UnixMs;
use serde::Serialize;

/// How often a firing alert is posted again.
pub const RESEND: Duration = Duration::from_secs(60);
/// How far ahead of each post a firing alert's `endsAt` is: it outlives a few missed re-sends.
pub const HOLD: Duration = Duration::from_secs(300);
/// Needs-a-person alerts kept firing at most; older ones are resolved first (bounded memory).
pub const MAX_FIRING: usize = 10_000;

/// The `alertname` of an incident's alert.
pub const INCIDENT: &str = "ArgusIncident";
/// The `alertname` of a session that needs a person.
pub const NEEDS_HUMAN: &str = "ArgusNeedsHuman";

/// One alert in Alertmanager's v2 form (`postableAlert`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    #[serde(rename = "startsAt")]
    pub starts_at: String,
    #[serde(rename = "endsAt")]
    pub ends_at: String,
}

impl Alert {
    /// A one-line text for a Slack-compatible webhook.
    pub fn text(&self) -> String {
        let name = self.labels.get("alertname").map_or("", String::as_str);
        let summary = self.annotations.get("summary").map_or("", String::as_str);
        let what = match name {
            INCIDENT => format!(
                "incident {} {} [{}]",
                self.label("kind"),
                self.label("scope"),
                self.label("incident")
            ),
            _ => format!(
                "session {} on {} needs a person",
                self.label("session"),
                self.label("node")
            ),
        };
        format!("[argus] {what}: {summary}")
    }

    fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

/// RFC 3339 in UTC with milliseconds, as Alertmanager reads it.
pub fn rfc3339(ms: UnixMs) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A firing alert and when it was last posted.
struct Firing {
    alert: Alert,
    started_ms: UnixMs,
    posted_ms: UnixMs,
}

/// The firing alerts, by their key (an incident id, or a session).
#[derive(Default)]
pub struct Alerts {
    firing: BTreeMap<String, Firing>,
}

impl Alerts {
    /// The alert to post for an incident change: firing while open, resolved at its close.
    pub fn incident(&mut self, change: &Change, now: UnixMs) -> Alert {
        let (i, closed) = match change {
            Change::Opened(i) | Change::Reminder(i) => (i, false),
            Change::Closed(i) => (i, true),
        };
        let key = format!("incident/{}", i.id);
        let alert = incident_alert(i);
        if closed {
            self.firing.remove(&key);
            let ended = i.closed_ms.unwrap_or(now);
            return resolved(alert, i.opened_ms, ended);
        }
        self.fire(key, alert, i.opened_ms, now)
    }

    /// The alert to post when a session needs a person (`why`); it fires until the session
    /// recovers ([`Self::recovered`]).
    pub fn needs_human(&mut self, session: &SessionRef, why: &str, now: UnixMs) -> Vec<Alert> {
        let mut out = Vec::new();
        let key = session_key(session);
        if !self.firing.contains_key(&key) && self.firing.len() >= MAX_FIRING {
            // Resolve the oldest needs-a-person alert rather than grow without bound.
            let oldest = self
                .firing
                .iter()
                .filter(|(k, _)| k.starts_with("session/"))
                .min_by_key(|(_, f)| f.started_ms)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest
                && let Some(f) = self.firing.remove(&k)
            {
                out.push(resolved(f.alert, f.started_ms, now));
            }
        }
        let started = self.firing.get(&key).map_or(now, |f| f.started_ms);
        let mut labels = BTreeMap::new();
        labels.insert("alertname".to_owned(), NEEDS_HUMAN.to_owned());
        labels.insert("node".to_owned(), session.node_id.clone());
        labels.insert("session".to_owned(), session.session_name.clone());
        labels.insert("tmux_socket".to_owned(), session.tmux_socket.clone());
        let mut annotations = BTreeMap::new();
        annotations.insert("summary".to_owned(), why.to_owned());
        let alert = Alert {
            labels,
            annotations,
            starts_at: String::new(),
            ends_at: String::new(),
        };
        out.push(self.fire(key, alert, started, now));
        out
    }

    /// The session recovered (it works again, or ended): its needs-a-person alert, if one
    /// fires, resolves.
    pub fn recovered(&mut self, session: &SessionRef, now: UnixMs) -> Option<Alert> {
        let f = self.firing.remove(&session_key(session))?;
        Some(resolved(f.alert, f.started_ms, now))
    }

    /// True when `session` has a firing needs-a-person alert.
    pub fn needs_human_firing(&self, session: &SessionRef) -> bool {
        self.firing.contains_key(&session_key(session))
    }

    /// The firing alerts not posted for [`RESEND`], with their `endsAt` moved ahead.
    pub fn due(&mut self, now: UnixMs) -> Vec<Alert> {
        let resend = RESEND.as_millis() as i64;
        self.firing
            .values_mut()
            .filter(|f| now - f.posted_ms >= resend)
            .map(|f| {
                f.posted_ms = now;
                f.alert.ends_at = rfc3339(now + HOLD.as_millis() as i64);
                f.alert.clone()
            })
            .collect()
    }

    /// Alerts firing now.
    pub fn firing(&self) -> usize {
        self.firing.len()
    }

    fn fire(&mut self, key: String, mut alert: Alert, started: UnixMs, now: UnixMs) -> Alert {
        alert.starts_at = rfc3339(started);
        alert.ends_at = rfc3339(now + HOLD.as_millis() as i64);
        self.firing.insert(
            key,
            Firing {
                alert: alert.clone(),
                started_ms: started,
                posted_ms: now,
            },
        );
        alert
    }
}

fn session_key(s: &SessionRef) -> String {
    format!("session/{}/{}/{}", s.node_id, s.tmux_socket, s.session_name)
}

fn resolved(mut alert: Alert, started: UnixMs, ended: UnixMs) -> Alert {
    alert.starts_at = rfc3339(started);
    alert.ends_at = rfc3339(ended.max(started));
    alert
}

fn incident_alert(i: &Incident) -> Alert {
    let mut labels = BTreeMap::new();
    labels.insert("alertname".to_owned(), INCIDENT.to_owned());
    labels.insert("kind".to_owned(), i.kind.as_str().to_owned());
    labels.insert("scope".to_owned(), i.scope.clone());
    labels.insert("incident".to_owned(), i.id.clone());
    let mut annotations = BTreeMap::new();
    annotations.insert("summary".to_owned(), i.summary.clone());
    annotations.insert("sessions".to_owned(), i.sessions.to_string());
    if !i.acked_by.is_empty() {
        annotations.insert("acked_by".to_owned(), i.acked_by.clone());
    }
    Alert {
        labels,
        annotations,
        starts_at: String::new(),
        ends_at: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use argus_decide::correlate::IncidentKind;

    use super::*;

    fn incident(closed: Option<UnixMs>) -> Incident {
        Incident {
            id: "inc-1".into(),
            kind: IncidentKind::HostSilent,
            scope: "node-a".into(),
            opened_ms: 1_000,
            closed_ms: closed,
            acked_ms: None,
            acked_by: String::new(),
            summary: "node-a silent".into(),
            sessions: 3,
            until_ms: 0,
            notified_ms: 1_000,
        }
    }

    fn session() -> SessionRef {
        SessionRef {
            node_id: "node-a".into(),
            tmux_socket: "/tmp/s".into(),
            session_name: "agent-1".into(),
        }
    }

    #[test]
    fn an_incident_fires_then_resolves_at_its_close() {
        let mut a = Alerts::default();
        let fired = a.incident(&Change::Opened(incident(None)), 2_000);
        assert_eq!(fired.labels["alertname"], INCIDENT);
        assert_eq!(fired.labels["kind"], "host_silent");
        assert_eq!(fired.starts_at, "1970-01-01T00:00:01.000Z");
        assert_eq!(fired.ends_at, rfc3339(2_000 + HOLD.as_millis() as i64));
        assert_eq!(a.firing(), 1);
        let done = a.incident(&Change::Closed(incident(Some(9_000))), 9_500);
        assert_eq!(done.ends_at, "1970-01-01T00:00:09.000Z");
        assert_eq!(done.labels, fired.labels, "the same alert resolves");
        assert_eq!(a.firing(), 0);
    }

    #[test]
    fn firing_alerts_are_posted_again_before_they_would_expire() {
        let mut a = Alerts::default();
        a.incident(&Change::Opened(incident(None)), 0);
        assert!(a.due(RESEND.as_millis() as i64 - 1).is_empty());
        let again = a.due(RESEND.as_millis() as i64);
        assert_eq!(again.len(), 1);
        assert_eq!(
            again[0].ends_at,
            rfc3339((RESEND + HOLD).as_millis() as i64)
        );
        assert!(a.due(RESEND.as_millis() as i64 + 1).is_empty());
    }

    #[test]
    fn a_session_needing_a_person_fires_until_it_recovers() {
        let mut a = Alerts::default();
        let s = session();
        let fired = a.needs_human(&s, "waits at a permission prompt", 5_000);
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].labels["session"], "agent-1");
        assert!(fired[0].text().contains("agent-1 on node-a needs a person"));
        assert!(a.needs_human_firing(&s));
        // Said again: still one alert, still started at the first time.
        let again = a.needs_human(&s, "still waits", 6_000);
        assert_eq!(again[0].starts_at, rfc3339(5_000));
        let done = a.recovered(&s, 8_000).expect("was firing");
        assert_eq!(done.ends_at, rfc3339(8_000));
        assert!(a.recovered(&s, 9_000).is_none());
    }
}
