//! The controller's Prometheus metrics, declared in one place (names, units, help), and the
//! `/metrics` route of the HTTP side port.
//!
//! Counters and histograms are recorded where things happen (a handful of atomic adds per
//! event); the gauges that describe the fleet (sessions by state and condition, nodes by health,
//! open incidents, the store's backlog, streams) are computed from the live state at each
//! scrape, so that the hot path pays nothing for them. Names follow
//! `argus_controller_<noun>_<unit>`; no label carries a session or node name (a fleet of 100,000
//! sessions stays a few hundred series).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use argus_decide::correlate::IncidentKind;
use argus_shared::profile::Condition;
use argus_shared::state::{Health, SessionState};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge};

use crate::auth::{Role, Tokens};
use crate::supervisor::Supervisor;

pub use argus_node_agent::metrics::{keep_up, recorder};

/// Sessions in the live view, by `state` and `condition` (gauge, at scrape).
pub const SESSIONS: &str = "argus_controller_sessions";
/// Nodes in the live view, by `health` (`up`, `suspect`, `down`) (gauge, at scrape).
pub const NODES: &str = "argus_controller_nodes";
/// Node agents' streams open now (gauge, at scrape).
pub const STREAMS: &str = "argus_controller_streams";
/// Streams opened since start (counter).
pub const STREAMS_OPENED_TOTAL: &str = "argus_controller_streams_opened_total";
/// Open incidents, by `kind` (gauge, at scrape).
pub const INCIDENTS_OPEN: &str = "argus_controller_incidents_open";
/// Incidents opened since start, by `kind` (counter).
pub const INCIDENTS_OPENED_TOTAL: &str = "argus_controller_incidents_opened_total";
/// Commands sent to node agents, by `action` and `origin` (`policy`, `admin`, `alarm`)
/// (counter): nudges, restarts and kills are `action="nudge"` and so on.
pub const COMMANDS_SENT_TOTAL: &str = "argus_controller_commands_sent_total";
/// Commands closed, by `action` and `outcome` (`ok`, `failed`, `no_such_session`, ...,
/// `unknown` and `expired` for commands that got no answer) (counter).
pub const COMMANDS_TOTAL: &str = "argus_controller_commands_total";
/// Time from sending a command to its node agent's answer, by `action` (histogram).
pub const COMMAND_SECONDS: &str = "argus_controller_command_seconds";
/// Commands waiting for their answer (gauge, at scrape).
pub const COMMANDS_WAITING: &str = "argus_controller_commands_waiting";
/// Notices of the decision core, by `kind` (`agent_died`, `crash_loop`, `rate_limited`,
/// `needs_human`, ...) (counter): crash loops are `kind="crash_loop"`, rate-limit cooldowns
/// `kind="rate_limited"`.
pub const NOTICES_TOTAL: &str = "argus_controller_notices_total";
/// Session state changes, by the state entered (`to`) (counter).
pub const TRANSITIONS_TOTAL: &str = "argus_controller_transitions_total";
/// From the node agent seeing a death (its event's time, the node's clock) to the controller
/// having decided on it (histogram).
pub const DEATH_TO_DECISION_SECONDS: &str = "argus_controller_death_to_decision_seconds";
/// From a node agent's message arriving to its decisions carried out, by `message` (`report`,
/// `event`) (histogram).
pub const REPORT_TO_DECISION_SECONDS: &str = "argus_controller_report_to_decision_seconds";
/// Messages from node agents, by `message` (`report`, `event`, `result`, `heartbeat`, ...)
/// (counter).
pub const MESSAGES_TOTAL: &str = "argus_controller_messages_total";
/// Writes queued in memory for the store (gauge, at scrape).
pub const STORE_QUEUE_WRITES: &str = "argus_controller_store_queue_writes";
/// Writes spilled to the journal while the store fails (gauge, at scrape).
pub const STORE_JOURNAL_WRITES: &str = "argus_controller_store_journal_writes";
/// Writes lost (the journal failed too) (counter, at scrape).
pub const STORE_DROPPED_WRITES_TOTAL: &str = "argus_controller_store_dropped_writes_total";
/// Duration of one batched store write (one transaction), failed ones included (histogram).
pub const STORE_WRITE_SECONDS: &str = "argus_controller_store_write_seconds";
/// Writes per batched store write (histogram).
pub const STORE_BATCH_WRITES: &str = "argus_controller_store_batch_writes";
/// Notifications sent, by `sink` (`webhook`, `slack`, `alertmanager`) and `outcome` (`ok`,
/// `failed`, `dropped`) (counter).
pub const NOTIFICATIONS_TOTAL: &str = "argus_controller_notifications_total";

/// Declares every metric of the controller (help and unit), and those of the in-process node
/// agent; the fleet gauges get their first values at the first scrape.
pub fn describe() {
    argus_node_agent::metrics::describe();
    describe_gauge!(
        SESSIONS,
        Unit::Count,
        "Sessions in the live view, by state and screen condition."
    );
    describe_gauge!(NODES, Unit::Count, "Nodes in the live view, by health.");
    describe_gauge!(STREAMS, Unit::Count, "Node agents' streams open now.");
    describe_counter!(
        STREAMS_OPENED_TOTAL,
        Unit::Count,
        "Node agents' streams opened since start."
    );
    describe_gauge!(INCIDENTS_OPEN, Unit::Count, "Open incidents, by kind.");
    describe_counter!(
        INCIDENTS_OPENED_TOTAL,
        Unit::Count,
        "Incidents opened since start, by kind."
    );
    describe_counter!(
        COMMANDS_SENT_TOTAL,
        Unit::Count,
        "Commands sent to node agents, by action and origin."
    );
    describe_counter!(
        COMMANDS_TOTAL,
        Unit::Count,
        "Commands closed, by action and outcome."
    );
    describe_histogram!(
        COMMAND_SECONDS,
        Unit::Seconds,
        "Time from sending a command to its node agent's answer, by action."
    );
    describe_gauge!(
        COMMANDS_WAITING,
        Unit::Count,
        "Commands waiting for their answer."
    );
    describe_counter!(
        NOTICES_TOTAL,
        Unit::Count,
        "Notices of the decision core, by kind."
    );
    describe_counter!(
        TRANSITIONS_TOTAL,
        Unit::Count,
        "Session state changes, by the state entered."
    );
    describe_histogram!(
        DEATH_TO_DECISION_SECONDS,
        Unit::Seconds,
        "From the node agent seeing a death (its clock) to the controller's decision on it."
    );
    describe_histogram!(
        REPORT_TO_DECISION_SECONDS,
        Unit::Seconds,
        "From a node agent's message arriving to its decisions carried out, by message."
    );
    describe_counter!(
        MESSAGES_TOTAL,
        Unit::Count,
        "Messages from node agents, by message."
    );
    describe_gauge!(
        STORE_QUEUE_WRITES,
        Unit::Count,
        "Writes queued in memory for the store."
    );
    describe_gauge!(
        STORE_JOURNAL_WRITES,
        Unit::Count,
        "Writes spilled to the journal while the store fails."
    );
    describe_counter!(
        STORE_DROPPED_WRITES_TOTAL,
        Unit::Count,
        "Writes lost because the journal failed too."
    );
    describe_histogram!(
        STORE_WRITE_SECONDS,
        Unit::Seconds,
        "Duration of one batched store write (one transaction)."
    );
    describe_histogram!(
        STORE_BATCH_WRITES,
        Unit::Count,
        "Writes per batched store write."
    );
    describe_counter!(
        NOTIFICATIONS_TOTAL,
        Unit::Count,
        "Notifications sent, by sink and outcome."
    );
    // The series people alert on exist from the start at 0, so that `increase()` and `rate()`
    // see their first event.
    for action in ACTIONS {
        for origin in ["policy", "admin", "alarm"] {
            counter!(COMMANDS_SENT_TOTAL, "action" => action, "origin" => origin).absolute(0);
        }
    }
    for kind in KINDS {
        counter!(INCIDENTS_OPENED_TOTAL, "kind" => kind.as_str()).absolute(0);
    }
    for kind in ["agent_died", "crash_loop", "rate_limited", "needs_human"] {
        counter!(NOTICES_TOTAL, "kind" => kind).absolute(0);
    }
}

/// Every command action (`argus_shared::command::Action::name`).
const ACTIONS: [&str; 7] = [
    "nudge",
    "interrupt",
    "kill",
    "restart",
    "capture",
    "gate",
    "checkpoint",
];

// === Recording, on the hot path ===

/// A command was sent.
pub fn command_sent(action: &'static str, origin: &'static str) {
    counter!(COMMANDS_SENT_TOTAL, "action" => action, "origin" => origin).increment(1);
}

/// A command was closed with `status` (a `CommandStatus` name) after `took` (`None`: no answer).
pub fn command_closed(action: &str, status: &str, took: Option<Duration>) {
    let outcome = status
        .trim_start_matches("COMMAND_STATUS_")
        .to_ascii_lowercase();
    counter!(COMMANDS_TOTAL, "action" => action.to_owned(), "outcome" => outcome).increment(1);
    if let Some(took) = took {
        metrics::histogram!(COMMAND_SECONDS, "action" => action.to_owned())
            .record(took.as_secs_f64());
    }
}

/// The decision core gave a notice.
pub fn notice(kind: &'static str) {
    counter!(NOTICES_TOTAL, "kind" => kind).increment(1);
}

/// A session entered state `to`.
pub fn transition(to: SessionState) {
    counter!(TRANSITIONS_TOTAL, "to" => to.as_str()).increment(1);
}

/// An incident opened.
pub fn incident_opened(kind: IncidentKind) {
    counter!(INCIDENTS_OPENED_TOTAL, "kind" => kind.as_str()).increment(1);
}

/// A node agent's message of kind `message` arrived.
pub fn message(message: &'static str) {
    counter!(MESSAGES_TOTAL, "message" => message).increment(1);
}

/// A node agent's `message` was applied, `took` after it arrived.
pub fn decided(message: &'static str, took: Duration) {
    metrics::histogram!(REPORT_TO_DECISION_SECONDS, "message" => message)
        .record(took.as_secs_f64());
}

/// A death the node agent saw at `seen_ms` (its clock) was decided on at `now_ms`.
pub fn death_decided(seen_ms: i64, now_ms: i64) {
    if seen_ms > 0 {
        let secs = (now_ms - seen_ms).max(0) as f64 / 1000.0;
        metrics::histogram!(DEATH_TO_DECISION_SECONDS).record(secs);
    }
}

/// A node agent's stream opened.
pub fn stream_opened() {
    counter!(STREAMS_OPENED_TOTAL).increment(1);
}

/// One batched store write of `writes` rows took `took`.
pub fn store_write(writes: usize, took: Duration) {
    metrics::histogram!(STORE_WRITE_SECONDS).record(took.as_secs_f64());
    metrics::histogram!(STORE_BATCH_WRITES).record(writes as f64);
}

/// One notification to `sink` ended with `outcome`.
pub fn notification(sink: &'static str, outcome: &'static str) {
    counter!(NOTIFICATIONS_TOTAL, "sink" => sink, "outcome" => outcome).increment(1);
}

// === Scrape ===

/// Every state, condition, health and incident kind, so that a gauge that drops to zero is
/// exported as 0 rather than keeping its last value.
const STATES: [SessionState; 6] = [
    SessionState::Booting,
    SessionState::Working,
    SessionState::Stalled,
    SessionState::Completed,
    SessionState::Zombie,
    SessionState::Dead,
];
const CONDITIONS: [Condition; 7] = [
    Condition::None,
    Condition::AtPrompt,
    Condition::Thinking,
    Condition::WaitingPermission,
    Condition::Dialog,
    Condition::RateLimited,
    Condition::Error,
];
const HEALTHS: [Health; 3] = [Health::Up, Health::Suspect, Health::Down];
const KINDS: [IncidentKind; 6] = [
    IncidentKind::HostSilent,
    IncidentKind::MassDeath,
    IncidentKind::ProviderLimit,
    IncidentKind::SelfSuspect,
    IncidentKind::StoreFailing,
    IncidentKind::GateFailed,
];

/// Sets the fleet gauges from the live state (O(sessions), once per scrape).
pub fn refresh(sup: &Supervisor) {
    let mut sessions = [[0u64; CONDITIONS.len()]; STATES.len()];
    for (s, c) in sup.fleet.map_sessions(None, |_, t| {
        (
            STATES.iter().position(|s| *s == t.state).unwrap_or(0),
            CONDITIONS
                .iter()
                .position(|c| *c == t.obs.condition)
                .unwrap_or(0),
        )
    }) {
        sessions[s][c] += 1;
    }
    for (s, state) in STATES.iter().enumerate() {
        for (c, condition) in CONDITIONS.iter().enumerate() {
            gauge!(SESSIONS, "state" => state.as_str(), "condition" => condition_name(*condition))
                .set(sessions[s][c] as f64);
        }
    }
    let liveness = sup.fleet.node_liveness();
    for h in HEALTHS {
        let n = liveness.iter().filter(|(health, _)| *health == h).count();
        gauge!(NODES, "health" => h.as_str()).set(n as f64);
    }
    gauge!(STREAMS).set(sup.fleet.streams() as f64);
    let open = sup.open_incident_kinds();
    for k in KINDS {
        let n = open.iter().filter(|o| **o == k).count();
        gauge!(INCIDENTS_OPEN, "kind" => k.as_str()).set(n as f64);
    }
    let (queued, journaled, dropped) = sup.recorder.backlog();
    gauge!(STORE_QUEUE_WRITES).set(queued as f64);
    gauge!(STORE_JOURNAL_WRITES).set(journaled as f64);
    counter!(STORE_DROPPED_WRITES_TOTAL).absolute(dropped);
    gauge!(COMMANDS_WAITING).set(sup.dispatch.waiting() as f64);
}

/// The condition as a label value (snake case, like the API's enum names).
fn condition_name(c: Condition) -> &'static str {
    match c {
        Condition::None => "none",
        Condition::AtPrompt => "at_prompt",
        Condition::Thinking => "thinking",
        Condition::WaitingPermission => "waiting_permission",
        Condition::Dialog => "dialog",
        Condition::RateLimited => "rate_limited",
        Condition::Error => "error",
    }
}

/// Who may scrape `/metrics`: anyone on `--insecure` (loopback), otherwise a bearer token of
/// the tokens file with at least the `viewer` role (the figures describe the fleet).
#[derive(Default)]
pub struct Scrape {
    tokens: OnceLock<Arc<Tokens>>,
}

impl Scrape {
    /// From now on, `/metrics` needs one of `tokens` (a viewer or more).
    pub fn require(&self, tokens: Arc<Tokens>) {
        let _ = self.tokens.set(tokens);
    }

    fn allows(&self, headers: &HeaderMap) -> Result<(), (StatusCode, String)> {
        let Some(tokens) = self.tokens.get() else {
            return Ok(());
        };
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let Some(token) = bearer else {
            return Err((
                StatusCode::UNAUTHORIZED,
                "/metrics needs `authorization: Bearer <token>` with a token of the tokens file \
                 (role viewer or more)\n"
                    .to_owned(),
            ));
        };
        // Every role includes viewer: any listed token may read the figures.
        match tokens.check(token.trim()) {
            Some(c) if c.role >= Role::Viewer => Ok(()),
            _ => Err((
                StatusCode::UNAUTHORIZED,
                "the bearer token is not known\n".to_owned(),
            )),
        }
    }
}

/// `GET /metrics`: the Prometheus text format.
pub async fn scrape(
    State(sup): State<Arc<Supervisor>>,
    headers: HeaderMap,
) -> (StatusCode, [(header::HeaderName, &'static str); 1], String) {
    const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
    if let Err((status, why)) = sup.scrape.allows(&headers) {
        return (status, [(header::CONTENT_TYPE, "text/plain")], why);
    }
    let Some(handle) = recorder() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/plain")],
            "no metrics recorder in this process\n".to_owned(),
        );
    };
    refresh(&sup);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, TEXT)],
        handle.render(),
    )
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use metrics_exporter_prometheus::PrometheusBuilder;

    use super::*;

    /// Nanoseconds per call of `f`, over `n` calls.
    fn per_call(n: u32, mut f: impl FnMut(u32)) -> f64 {
        let start = Instant::now();
        for i in 0..n {
            f(i);
        }
        start.elapsed().as_nanos() as f64 / f64::from(n)
    }

    /// What one report's metrics cost on the hot path: run with
    /// `cargo test --release -p argus-controller --lib -- --ignored --nocapture cost_of`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn cost_of_recording() {
        const N: u32 = 2_000_000;
        let report = |i: u32| {
            message("report");
            decided("report", Duration::from_micros(u64::from(i % 5000)));
        };
        let command = |_| command_sent("nudge", "policy");
        let noop_report = per_call(N, report);
        let noop_command = per_call(N, command);
        let recorder = PrometheusBuilder::new().build_recorder();
        let (with_report, with_command) =
            metrics::with_local_recorder(&recorder, || (per_call(N, report), per_call(N, command)));
        println!(
            "metrics per report (a counter and a histogram sample): {with_report:.0} ns with the \
             Prometheus recorder, {noop_report:.1} ns without; per command sent: \
             {with_command:.0} ns, {noop_command:.1} ns without"
        );
        let text = recorder.handle().render();
        assert!(text.contains("argus_controller_messages_total{message=\"report\"} 2000000"));
    }
}
