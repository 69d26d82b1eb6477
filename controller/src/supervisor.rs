//! The supervisor ties the pure decision core to the world: it feeds inputs to each session's
//! [`Track`] through [`detect::step`] with the fleet-level [`Ctx`] from correlation, then carries
//! out the effects (record, announce, command, triage, persist). It also owns the periodic tick:
//! node health from heartbeats, time-driven session decisions, incident expiry, policy reload,
//! expiry of unanswered commands.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use argus_decide::budget::{Budget, Gate};
use argus_decide::correlate::fleet::OpenLimit;
use argus_decide::correlate::{Change, Correlator, Incident, IncidentKind, provider_scope};
use argus_decide::detect::{self, Ctx, Durable, Effect, Input, Notice, Track, TriageCase};
use argus_decide::escalate::Verdict;
use argus_decide::gate::GateResult;
use argus_decide::health;
use argus_decide::policy::Policy;
use argus_shared::command::Action;
use argus_shared::ids::Incarnation;
use argus_shared::labels;
use argus_shared::state::{Health, SessionState};
use argus_shared::time::UnixMs;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::dispatch::{Dispatcher, Origin};
use crate::events::Events;
use crate::fleet::Fleet;
use crate::notify::Notifier;
use crate::store::{IncidentRow, RateLimitRow, Recorder, SessionRef, Store, TransitionRow, Write};

/// What the supervisor is built from.
pub struct Parts {
    pub controller_id: String,
    pub store: Arc<dyn Store>,
    pub recorder: Recorder,
    pub policy: Policy,
    pub policy_file: Option<PathBuf>,
    /// The last recorded state of each session and when it was entered (Unix ms).
    pub recorded: Vec<(SessionRef, (SessionState, UnixMs))>,
    pub durables: Vec<(SessionRef, Durable)>,
    /// Commands a previous controller process left pending.
    pub pending: Vec<crate::store::CommandRow>,
    /// Bounds on what one node may report.
    pub limits: crate::config::Limits,
    pub incidents: Vec<Incident>,
    pub notifier: Notifier,
    pub tasks: TaskTracker,
    /// Incomplete handoffs a previous controller process left.
    pub handoffs: Vec<crate::handoff::Restored>,
}

/// Everything the controller's services share.
pub struct Supervisor {
    pub controller_id: String,
    /// This process's part among replicas sharing a PostgreSQL database (set once at start-up;
    /// empty on SQLite).
    pub replica: std::sync::OnceLock<Arc<crate::replica::Replica>>,
    pub fleet: Arc<Fleet>,
    pub dispatch: Dispatcher,
    pub recorder: Recorder,
    pub events: Events,
    pub store: Arc<dyn Store>,
    /// Open handoffs (restarts whose new agent has not yet taken the work over).
    pub handoffs: crate::handoff::Handoffs,
    policy: RwLock<Arc<Policy>>,
    policy_file: Option<PathBuf>,
    policy_mtime: Mutex<Option<SystemTime>>,
    /// Bounds on what one node may report.
    pub limits: crate::config::Limits,
    /// When this controller started: a node not seen since is absent since then.
    started_ms: UnixMs,
    correlator: Mutex<Correlator>,
    /// Among replicas: the open fleet-wide provider incidents by scope, as the leader keeps
    /// them in the store (read every round by `crate::replica`). Alone, the correlator's.
    fleet_limits: Mutex<std::collections::HashMap<String, OpenLimit>>,
    budget: Mutex<Budget>,
    notifier: Notifier,
    tasks: TaskTracker,
    verdicts: mpsc::Sender<(SessionRef, Verdict)>,
    verdicts_rx: tokio::sync::Mutex<mpsc::Receiver<(SessionRef, Verdict)>>,
    /// Pending durable alarms (`crate::alarms`).
    pub alarms: crate::alarms::Alarms,
    /// Quality gate outcomes, applied by the tick like triage verdicts.
    gates: mpsc::Sender<(SessionRef, GateResult)>,
    gates_rx: tokio::sync::Mutex<mpsc::Receiver<(SessionRef, GateResult)>>,
    /// Who may scrape `/metrics` (`crate::metrics`).
    pub scrape: crate::metrics::Scrape,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The fleet budget as the decision core's [`Gate`]: a token is taken when a kill or restart is
/// decided.
struct FleetBudget<'a> {
    budget: &'a Mutex<Budget>,
    per_minute: u32,
}

impl Gate for FleetBudget<'_> {
    fn reserve(&self, now: UnixMs) -> bool {
        lock(self.budget).take(now, self.per_minute)
    }
}

/// What one step of a session leaves for the supervisor to carry out.
struct Decided {
    effects: Vec<Effect>,
    /// The session's provider scope (`provider/account`), for correlation.
    scope: Option<String>,
    /// The durable state after the step, when it changed.
    durable: Option<Durable>,
    /// The session works and waits for no person: a needs-a-person alert of it resolves.
    settled: bool,
}

// === impl Supervisor: deciding ===

impl Supervisor {
    /// A supervisor over an empty live fleet.
    pub fn new(p: Parts) -> Self {
        let fleet = Arc::new(Fleet::default());
        fleet.set_silence(p.policy.node_suspect_after);
        let events = Events::default();
        let dispatch = Dispatcher::new(
            fleet.clone(),
            p.recorder.clone(),
            events.clone(),
            p.controller_id.clone(),
            p.policy.command_timeout,
        );
        let mut correlator = Correlator::new(format!("inc-{}", p.controller_id));
        correlator.restore(p.incidents);
        let policy_mtime = p
            .policy_file
            .as_ref()
            .and_then(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok());
        let (verdicts, verdicts_rx) = mpsc::channel(1024);
        let (gates, gates_rx) = mpsc::channel(1024);
        let now = argus_shared::time::now_ms();
        restore_sessions(&fleet, p.recorded, p.durables, now, &p.policy);
        dispatch.adopt(p.pending);
        Self {
            verdicts,
            verdicts_rx: tokio::sync::Mutex::new(verdicts_rx),
            gates,
            gates_rx: tokio::sync::Mutex::new(gates_rx),
            handoffs: crate::handoff::Handoffs::new(&p.controller_id, p.handoffs),
            replica: std::sync::OnceLock::new(),
            controller_id: p.controller_id,
            fleet,
            dispatch,
            recorder: p.recorder,
            events,
            store: p.store,
            budget: Mutex::new(Budget::new(
                p.policy.fleet_destructive_per_minute,
                argus_shared::time::now_ms(),
            )),
            policy: RwLock::new(Arc::new(p.policy)),
            policy_file: p.policy_file,
            policy_mtime: Mutex::new(policy_mtime),
            limits: p.limits,
            started_ms: now,
            correlator: Mutex::new(correlator),
            fleet_limits: Mutex::default(),
            notifier: p.notifier,
            alarms: crate::alarms::Alarms::new(p.tasks.clone()),
            tasks: p.tasks,
            scrape: crate::metrics::Scrape::default(),
        }
    }

    /// A supervisor over the in-memory store, for in-process tests of ingest, dispatch and the
    /// policy without tmux or a database file. Its tasks run on `tasks` until `stop`.
    pub async fn in_memory(
        policy: Policy,
        tasks: &TaskTracker,
        stop: tokio_util::sync::CancellationToken,
    ) -> Result<Arc<Self>, crate::store::StoreError> {
        let store = crate::store::open("memory://").await?;
        let recorder = Recorder::start(store.clone(), stop.clone(), tasks);
        Ok(Arc::new(Self::new(Parts {
            controller_id: "ctl-test".into(),
            store,
            recorder,
            policy,
            policy_file: None,
            recorded: Vec::new(),
            durables: Vec::new(),
            pending: Vec::new(),
            limits: crate::config::Limits::default(),
            incidents: Vec::new(),
            notifier: Notifier::start(Vec::new(), tasks, stop),
            tasks: tasks.clone(),
            handoffs: Vec::new(),
        })))
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .map(|p| p.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// Feeds one input to a session and carries out what follows. Inputs other than observations
    /// for sessions the controller does not track are ignored.
    pub async fn apply(self: &Arc<Self>, key: &SessionRef, input: Input, now: UnixMs) {
        let Some(decided) = self.decide(key, input, now) else {
            return;
        };
        self.carry_out(key, decided, now).await;
    }

    /// One step of the decision core for `key`, with the fleet-level context from correlation.
    fn decide(&self, key: &SessionRef, input: Input, now: UnixMs) -> Option<Decided> {
        let base = self.policy();
        let observed = matches!(input, Input::Observed(_));
        let create = observed.then_some(|| Track::new(now, None, None));
        self.fleet.with_session(key, create, |track| {
            if observed && track.obs_at_ms.is_none() {
                // First sight (new, or restored from the store): idleness counts this node's
                // probe intervals.
                if let Some(ms) = self.fleet.probe_ms(&key.node_id) {
                    track.probe_ms = ms;
                }
            }
            // Labels come with the observation: use the new ones when there are.
            let labels = match &input {
                Input::Observed(o) => &o.labels,
                _ => &track.obs.labels,
            };
            let group = labels.get(labels::GROUP).cloned();
            let scope = provider_scope(
                labels.get(labels::PROVIDER).map(String::as_str),
                labels.get(labels::ACCOUNT).map(String::as_str),
            );
            let policy = base.for_group(group.as_deref());
            let gate = FleetBudget {
                budget: &self.budget,
                per_minute: self.budget_share(policy.fleet_destructive_per_minute),
            };
            let ctx = self.ctx(key, scope.as_deref(), &gate);
            let step = detect::step(track, input, now, policy, &ctx);
            let durable = step
                .effects
                .contains(&Effect::Persist)
                .then(|| track.durable.clone());
            let settled = track.state == SessionState::Working
                && !matches!(
                    track.obs.condition,
                    argus_shared::profile::Condition::WaitingPermission
                        | argus_shared::profile::Condition::Dialog
                );
            Decided {
                effects: step.effects,
                scope,
                durable,
                settled,
            }
        })
    }

    /// This process's share of the fleet destructive budget: all of it alone, an equal share
    /// among the live replicas (at least one a minute), so that the fleet as a whole stays
    /// within it without a round trip to the database per kill.
    fn budget_share(&self, per_minute: u32) -> u32 {
        match self.replica.get() {
            Some(r) => (per_minute / r.live_replicas().max(1)).max(1),
            None => per_minute,
        }
    }

    /// The fleet-level context for one session's step.
    fn ctx<'a>(&self, key: &'a SessionRef, scope: Option<&str>, gate: &'a dyn Gate) -> Ctx<'a> {
        let node_id = key.node_id.as_str();
        // While the store refuses writes, the audit row of a command would live only in memory
        // (a SIGKILL then loses it): the policy's actions wait, like a silent node's, until
        // what they record can be kept. Observations and liveness go on.
        let node_up = self.fleet.reachable(node_id) && self.store_ok();
        let (frozen, held, mut cooldown) = {
            let c = lock(&self.correlator);
            (
                c.frozen(),
                c.host_held(node_id),
                scope.and_then(|s| c.provider_cooldown(s)),
            )
        };
        if self.replica.get().is_some() {
            // Among replicas provider incidents are the leader's, over the whole fleet.
            cooldown = scope.and_then(|s| lock(&self.fleet_limits).get(s).map(|o| o.until_ms));
        }
        Ctx {
            session_name: &key.session_name,
            node_up,
            node_back_ms: self.fleet.back_ms(node_id),
            destructive_allowed: node_up && !frozen && !held,
            provider_cooldown_until: cooldown,
            jitter: rand::random::<f64>(),
            gate,
        }
    }
}

// === impl Supervisor: carrying out effects ===

impl Supervisor {
    /// Carries out a step's effects in order; incident changes they cause come last.
    async fn carry_out(self: &Arc<Self>, key: &SessionRef, decided: Decided, now: UnixMs) {
        let Decided {
            effects,
            scope,
            durable,
            settled,
        } = decided;
        if settled {
            self.notifier.recovered(key);
        }
        let mut changes = Vec::new();
        for effect in effects {
            match effect {
                Effect::Transition { from, to, reason } => {
                    self.transition(key, from, to, reason, now).await;
                }
                Effect::Notify(notice) => {
                    crate::metrics::notice(notice.kind());
                    if let Notice::NeedsHuman(why) = &notice {
                        self.notifier.needs_human(key, why);
                    }
                    changes.extend(self.correlate(key, &notice, scope.as_deref(), now));
                    self.events.publish(
                        &key.node_id,
                        &key.session_name,
                        notice.kind(),
                        notice.to_string(),
                        None,
                    );
                }
                Effect::Command {
                    action: action @ Action::Gate { .. },
                    reason,
                    ..
                } => self.gate(key, action, reason),
                Effect::Command {
                    action,
                    reason,
                    incarnation,
                } => self.command(key, action, incarnation, &reason).await,
                Effect::Triage(case) => self.triage(key, case),
                Effect::Persist => {
                    if let Some(d) = &durable {
                        self.persist(key, d, now).await;
                    }
                }
            }
        }
        self.incident_changes(changes).await;
    }

    /// Records and announces a state change.
    async fn transition(
        &self,
        key: &SessionRef,
        from: SessionState,
        to: SessionState,
        reason: String,
        now: UnixMs,
    ) {
        crate::metrics::transition(to);
        self.events.publish(
            &key.node_id,
            &key.session_name,
            "transition",
            format!("{} -> {}: {reason}", from.as_str(), to.as_str()),
            Some(to),
        );
        self.recorder.record(Write::Transition(TransitionRow {
            session: key.clone(),
            at_ms: now,
            from: from.as_str().to_owned(),
            to: to.as_str().to_owned(),
            reason,
        }));
    }

    /// Feeds the notices correlation reads (rate limits, deaths) to the correlator. Among
    /// replicas a rate limit's start, renewal and end are recorded instead, for the leader to
    /// correlate across the fleet (`crate::replica`): written on change only, through the
    /// recorder (queued, retried and journaled like every write).
    fn correlate(
        &self,
        key: &SessionRef,
        notice: &Notice,
        scope: Option<&str>,
        now: UnixMs,
    ) -> Vec<Change> {
        if self.replica.get().is_some() {
            match (notice, scope) {
                (
                    Notice::RateLimited { until, .. } | Notice::RateLimitRenewed { until, .. },
                    Some(s),
                ) => {
                    self.recorder.record(Write::RateLimit(RateLimitRow {
                        session: key.clone(),
                        scope: s.to_owned(),
                        at_ms: now,
                        until_ms: *until,
                    }));
                    return Vec::new();
                }
                (Notice::RateLimitCleared { .. }, Some(_)) => {
                    self.recorder.record(Write::RateLimitOver {
                        session: key.clone(),
                    });
                    return Vec::new();
                }
                _ => {}
            }
        }
        let policy = self.policy();
        let mut c = lock(&self.correlator);
        match (notice, scope) {
            (
                Notice::RateLimited { until, .. } | Notice::RateLimitRenewed { until, .. },
                Some(s),
            ) => c.rate_limited(key, s, *until, now, &policy),
            (Notice::RateLimitCleared { .. }, Some(s)) => c.rate_cleared(key, s, now),
            (Notice::AgentDied { .. }, _) => c.death(key, now, &policy),
            (Notice::GateEscalated { .. }, _) => c.gate(key, Some(notice.to_string()), now),
            (Notice::GatePassed { .. }, _) => c.gate(key, None, now),
            _ => Vec::new(),
        }
    }

    /// Sends a decided command as it is (a destructive one already holds its fleet-budget token,
    /// and was decided only for a reachable node). When the node dropped in between, the send
    /// fails: that is announced (`command_not_sent`), not silently dropped.
    async fn command(
        &self,
        key: &SessionRef,
        action: Action,
        incarnation: Option<Incarnation>,
        reason: &str,
    ) {
        let name = action.name();
        if let Err(e) = self
            .dispatch
            .send(key, action, incarnation, Origin::Policy, reason)
            .await
        {
            tracing::warn!(node = %key.node_id, session = %key.session_name, error = %e, "policy command not sent");
            self.events.publish(
                &key.node_id,
                &key.session_name,
                "command_not_sent",
                format!("{name} not sent: {e} ({reason})"),
                None,
            );
        }
    }

    /// Asks triage in the background; the verdict comes back through the next tick.
    fn triage(self: &Arc<Self>, key: &SessionRef, case: TriageCase) {
        let sup = self.clone();
        let key = key.clone();
        let policy = self.policy();
        self.tasks.spawn(async move {
            let screen = sup
                .dispatch
                .call(
                    &key,
                    Action::Capture { lines: 40 },
                    None,
                    Origin::Policy,
                    "triage reads the screen",
                )
                .await
                .map(|r| r.output)
                .unwrap_or_default();
            let verdict = crate::triage::ask(
                &policy.triage,
                policy.triage_timeout,
                &key.node_id,
                &key.session_name,
                &case,
                &screen,
            )
            .await;
            // Applied by the next tick (a direct call would make apply recursive).
            if sup.verdicts.send((key, verdict)).await.is_err() {
                tracing::warn!("triage verdict dropped: controller stopping");
            }
        });
    }

    /// Runs a quality gate on the session's node in the background; its outcome comes back
    /// through the next tick as [`Input::Gate`].
    fn gate(self: &Arc<Self>, key: &SessionRef, action: Action, reason: String) {
        let sup = self.clone();
        let key = key.clone();
        let runs = match &action {
            Action::Gate { timeout_ms, .. } => {
                std::time::Duration::from_millis((*timeout_ms).into())
            }
            _ => std::time::Duration::ZERO,
        };
        self.tasks.spawn(async move {
            let result = match sup
                .dispatch
                .call_running(&key, action, Origin::Policy, &reason, runs)
                .await
            {
                Ok(r) if r.status() == argus_proto::v1::CommandStatus::Ok => GateResult::Ran {
                    exit: r.gate_exit,
                    timed_out: r.gate_timed_out,
                    output: r.output,
                },
                Ok(r) => GateResult::NotRun(format!("{}: {}", r.status().as_str_name(), r.message)),
                Err(e) => GateResult::NotRun(e.to_string()),
            };
            if sup.gates.send((key, result)).await.is_err() {
                tracing::warn!("gate outcome dropped: controller stopping");
            }
        });
    }

    /// Persists a session's durable state.
    async fn persist(&self, key: &SessionRef, durable: &Durable, now: UnixMs) {
        match serde_json::to_string(durable) {
            Ok(data) => {
                self.recorder.record(Write::Durable {
                    session: key.clone(),
                    data,
                    at_ms: now,
                });
            }
            Err(e) => {
                tracing::error!(node = %key.node_id, session = %key.session_name, error = %e, "durable state not serialisable")
            }
        }
    }
}

// === impl Supervisor: incidents and policy ===

impl Supervisor {
    /// Records, announces and notifies incident changes.
    async fn incident_changes(&self, changes: Vec<Change>) {
        for change in changes {
            let (kind, i) = match &change {
                Change::Opened(i) => ("incident_opened", i),
                Change::Reminder(i) => ("incident_reminder", i),
                Change::Closed(i) => ("incident_closed", i),
            };
            if let Change::Opened(i) = &change {
                crate::metrics::incident_opened(i.kind);
            }
            let node = if i.kind == IncidentKind::HostSilent || i.kind == IncidentKind::MassDeath {
                i.scope.as_str()
            } else {
                ""
            };
            self.events.publish(
                node,
                "",
                kind,
                format!("{} {} [{}]: {}", i.kind.as_str(), i.scope, i.id, i.summary),
                None,
            );
            // Among replicas the leader posts incident changes from the store (once per change
            // and per kind and scope, see `Replica::notify_changes`); alone, this process does.
            if self.replica.get().is_none() {
                self.notifier.incident(&change);
            }
            self.recorder.record(Write::Incident(incident_row(i)));
        }
    }

    /// The notifier (the leader replica posts incident changes through it).
    pub(crate) fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    /// The kinds of the open incidents, one entry per incident: this process's, and among
    /// replicas the fleet-wide provider incidents on the leader only (so that the replicas'
    /// gauges add up).
    pub fn open_incident_kinds(&self) -> Vec<IncidentKind> {
        let mut kinds = lock(&self.correlator).open_kinds();
        if self.replica.get().is_some_and(|r| r.is_leader()) {
            let n = lock(&self.fleet_limits).len();
            kinds.extend(std::iter::repeat_n(IncidentKind::ProviderLimit, n));
        }
        kinds
    }

    /// Replicas: the open fleet-wide provider incidents as just read from the store.
    pub fn set_fleet_limits(&self, open: Vec<OpenLimit>) {
        *lock(&self.fleet_limits) = open.into_iter().map(|o| (o.scope.clone(), o)).collect();
    }

    /// A node attached (or came back on a new stream): it is up, and a silent-host incident of
    /// it ends.
    pub async fn node_up(&self, node_id: &str, now: UnixMs) {
        let changes = lock(&self.correlator).node_health(node_id, Health::Up, now);
        self.incident_changes(changes).await;
    }

    /// The store's writes fail (`Some(cause)`) or work again (`None`): the `store_failing`
    /// incident opens or closes.
    pub async fn store_health(&self, failing: Option<&str>, now: UnixMs) {
        let changes = lock(&self.correlator).store(failing, now);
        self.incident_changes(changes).await;
    }

    /// Acknowledges an open incident: this process's, or among replicas one of the leader's
    /// fleet-wide ones (acknowledged in the store).
    pub async fn ack_incident(
        &self,
        id: &str,
        by: &str,
        now: UnixMs,
    ) -> Result<Option<IncidentRow>, crate::replica::ReplicaError> {
        let acked = lock(&self.correlator).ack(id, by, now);
        let row = match (acked, self.replica.get()) {
            (Some(i), _) => {
                let row = incident_row(&i);
                self.recorder.record(Write::Incident(row.clone()));
                row
            }
            (None, Some(r)) => match r.ack_fleet_incident(id, by, now).await? {
                Some(row) => row,
                None => return Ok(None),
            },
            (None, None) => return Ok(None),
        };
        self.events.publish(
            "",
            "",
            "incident_acked",
            format!("{} acknowledged by {by}", row.id),
            None,
        );
        Ok(Some(row))
    }

    /// The policy's guarded files as the node agents get them: the base policy's (group ""),
    /// then each group's whose guards differ from the base.
    pub fn guards_message(&self) -> argus_proto::v1::ControllerMessage {
        use argus_proto::v1 as pb;
        let policy = self.policy();
        let entry = |group: &str, g: &argus_decide::policy::Guard| pb::Guard {
            group: group.to_owned(),
            path: g.path.clone(),
            marker: g.marker.clone(),
        };
        let mut guards: Vec<pb::Guard> = policy.guards.iter().map(|g| entry("", g)).collect();
        for (name, p) in &policy.groups {
            if p.guards != policy.guards {
                guards.extend(p.guards.iter().map(|g| entry(name, g)));
            }
        }
        pb::ControllerMessage {
            msg: Some(pb::controller_message::Msg::Guards(pb::Guards { guards })),
        }
    }

    /// The policy's selectors as the node agents get them (labels only, never commands: the
    /// policy refuses those at load).
    pub fn selectors_message(&self) -> argus_proto::v1::ControllerMessage {
        use argus_proto::v1 as pb;
        let selectors = self.policy().selectors.iter().map(|s| s.to_pb()).collect();
        pb::ControllerMessage {
            msg: Some(pb::controller_message::Msg::Selectors(pb::Selectors {
                selectors,
            })),
        }
    }

    /// Sends the guarded files and the selectors to every attached node agent (after a policy
    /// reload).
    fn send_guards(&self) {
        let msgs = [self.guards_message(), self.selectors_message()];
        for node in self.fleet.up_nodes() {
            if let Some(link) = self.fleet.node(&node).and_then(|n| n.link) {
                for msg in &msgs {
                    let _ = link.try_send(Ok(msg.clone()));
                }
            }
        }
    }

    /// Reloads the policy file when it changed; a bad file is refused and the old policy stays.
    pub fn reload_policy(&self) {
        let Some(path) = &self.policy_file else {
            return;
        };
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        {
            let mut last = lock(&self.policy_mtime);
            if mtime == *last {
                return;
            }
            *last = mtime;
        }
        match crate::load_policy(Some(path)) {
            Ok(p) => {
                self.dispatch.set_timeout(p.command_timeout);
                self.fleet.set_silence(p.node_suspect_after);
                if let Ok(mut cur) = self.policy.write() {
                    *cur = Arc::new(p);
                }
                self.send_guards();
                self.events.publish(
                    "",
                    "",
                    "policy_reloaded",
                    format!("policy reloaded from {}", path.display()),
                    None,
                );
            }
            Err(e) => {
                tracing::error!(
                    error = format!("{e:#}"),
                    "policy file refused; the old policy stays"
                );
                self.events.publish(
                    "",
                    "",
                    "policy_rejected",
                    format!("{e:#}; the old policy stays"),
                    None,
                );
            }
        }
    }

    /// One controller tick: triage verdicts, then the sessions whose due time has come on nodes
    /// that are up (a silent node's sessions get no per-session action), and expiry of
    /// unanswered commands. Node health and incidents run on their own, shorter interval
    /// ([`Self::health_tick`]).
    pub async fn tick(self: &Arc<Self>, now: UnixMs) {
        self.reload_policy();
        let policy = self.policy();
        self.verdicts(now).await;
        self.gate_results(now).await;
        self.due_sessions(now, &policy).await;
        // Alarms and handoff messages are typed into agents: like the policy's actions, they
        // wait while the store refuses writes (their rows would live only in memory, and a
        // SIGKILL then would have them typed again). They are late, never lost.
        if self.store_ok() {
            self.due_alarms(now).await;
            self.handoff_tick(now).await;
        }
        self.dispatch.expire(now).await;
    }

    /// The store takes writes (the recorder is not failing) and, among replicas, the shared
    /// database answers: a replica that cannot reach it cannot keep an audit row, nor know
    /// whether another replica took the node over.
    fn store_ok(&self) -> bool {
        !self.recorder.health().borrow().is_failing()
            && self.replica.get().is_none_or(|r| r.db_reachable())
    }

    /// Node health alone, between ticks (the controller runs it on a short interval of its own).
    pub async fn health_tick(&self, now: UnixMs) {
        self.node_health(now, &self.policy()).await;
        let up = self.fleet.up_nodes();
        for (node, warning) in crate::auth::due_expiry_warnings(up.iter().map(String::as_str), now)
        {
            tracing::warn!(node = %node, %warning, "node certificate expiring");
            self.events
                .publish(&node, "", "cert_expiring", warning, None);
        }
    }

    /// Node health from silence, host incidents, and the controller's self-suspicion.
    async fn node_health(&self, now: UnixMs, policy: &Policy) {
        let changed = self
            .fleet
            .update_health(now, |silent| health::from_silence(silent, policy));
        let mut changes = Vec::new();
        for (node, health, silent) in changed {
            let kind = match health {
                Health::Up => "node_up",
                Health::Suspect => "node_suspect",
                Health::Down => "node_down",
            };
            self.events.publish(
                &node,
                "",
                kind,
                format!("node {} (silent for {} ms)", health.as_str(), silent),
                None,
            );
            changes.extend(lock(&self.correlator).node_health(&node, health, now));
        }
        let (total, silent) = health::fleet_silence(self.fleet.node_liveness(), now);
        {
            let mut c = lock(&self.correlator);
            changes.extend(c.fleet(total, silent, now, policy));
            changes.extend(c.tick(now, policy));
        }
        self.incident_changes(changes).await;
    }

    /// Applies the triage verdicts that arrived since the last tick.
    async fn verdicts(self: &Arc<Self>, now: UnixMs) {
        let verdicts: Vec<_> = {
            let mut rx = self.verdicts_rx.lock().await;
            std::iter::from_fn(|| rx.try_recv().ok()).collect()
        };
        for (key, verdict) in verdicts {
            self.apply(&key, Input::Verdict(verdict), now).await;
        }
    }

    /// Applies the quality gate outcomes that arrived since the last tick.
    async fn gate_results(self: &Arc<Self>, now: UnixMs) {
        let results: Vec<_> = {
            let mut rx = self.gates_rx.lock().await;
            std::iter::from_fn(|| rx.try_recv().ok()).collect()
        };
        for (key, result) in results {
            self.apply(&key, Input::Gate(result), now).await;
        }
    }

    /// Steps the sessions whose due time has come (restarts waiting for their backoff,
    /// cooldowns ending, ladders, sessions idle long enough to stall), and takes out of the live
    /// view the sessions that ended longer than `forget_dead_after` ago and those of nodes gone
    /// longer than `limits.node_retention` (their history stays in the store). A busy fleet costs
    /// one read per session per tick.
    async fn due_sessions(self: &Arc<Self>, now: UnixMs, policy: &Policy) {
        let up = self.fleet.up_nodes();
        let forget = policy.forget_dead_after.as_millis() as i64;
        let retention = self.limits.node_retention.as_millis() as i64;
        let gone = self.fleet.absent_nodes(now, self.started_ms, retention);
        enum Todo {
            Tick(SessionRef),
            Forget(SessionRef),
        }
        let todo = self.fleet.map_sessions(None, |key, t| {
            if gone.contains(&key.node_id) || (t.ended() && now - t.last_change_ms > forget) {
                Some(Todo::Forget(key.clone()))
            } else if !up.contains(&key.node_id) {
                None
            } else if t.next_due.is_some_and(|due| due <= now) {
                Some(Todo::Tick(key.clone()))
            } else {
                None
            }
        });
        for node in &gone {
            let n = self.fleet.node_session_count(node);
            tracing::info!(node = %node, sessions = n, "node gone longer than its retention: its sessions leave the live view");
            self.events.publish(
                node,
                "",
                "node_retired",
                format!(
                    "node gone for more than {} s (limits.node_retention): its {n} sessions leave the live view; their history stays in the store",
                    retention / 1000
                ),
                None,
            );
        }
        for todo in todo.into_iter().flatten() {
            match todo {
                Todo::Forget(key) => {
                    self.notifier.recovered(&key);
                    self.fleet.remove_session(&key);
                }
                Todo::Tick(key) => self.apply(&key, Input::Tick, now).await,
            }
        }
        for node in &gone {
            self.fleet.forget_node(node);
        }
    }
}

// === impl Supervisor: replicas ===

impl Supervisor {
    /// Replicas: `node_id` attached here after another replica owned it. Its sessions as the
    /// store has them (cooldowns, crash records, restart holds: the durable state) replace this
    /// process's older view, and its open incidents, handoffs, pending alarms and unanswered
    /// commands are taken over, as at a restart: the node's first snapshot reconciles the sessions, so a
    /// takeover looks like a reconnect, not deaths.
    pub async fn adopt_node(
        &self,
        node_id: &str,
        now: UnixMs,
    ) -> Result<(), crate::store::StoreError> {
        let recorded = self.store.node_sessions(node_id).await?;
        let durables = self.store.node_durable_states::<Durable>(node_id).await?;
        let incidents: Vec<IncidentRow> = self
            .store
            .incidents(false, 10_000)
            .await?
            .into_iter()
            .filter(|i| i.scope == node_id)
            .collect();
        let alarms: Vec<_> = self
            .store
            .alarms(false, u32::MAX)
            .await?
            .into_iter()
            .filter(|a| a.session.node_id == node_id)
            .collect();
        // Commands the previous owner left unanswered: closed here at their deadline, or matched
        // when the node agent's answer comes.
        let pending: Vec<_> = self
            .store
            .pending_commands()
            .await?
            .into_iter()
            .filter(|c| c.session.node_id == node_id && !self.dispatch.waiting_for(&c.command_id))
            .collect();
        for key in self.fleet.node_sessions(node_id) {
            self.fleet.remove_session(&key);
        }
        restore_sessions(&self.fleet, recorded, durables, now, &self.policy());
        lock(&self.correlator).restore(restore_incidents(incidents));
        let handoffs = crate::handoff::restore_node(self.store.as_ref(), node_id).await?;
        self.handoffs.take_over(node_id, handoffs);
        self.alarms.forget_node(node_id);
        self.alarms.restore(alarms);
        self.dispatch.adopt(pending);
        Ok(())
    }
}

/// Puts the sessions the store knows back into the live fleet, as they were recorded: the node
/// agents' first snapshots then reconcile them (see `argus_decide::detect::recover`). Sessions
/// that ended longer than `forget_dead_after` ago stay in the store only.
fn restore_sessions(
    fleet: &Fleet,
    recorded: Vec<(SessionRef, (SessionState, UnixMs))>,
    durables: Vec<(SessionRef, Durable)>,
    now: UnixMs,
    policy: &Policy,
) {
    let forget = policy.forget_dead_after.as_millis() as i64;
    let mut durables: std::collections::HashMap<SessionRef, Durable> =
        durables.into_iter().collect();
    let mut restored = 0usize;
    let mut sessions: Vec<(SessionRef, SessionState, UnixMs)> = recorded
        .into_iter()
        .map(|(k, (state, at))| (k, state, at))
        .collect();
    // A session seen but never recorded in a transition (still booting) has a durable row only.
    let recorded_keys: std::collections::HashSet<SessionRef> =
        sessions.iter().map(|(k, _, _)| k.clone()).collect();
    let booting: Vec<SessionRef> = durables
        .keys()
        .filter(|k| !recorded_keys.contains(*k))
        .cloned()
        .collect();
    sessions.extend(booting.into_iter().map(|k| (k, SessionState::Booting, now)));
    for (key, state, at) in sessions {
        let t = Track::recovered(now, state, at, durables.remove(&key));
        if t.ended() && now - at > forget {
            continue;
        }
        restored += 1;
        fleet.with_session(&key, Some(|| t), |_| ());
    }
    if restored > 0 {
        tracing::info!(
            sessions = restored,
            "sessions restored from the store; the node agents' first snapshots reconcile them"
        );
    }
}

fn incident_row(i: &Incident) -> IncidentRow {
    IncidentRow {
        id: i.id.clone(),
        kind: i.kind.as_str().to_owned(),
        scope: i.scope.clone(),
        opened_ms: i.opened_ms,
        closed_ms: i.closed_ms.unwrap_or(0),
        acked_ms: i.acked_ms.unwrap_or(0),
        acked_by: i.acked_by.clone(),
        summary: i.summary.clone(),
        sessions: i.sessions,
        until_ms: i.until_ms,
    }
}

/// Incidents read back from the store; a row of an unknown kind (written by a newer controller)
/// is reported and left in the store, not silently dropped.
pub fn restore_incidents(rows: Vec<IncidentRow>) -> Vec<Incident> {
    rows.into_iter()
        .filter_map(|r| {
            let (id, kind) = (r.id.clone(), r.kind.clone());
            let restored = incident_from_row(r);
            if restored.is_none() {
                tracing::warn!(incident = %id, kind = %kind, "stored incident of an unknown kind not restored");
            }
            restored
        })
        .collect()
}

/// The stored form back as an incident.
pub fn incident_from_row(r: IncidentRow) -> Option<Incident> {
    Some(Incident {
        kind: IncidentKind::parse(&r.kind)?,
        id: r.id,
        scope: r.scope,
        opened_ms: r.opened_ms,
        closed_ms: (r.closed_ms != 0).then_some(r.closed_ms),
        acked_ms: (r.acked_ms != 0).then_some(r.acked_ms),
        acked_by: r.acked_by,
        summary: r.summary,
        sessions: r.sessions,
        until_ms: r.until_ms,
        notified_ms: r.opened_ms,
    })
}
