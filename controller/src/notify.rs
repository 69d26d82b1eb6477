//! Notifications to people's tools, from a bounded queue so a slow receiver never slows
//! decisions: webhooks get one JSON POST per incident change (opened, reminder, closed);
//! Slack-compatible webhooks get a `{"text": ...}` line per incident change and per session
//! that needs a person (and when it recovers); Alertmanagers get both as alerts that resolve
//! when they end (`crate::alerts`). One notification per root cause: other per-session
//! symptoms go to the event stream, not here.

use std::sync::Arc;
use std::time::Duration;

use argus_decide::correlate::{Change, Incident};
use argus_shared::ids::SessionRef;
use argus_shared::time::now_ms;
use dashmap::DashMap;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::alerts::{Alert, Alerts};

/// How long one POST may take.
const POST_TIMEOUT: Duration = Duration::from_secs(5);

/// Where notifications go.
#[derive(Debug, Clone, Default)]
pub struct Targets {
    /// Generic JSON webhooks (incident changes).
    pub webhooks: Vec<String>,
    /// Slack-compatible webhooks (`{"text": ...}`).
    pub slack: Vec<String>,
    /// Alertmanager base URLs (`http://HOST:9093`).
    pub alertmanagers: Vec<String>,
}

impl Targets {
    fn is_empty(&self) -> bool {
        self.webhooks.is_empty() && self.slack.is_empty() && self.alertmanagers.is_empty()
    }

    /// True when someone listens to sessions that need a person.
    fn want_sessions(&self) -> bool {
        !self.slack.is_empty() || !self.alertmanagers.is_empty()
    }
}

/// One notification in the queue.
enum Note {
    Incident(Change),
    NeedsHuman(SessionRef, String),
    Recovered(SessionRef),
    /// An open incident another leader posted: its alert is re-sent from now on.
    Firing(Incident),
}

/// Sends notifications to webhooks, Slack-compatible webhooks and Alertmanagers.
#[derive(Clone)]
pub struct Notifier {
    tx: Option<mpsc::Sender<Note>>,
    /// Sessions with a needs-a-person alert (when someone listens for them): checked on every
    /// step of a working session, so that only a real recovery is queued.
    needing: Option<Arc<DashMap<SessionRef, ()>>>,
}

impl Notifier {
    /// A notifier posting incident changes to the webhooks `urls`; without URLs it does nothing.
    pub fn start(urls: Vec<String>, tasks: &TaskTracker, shutdown: CancellationToken) -> Self {
        Self::start_to(
            Targets {
                webhooks: urls,
                ..Targets::default()
            },
            tasks,
            shutdown,
        )
    }

    /// A notifier posting to every target; without targets it does nothing.
    pub fn start_to(targets: Targets, tasks: &TaskTracker, shutdown: CancellationToken) -> Self {
        if targets.is_empty() {
            return Self {
                tx: None,
                needing: None,
            };
        }
        let needing = targets.want_sessions().then(Arc::default);
        let (tx, rx) = mpsc::channel::<Note>(1024);
        tasks.spawn(run(targets, rx, shutdown));
        Self {
            tx: Some(tx),
            needing,
        }
    }

    /// Queues the notification of one incident change (dropped, with a log line, if the queue is
    /// full).
    pub fn incident(&self, change: &Change) {
        let id = match change {
            Change::Opened(i) | Change::Reminder(i) | Change::Closed(i) => i.id.clone(),
        };
        self.queue(Note::Incident(change.clone()), &id);
    }

    /// Takes over the re-sends of an open incident's Alertmanager alert that another leader
    /// posted (replicas: a new leader), without posting anything now.
    pub fn firing(&self, incident: &Incident) {
        self.queue(Note::Firing(incident.clone()), &incident.id);
    }

    /// Queues a session that needs a person (`why`).
    pub fn needs_human(&self, session: &SessionRef, why: &str) {
        if let Some(needing) = &self.needing {
            needing.insert(session.clone(), ());
            self.queue(
                Note::NeedsHuman(session.clone(), why.to_owned()),
                &session.session_name,
            );
        }
    }

    /// The session works again (or left the live view): its needs-a-person alert, if any,
    /// resolves. Cheap when it has none.
    pub fn recovered(&self, session: &SessionRef) {
        if let Some(needing) = &self.needing
            && !needing.is_empty()
            && needing.remove(session).is_some()
        {
            self.queue(Note::Recovered(session.clone()), &session.session_name);
        }
    }

    fn queue(&self, note: Note, what: &str) {
        let Some(tx) = &self.tx else { return };
        if tx.try_send(note).is_err() {
            crate::metrics::notification("queue", "dropped");
            tracing::warn!(what, "notification queue full; notification dropped");
        }
    }
}

/// The notifier's task: posts each note, and re-sends firing alerts to the Alertmanagers.
async fn run(targets: Targets, mut rx: mpsc::Receiver<Note>, shutdown: CancellationToken) {
    let mut alerts = Alerts::default();
    let mut resend = tokio::time::interval(crate::alerts::RESEND / 4);
    resend.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let note = tokio::select! {
            n = rx.recv() => n,
            () = shutdown.cancelled() => None,
            _ = resend.tick() => {
                let due = alerts.due(now_ms());
                post_alerts(&targets, &due).await;
                continue;
            }
        };
        let Some(note) = note else { break };
        let now = now_ms();
        match note {
            Note::Incident(change) => {
                let body = serde_json::json!({
                    "event": event_name(&change),
                    "incident": json(incident_of(&change)),
                })
                .to_string();
                for url in &targets.webhooks {
                    post("webhook", url, &body).await;
                }
                let alert = alerts.incident(&change, now);
                post_alerts(&targets, std::slice::from_ref(&alert)).await;
                let prefix = if matches!(change, Change::Closed(_)) {
                    "resolved: "
                } else {
                    ""
                };
                post_slack(&targets, &format!("{prefix}{}", alert.text())).await;
            }
            Note::NeedsHuman(session, why) => {
                let new = !alerts.needs_human_firing(&session);
                let fired = alerts.needs_human(&session, &why, now);
                post_alerts(&targets, &fired).await;
                if new && let Some(a) = fired.last() {
                    post_slack(&targets, &a.text()).await;
                }
            }
            Note::Firing(i) => {
                let _ = alerts.incident(&Change::Reminder(i), now);
            }
            Note::Recovered(session) => {
                if let Some(done) = alerts.recovered(&session, now) {
                    post_alerts(&targets, std::slice::from_ref(&done)).await;
                    post_slack(&targets, &format!("resolved: {}", done.text())).await;
                }
            }
        }
    }
}

/// Posts alerts to every Alertmanager (`/api/v2/alerts`, a JSON array).
async fn post_alerts(targets: &Targets, alerts: &[Alert]) {
    if alerts.is_empty() || targets.alertmanagers.is_empty() {
        return;
    }
    let body = match serde_json::to_string(alerts) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "alerts not serialisable");
            return;
        }
    };
    for base in &targets.alertmanagers {
        let url = format!("{}/api/v2/alerts", base.trim_end_matches('/'));
        post("alertmanager", &url, &body).await;
    }
}

/// Posts `text` to every Slack-compatible webhook.
async fn post_slack(targets: &Targets, text: &str) {
    if targets.slack.is_empty() {
        return;
    }
    let body = serde_json::json!({ "text": text }).to_string();
    for url in &targets.slack {
        post("slack", url, &body).await;
    }
}

async fn post(sink: &'static str, url: &str, body: &str) {
    match crate::outbound::post_json(url, body, &[], POST_TIMEOUT).await {
        Ok(_) => crate::metrics::notification(sink, "ok"),
        Err(e) => {
            crate::metrics::notification(sink, "failed");
            tracing::warn!(%url, sink, error = %e, "notification failed");
        }
    }
}

fn event_name(change: &Change) -> &'static str {
    match change {
        Change::Opened(_) => "incident_opened",
        Change::Reminder(_) => "incident_reminder",
        Change::Closed(_) => "incident_closed",
    }
}

fn incident_of(change: &Change) -> &Incident {
    match change {
        Change::Opened(i) | Change::Reminder(i) | Change::Closed(i) => i,
    }
}

fn json(i: &Incident) -> serde_json::Value {
    serde_json::json!({
        "id": i.id,
        "kind": i.kind.as_str(),
        "scope": i.scope,
        "opened_ms": i.opened_ms,
        "closed_ms": i.closed_ms,
        "summary": i.summary,
        "sessions": i.sessions,
        "until_ms": i.until_ms,
    })
}
