//! The probe round: one `list-panes -a` and one `list-clients` per tmux server, a capture only for
//! panes whose activity moved (and now and then for the rest), the agent found in each pane's
//! process tree, and a pidfd watch on every agent and pane process so that deaths are pushed at
//! once instead of waiting for the next round.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use argus_proto::v1 as pb;
use argus_shared::ids::Incarnation;
use argus_shared::profile::{Classification, Condition, Profiles};
use argus_shared::screen;
use argus_shared::time::{local_utc_offset_secs, now_ms};
use tokio::sync::{Notify, watch};
use tokio::task::{AbortHandle, JoinSet};

use crate::events::EventBuffer;
use crate::procs;
use crate::tmux::{LABELS, Pane, Tmux};

/// Programs that are shells, not agents: a pane running only one of these has no agent.
const SHELLS: [&str; 10] = [
    "bash", "zsh", "sh", "dash", "fish", "ksh", "tcsh", "csh", "nu", "login",
];
/// Most processes looked at under one pane.
const TREE_LIMIT: usize = 64;
/// Window sizes of gone sessions kept for a restart that creates one anew.
const GONE_SIZES: usize = 1024;

/// Key of a session: (tmux socket path, session name).
pub type SessionKey = (String, String);

/// The latest observation of every session on the node.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Observations by session.
    pub sessions: BTreeMap<SessionKey, pb::SessionObservation>,
    /// Increases with every probe round.
    pub round: u64,
    /// The last window size (columns, rows) of sessions that are gone, so that a restart that
    /// creates one anew gives it back its size. At most [`GONE_SIZES`] are kept.
    pub gone_sizes: Arc<BTreeMap<SessionKey, (u32, u32)>>,
}

impl Snapshot {
    /// The window size session `key` has, or had when it was last seen.
    pub fn window_size(&self, key: &SessionKey) -> Option<(u32, u32)> {
        let live = self
            .sessions
            .get(key)
            .map(|o| (o.window_width, o.window_height));
        live.or_else(|| self.gone_sizes.get(key).copied())
            .filter(|&(w, h)| w > 0 && h > 0)
    }
}

/// Probe settings.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// Screen lines hashed and classified.
    pub lines: usize,
    /// Re-capture a pane whose activity did not move after this many rounds.
    pub recapture_every: u64,
    /// Labels for untagged sessions (`[[selectors]]` of the node's configuration).
    pub selectors: Arc<argus_shared::selector::Selectors>,
    /// The controller policy's selectors, tried after the node's own.
    pub policy_selectors: watch::Receiver<Arc<argus_shared::selector::Selectors>>,
}

#[derive(Debug, Clone)]
struct Agent {
    inc: Incarnation,
    /// Its `comm` when found: a change means it exec'd into another program.
    comm: String,
    /// Its command line, arguments joined by spaces (what a selector's `program` matches).
    cmdline: String,
    name: String,
    profile: Option<String>,
    cpu_ticks: u64,
}

#[derive(Debug, Default)]
struct PaneCache {
    fingerprint: (i64, u64, u32),
    captured_round: u64,
    hash: String,
    /// The hash of the same lines with the profile's animation masked.
    progress: String,
    classification: Classification,
    /// What the pane title said, and since when (see [`Reading`]).
    title: TitleSeen,
    /// When the screen's condition last changed (Unix ms).
    screen_since_ms: i64,
    /// What the agent's own files said (Claude Code), and when they were last read.
    files: Option<crate::agentfiles::ClaudeState>,
    files_read_ms: i64,
    agent: Option<Agent>,
    pane_start: u64,
    /// The profile the screen was last classified with.
    classified_as: Option<String>,
    /// The selector that last matched this pane and the labels it gave: kept while the pane
    /// lives without an agent, so that a dead agent keeps the restart command it was adopted with.
    adopted: Option<(usize, Vec<(&'static str, String)>)>,
}

/// Watches every configured tmux server. Owned by the probe task.
pub struct Prober {
    servers: Vec<Arc<Tmux>>,
    profiles: Arc<Profiles>,
    config: ProbeConfig,
    panes: HashMap<(String, String), PaneCache>,
    watches: HashMap<Incarnation, AbortHandle>,
    watchers: JoinSet<()>,
    events: Arc<EventBuffer>,
    wake: Arc<Notify>,
    round: u64,
    /// Screens captured in the current round.
    captures: u64,
    ms_per_tick: u64,
    /// Window sizes of sessions that were seen, by session (oldest first when trimmed).
    sizes: BTreeMap<SessionKey, (u32, u32, u64)>,
    gone_sizes: Arc<BTreeMap<SessionKey, (u32, u32)>>,
    /// What the agents' hooks reported through the local socket.
    hooks: crate::hooks::Board,
    /// The last round's observations, kept for a server that cannot be listed this round.
    last: BTreeMap<SessionKey, pb::SessionObservation>,
    /// The agents watched lately, kept across node agent restarts.
    seen: crate::seen::Seen,
}

impl Prober {
    /// A prober over `servers`; deaths go to `events` and wake `wake`.
    pub fn new(
        servers: Vec<Arc<Tmux>>,
        profiles: Arc<Profiles>,
        config: ProbeConfig,
        events: Arc<EventBuffer>,
        wake: Arc<Notify>,
    ) -> Self {
        Self {
            servers,
            profiles,
            config,
            panes: HashMap::new(),
            watches: HashMap::new(),
            watchers: JoinSet::new(),
            events,
            wake,
            round: 0,
            captures: 0,
            ms_per_tick: procs::ms_per_tick(),
            sizes: BTreeMap::new(),
            gone_sizes: Arc::default(),
            hooks: crate::hooks::Board::new(Duration::from_secs(600)),
            last: BTreeMap::new(),
            seen: crate::seen::Seen::default(),
        }
    }

    /// Keeps the agents it watches in `path` (see [`crate::seen`]), and reports now the exits
    /// of those an earlier node agent process watched that no longer run.
    #[must_use]
    pub fn with_seen(mut self, path: std::path::PathBuf) -> Self {
        let (seen, exits) = crate::seen::Seen::load(Some(path), argus_shared::time::now_ms());
        if !exits.is_empty() {
            tracing::info!(
                agents = exits.len(),
                "agents an earlier node agent watched have exited since"
            );
        }
        for e in exits {
            self.events.push(e);
        }
        self.seen = seen;
        self
    }

    /// Reads the agents' hook reports from `board` (the one the local socket writes).
    #[must_use]
    pub fn with_hooks(mut self, board: crate::hooks::Board) -> Self {
        self.hooks = board;
        self
    }

    /// One probe round over every server.
    pub async fn round(&mut self) -> Snapshot {
        let started = std::time::Instant::now();
        self.round += 1;
        self.captures = 0;
        while self.watchers.try_join_next().is_some() {}
        let mut snapshot = Snapshot {
            round: self.round,
            ..Default::default()
        };
        let mut live_panes = HashSet::new();
        let mut live_watches = HashSet::new();
        for tmux in self.servers.clone() {
            let socket = tmux.socket().display().to_string();
            // One failed list-panes (the control client's session was just killed, say) must not
            // read as every session of that server closed: try once more, then carry over the
            // last round's view of that server, so a fault never looks like a death.
            let listed = match tmux.list_panes().await {
                Ok(p) => Ok(p),
                Err(_) => tmux.list_panes().await,
            };
            let panes = match listed {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(socket = %socket, error = %e, "list-panes failed: the last view of this server is kept");
                    for (key, obs) in self.last.range((socket.clone(), String::new())..) {
                        if key.0 != socket {
                            break;
                        }
                        snapshot.sessions.insert(key.clone(), obs.clone());
                    }
                    live_panes.extend(
                        self.panes
                            .keys()
                            .filter(|(s, _)| *s == socket)
                            .cloned()
                            .collect::<Vec<_>>(),
                    );
                    live_watches.extend(self.watches.keys().copied());
                    continue;
                }
            };
            let humans = if panes.is_empty() {
                Vec::new()
            } else {
                tmux.human_clients().await.unwrap_or_default()
            };
            for pane in primary_panes(panes) {
                let key = (socket.clone(), pane.pane_id.clone());
                live_panes.insert(key.clone());
                let obs = self.observe(&tmux, &socket, &pane, &humans, &key).await;
                if let Some(agent) = &obs.agent {
                    let inc = Incarnation {
                        pid: agent.pid,
                        start_time: agent.start_time,
                    };
                    live_watches.insert(inc);
                    self.seen.saw(inc, &socket, &pane.session_name, now_ms());
                }
                if !pane.pane_dead
                    && let Some(start) = self.panes.get(&key).map(|c| c.pane_start)
                {
                    live_watches.insert(Incarnation {
                        pid: pane.pane_pid,
                        start_time: start,
                    });
                }
                snapshot
                    .sessions
                    .insert((socket.clone(), pane.session_name.clone()), obs);
            }
        }
        self.panes.retain(|k, _| live_panes.contains(k));
        self.hooks.retain(|k| snapshot.sessions.contains_key(k));
        self.last = snapshot.sessions.clone();
        self.remember_sizes(&snapshot);
        snapshot.gone_sizes = self.gone_sizes.clone();
        self.watches.retain(|inc, handle| {
            let keep = live_watches.contains(inc);
            if !keep {
                handle.abort();
            }
            keep
        });
        self.seen.save(now_ms());
        crate::metrics::probe_round(started.elapsed(), self.captures, snapshot.sessions.len());
        snapshot
    }

    /// One session's observation: its agent, its screen, then the pure
    /// [`observation`] of both; and a death watch on the agent and the pane's process.
    async fn observe(
        &mut self,
        tmux: &Tmux,
        socket: &str,
        pane: &Pane,
        humans: &[String],
        key: &(String, String),
    ) -> pb::SessionObservation {
        let known = self.panes.get(key).and_then(|c| c.agent.clone());
        let (agent, pane_start) = self.agent(pane, known).await;
        let cache = self.panes.entry(key.clone()).or_default();
        cache.agent = agent;
        cache.pane_start = pane_start;
        let policy = self.config.policy_selectors.borrow().clone();
        let adopted = adopt([&self.config.selectors, &policy], socket, pane, cache);
        let pane = adopted.as_ref().unwrap_or(pane);
        let cache = self.panes.entry(key.clone()).or_default();
        let profile = profile_name(pane, cache.agent.as_ref());
        self.screen(tmux, pane, key, profile.as_deref()).await;
        self.agent_files(key, profile.as_deref()).await;

        let cache = self.panes.entry(key.clone()).or_default();
        let agent = cache.agent.clone();
        let classifier = profile
            .as_deref()
            .and_then(|n| self.profiles.get(n))
            .unwrap_or_else(|| self.profiles.generic());
        let now = now_ms();
        cache
            .title
            .update(&pane.title, classifier.title_condition(&pane.title), now);
        let mut readings = Vec::with_capacity(3);
        let heard = self
            .hooks
            .get(&(socket.to_owned(), pane.session_name.clone()));
        if let Some(h) = &heard {
            readings.push(Reading {
                source: source::HOOK,
                classification: Classification {
                    condition: h.condition,
                    reset_at: None,
                },
                since_ms: h.since_ms,
                heard_ms: h.heard_ms,
                fresh_ms: self.hooks.fresh_ms(h.condition),
            });
        }
        if let Some(at) = cache.files.as_ref().and_then(|f| f.rate_limited_at_ms) {
            readings.push(Reading {
                source: source::TRANSCRIPT,
                classification: Classification {
                    condition: Condition::RateLimited,
                    reset_at: None,
                },
                since_ms: at,
                heard_ms: at,
                fresh_ms: TRANSCRIPT_FRESH_MS,
            });
        }
        readings.push(cache.title.reading());
        let screen = (&cache.classification, cache.screen_since_ms);
        let (classification, decided_by) = precedence(screen, &readings, now);
        let obs = observation(&Seen {
            socket,
            pane,
            humans,
            agent: agent.as_ref(),
            hash: &cache.hash,
            progress: &cache.progress,
            classification: &classification,
            decided_by,
            agent_session_id: cache
                .files
                .as_ref()
                .map(|f| f.session_id.as_str())
                .filter(|id| !id.is_empty())
                .or(heard.as_ref().map(|h| h.session_id.as_str()))
                .unwrap_or(""),
            profile: profile.unwrap_or_else(|| self.profiles.generic().name.clone()),
            ms_per_tick: self.ms_per_tick,
        });

        if let Some(a) = &agent {
            self.watch(a.inc, socket, &pane.session_name, true);
        }
        if !pane.pane_dead && pane_start != 0 {
            let inc = Incarnation {
                pid: pane.pane_pid,
                start_time: pane_start,
            };
            if agent.as_ref().is_none_or(|a| a.inc != inc) {
                self.watch(inc, socket, &pane.session_name, false);
            }
        }
        obs
    }

    /// The pane's agent (the `known` one while it lives, otherwise searched for in the pane's
    /// process tree) and the pane process's start time (0 when unknown). Reads `/proc` off the
    /// runtime.
    async fn agent(&self, pane: &Pane, known: Option<Agent>) -> (Option<Agent>, u64) {
        let profiles = self.profiles.clone();
        let pane_pid = pane.pane_pid;
        let dead = pane.pane_dead;
        tokio::task::spawn_blocking(move || {
            let pane_start = procs::stat(pane_pid).map(|s| s.start_time).unwrap_or(0);
            if dead {
                return (None, pane_start);
            }
            (resolve_agent(&profiles, pane_pid, known), pane_start)
        })
        .await
        .unwrap_or((None, 0))
    }

    /// Re-reads and classifies the pane's screen into its cache, but only when the pane's
    /// activity moved, the profile changed, or now and then.
    async fn screen(
        &mut self,
        tmux: &Tmux,
        pane: &Pane,
        key: &(String, String),
        profile: Option<&str>,
    ) {
        let round = self.round;
        let cache = self.panes.entry(key.clone()).or_default();
        let fingerprint = (pane.window_activity, pane.history_size, pane.cursor_y);
        let stale = round.saturating_sub(cache.captured_round) >= self.config.recapture_every;
        if cache.captured_round != 0
            && fingerprint == cache.fingerprint
            && !stale
            && cache.classified_as.as_deref() == profile
        {
            return;
        }
        self.captures += 1;
        match tmux.capture(&pane.pane_id, self.config.lines as u32).await {
            Ok(text) => {
                let tail = screen::last_lines(&text, self.config.lines);
                cache.hash = screen::hash(tail);
                let classifier = profile
                    .and_then(|n| self.profiles.get(n))
                    .unwrap_or_else(|| self.profiles.generic());
                cache.progress = classifier.progress_hash(&text);
                // The screen as it is now, blank rows included, not the hashed tail: full-screen
                // TUIs (Claude 2.1) pin their input box to the bottom row with blank rows above
                // it, so the last 30 non-blank rows can be all box and blanks; the profile reads
                // its own window of non-blank lines. Not the history above it either: a message
                // that scrolled off, or that a clear pushed off, is not on screen any more (a rate
                // limit read from there pinned the limit on an agent working again).
                let now_on_screen = screen::visible(&text, pane.pane_height as usize);
                let classification =
                    classifier.classify(now_on_screen, now_ms() / 1000, local_utc_offset_secs());
                if classification.condition != cache.classification.condition
                    || cache.screen_since_ms == 0
                {
                    cache.screen_since_ms = now_ms();
                }
                cache.classification = classification;
            }
            Err(e) => tracing::debug!(pane = %pane.pane_id, error = %e, "capture failed"),
        }
        cache.fingerprint = fingerprint;
        cache.captured_round = round;
        cache.classified_as = profile.map(str::to_owned);
    }

    /// Reads the agent's own state files (Claude Code's session file and transcript) into the
    /// pane's cache, at most every [`FILES_EVERY_MS`]; off the runtime. Other agents have none.
    async fn agent_files(&mut self, key: &(String, String), profile: Option<&str>) {
        let now = now_ms();
        let Some(cache) = self.panes.get_mut(key) else {
            return;
        };
        let agent = cache.agent.as_ref().map(|a| a.inc);
        let Some(inc) = agent.filter(|_| profile == Some("claude")) else {
            cache.files = None;
            return;
        };
        if now - cache.files_read_ms < FILES_EVERY_MS {
            return;
        }
        cache.files_read_ms = now;
        cache.files =
            tokio::task::spawn_blocking(move || crate::agentfiles::claude(inc.pid, inc.start_time))
                .await
                .unwrap_or(None);
    }

    /// Keeps the window size of every session seen (the newest [`GONE_SIZES`]), and rebuilds
    /// the map of gone sessions' sizes when a session went away or changed size.
    fn remember_sizes(&mut self, snapshot: &Snapshot) {
        let mut changed = false;
        for (key, o) in &snapshot.sessions {
            let size = (o.window_width, o.window_height);
            if size.0 == 0 || size.1 == 0 {
                continue;
            }
            let old = self.sizes.insert(key.clone(), (size.0, size.1, self.round));
            changed |= old.is_none_or(|(w, h, _)| (w, h) != size);
        }
        let gone = self
            .sizes
            .keys()
            .filter(|k| !snapshot.sessions.contains_key(*k))
            .count();
        if !changed && gone == self.gone_sizes.len() {
            return;
        }
        if self.sizes.len() > GONE_SIZES + snapshot.sessions.len() {
            let mut by_age: Vec<(u64, SessionKey)> = self
                .sizes
                .iter()
                .filter(|(k, _)| !snapshot.sessions.contains_key(*k))
                .map(|(k, (_, _, seen))| (*seen, k.clone()))
                .collect();
            by_age.sort();
            let excess = by_age.len().saturating_sub(GONE_SIZES);
            for (_, k) in by_age.into_iter().take(excess) {
                self.sizes.remove(&k);
            }
        }
        self.gone_sizes = Arc::new(
            self.sizes
                .iter()
                .filter(|(k, _)| !snapshot.sessions.contains_key(*k))
                .map(|(k, (w, h, _))| (k.clone(), (*w, *h)))
                .collect(),
        );
    }

    /// Starts a pidfd watch on a process unless one runs already.
    fn watch(&mut self, inc: Incarnation, socket: &str, session: &str, is_agent: bool) {
        if self.watches.contains_key(&inc) {
            return;
        }
        let fd = match procs::pidfd(inc.pid) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::debug!(pid = inc.pid, error = %e, "pidfd_open failed");
                return;
            }
        };
        let events = self.events.clone();
        let wake = self.wake.clone();
        let socket = socket.to_owned();
        let session = session.to_owned();
        let handle = self.watchers.spawn(async move {
            if procs::exited(fd).await.is_err() {
                return;
            }
            let (kind, what) = if is_agent {
                (pb::EventKind::AgentExited, "agent process exited")
            } else {
                (pb::EventKind::PaneDied, "pane process exited")
            };
            events.push(pb::Event {
                kind: kind as i32,
                tmux_socket: socket,
                session_name: session,
                process: Some(pb::Incarnation {
                    pid: inc.pid,
                    start_time: inc.start_time,
                }),
                at_ms: now_ms(),
                detail: format!("{what} (pid {})", inc.pid),
                ..Default::default()
            });
            wake.notify_one();
        });
        self.watches.insert(inc, handle);
    }
}

/// One pane per session: the first pane of its lowest-numbered window, where orchestrators start
/// the agent (`tmux new-session -s NAME CMD`).
fn primary_panes(mut panes: Vec<Pane>) -> Vec<Pane> {
    panes.sort_by(|a, b| {
        (&a.session_name, a.window_index, a.pane_index).cmp(&(
            &b.session_name,
            b.window_index,
            b.pane_index,
        ))
    });
    panes.dedup_by(|b, a| a.session_name == b.session_name);
    panes
}

/// The pane with the labels of the first selector that matches it (the node's own, then the
/// policy's) filled in where its own `@argus-*` options are unset; `None` when no selector gives
/// it anything. A pane without an
/// agent keeps what it was last adopted with (a program glob cannot match a dead agent, and the
/// restart that brings it back needs the selector's command); a pane whose agent now matches no
/// selector loses it.
fn adopt(
    [own, policy]: [&argus_shared::selector::Selectors; 2],
    socket: &str,
    pane: &Pane,
    cache: &mut PaneCache,
) -> Option<Pane> {
    if own.is_empty() && policy.is_empty() && cache.adopted.is_none() {
        return None;
    }
    let seen = argus_shared::selector::Seen {
        session: &pane.session_name,
        program: cache
            .agent
            .as_ref()
            .map(|a| (a.comm.as_str(), a.cmdline.as_str())),
        cwd: &pane.cwd,
        socket,
    };
    // Positions: the node's own selectors first, then the policy's after them.
    let found = own
        .first_match(&seen)
        .map(|m| (m.index, m.labels))
        .or_else(|| {
            policy
                .first_match(&seen)
                .map(|m| (own.len() + m.index, m.labels))
        });
    match found {
        Some((index, labels)) => {
            if cache.adopted.as_ref().is_none_or(|(i, _)| *i != index) {
                let from = if index < own.len() { "node" } else { "policy" };
                tracing::info!(session = %pane.session_name, socket, selector = index, from, "session adopted by a selector");
            }
            cache.adopted = Some((index, labels.to_vec()));
        }
        None if cache.agent.is_some() => cache.adopted = None,
        None => {}
    }
    let (_, labels) = cache.adopted.as_ref()?;
    let mut adopted = pane.clone();
    for (name, value) in labels {
        if let Some(i) = LABELS.iter().position(|l| l == name)
            && adopted.labels[i].is_empty()
        {
            adopted.labels[i] = value.clone();
        }
    }
    Some(adopted)
}

/// The profile a pane is classified with: its `@argus-profile` label, else its agent's.
fn profile_name(pane: &Pane, agent: Option<&Agent>) -> Option<String> {
    pane.label(argus_shared::labels::PROFILE)
        .map(str::to_owned)
        .or_else(|| agent.and_then(|a| a.profile.clone()))
}

/// What one probe saw of a session, the input of [`observation`].
struct Seen<'a> {
    socket: &'a str,
    pane: &'a Pane,
    /// Session names of the human clients attached to this tmux server.
    humans: &'a [String],
    agent: Option<&'a Agent>,
    hash: &'a str,
    /// The hash with the screen's animation masked.
    progress: &'a str,
    classification: &'a Classification,
    /// The source that decided `classification` ([`precedence`]).
    decided_by: &'static str,
    /// The agent's own conversation id, when its files name one.
    agent_session_id: &'a str,
    /// The profile name the screen was classified with.
    profile: String,
    ms_per_tick: u64,
}

/// The observation sent to the controller: a pure function of what the probe saw.
fn observation(seen: &Seen<'_>) -> pb::SessionObservation {
    let Seen { pane, agent, .. } = *seen;
    pb::SessionObservation {
        tmux_socket: seen.socket.to_owned(),
        session_name: pane.session_name.clone(),
        session_id: pane.session_id.clone(),
        pane_id: pane.pane_id.clone(),
        pane_pid: pane.pane_pid,
        pane_dead: pane.pane_dead,
        agent: agent.map(|a| pb::Incarnation {
            pid: a.inc.pid,
            start_time: a.inc.start_time,
        }),
        agent_name: agent.map(|a| a.name.clone()).unwrap_or_default(),
        agent_cpu_ms: agent.map_or(0, |a| a.cpu_ticks * seen.ms_per_tick),
        screen_hash: seen.hash.to_owned(),
        condition: pb::Condition::from(seen.classification.condition) as i32,
        rate_limit_reset_at: seen.classification.reset_at.unwrap_or(0),
        last_output_ms: pane.window_activity * 1000,
        attached_clients: seen
            .humans
            .iter()
            .filter(|s| **s == pane.session_name)
            .count() as u32,
        start_command: pane.start_command.clone(),
        cwd: pane.cwd.clone(),
        labels: LABELS
            .iter()
            .filter_map(|l| pane.label(l).map(|v| (l.to_string(), v.to_owned())))
            .collect(),
        profile: seen.profile.clone(),
        exit_status: if pane.pane_dead { pane.dead_status } else { -1 },
        window_width: pane.window_size.0,
        window_height: pane.window_size.1,
        progress_hash: seen.progress.to_owned(),
        decided_by: seen.decided_by.to_owned(),
        agent_session_id: seen.agent_session_id.to_owned(),
    }
}

// === Precedence of the sources ===

/// How long a pane title's reading counts after the title last changed: a CLI that stopped
/// updating its title (crashed renderer, a title left behind by an earlier program) must not
/// pin a state.
const TITLE_FRESH_MS: i64 = 5 * 60 * 1000;

/// How long a 429 in the transcript counts: the ladder's own cooldown takes over once the
/// limit is observed, and a transcript nobody writes to any more must not pin a limit.
const TRANSCRIPT_FRESH_MS: i64 = 10 * 60 * 1000;

/// How often an agent's own files are read.
const FILES_EVERY_MS: i64 = 2_000;

/// The source names an observation's `decided_by` carries.
pub mod source {
    /// The agent's own hooks (or notify program), through the local socket.
    pub const HOOK: &str = "hook";
    /// The pane's text, classified by the profile: the fallback that always works.
    pub const SCREEN: &str = "screen";
    /// The pane title the CLI set (`#{pane_title}`).
    pub const TITLE: &str = "title";
    /// The agent's own transcript (Claude Code: an API error with status 429).
    pub const TRANSCRIPT: &str = "transcript";
}

/// One source's reading of a session, beside the screen.
#[derive(Debug, Clone, PartialEq)]
struct Reading {
    source: &'static str,
    classification: Classification,
    /// When the source's condition last changed (Unix ms): the newest reading wins.
    since_ms: i64,
    /// When the source last said anything new (Unix ms).
    heard_ms: i64,
    /// The reading is stale once this long has passed since `heard_ms`.
    fresh_ms: i64,
}

/// What the pane title said, and since when.
#[derive(Debug, Default, Clone)]
struct TitleSeen {
    text: String,
    condition: Condition,
    since_ms: i64,
    heard_ms: i64,
}

impl TitleSeen {
    fn update(&mut self, text: &str, condition: Condition, now: i64) {
        if text != self.text {
            self.text = text.to_owned();
            self.heard_ms = now;
        }
        if condition != self.condition || self.since_ms == 0 {
            self.condition = condition;
            self.since_ms = now;
            self.heard_ms = now;
        }
    }

    fn reading(&self) -> Reading {
        Reading {
            source: source::TITLE,
            classification: Classification {
                condition: self.condition,
                reset_at: None,
            },
            since_ms: self.since_ms,
            heard_ms: self.heard_ms,
            fresh_ms: TITLE_FRESH_MS,
        }
    }
}

/// Which source decides a session's condition: the screen, unless it shows nothing recognised
/// (an ambiguous screen: streaming text with no status line), or a fresh reading of a more
/// trusted source, newer than the screen's last change, says the agent is rate limited, or the
/// agent's own hooks said something since the screen last changed. Among
/// the fresh readings that say something, the newest wins; a stale one (older than its window)
/// never pins a state, and the screen is the fallback that always works. `screen` is the
/// screen's classification and when its condition last changed; `others` are in order of
/// trust, most trusted first.
fn precedence(
    (screen, screen_since): (&Classification, i64),
    others: &[Reading],
    now: i64,
) -> (Classification, &'static str) {
    let mut best: Option<&Reading> = None;
    for r in others {
        let fresh = now - r.heard_ms <= r.fresh_ms;
        let speaks = match r.classification.condition {
            Condition::None => false,
            // The agent's own report outranks its screen until the screen changes after it.
            _ if r.source == source::HOOK => {
                r.since_ms >= screen_since || screen.condition == Condition::None
            }
            // A limit from the agent's own records outranks its screen; anything else only
            // settles a screen that says nothing.
            Condition::RateLimited => r.since_ms > screen_since,
            _ => screen.condition == Condition::None,
        };
        if fresh && speaks && best.is_none_or(|b| r.since_ms > b.since_ms) {
            best = Some(r);
        }
    }
    match best {
        Some(r) => (r.classification.clone(), r.source),
        // The screen agrees with a hook that said it first: the hook is the source.
        None => match others.iter().find(|r| {
            r.source == source::HOOK
                && now - r.heard_ms <= r.fresh_ms
                && r.classification.condition == screen.condition
                && screen.condition != Condition::None
        }) {
            Some(_) => (screen.clone(), source::HOOK),
            None => (screen.clone(), source::SCREEN),
        },
    }
}

/// The agent under `pane_pid`: the known one if it still lives, else the first process (breadth
/// first) whose own program and arguments match an agent profile, else the pane's process when
/// it is neither a shell nor tmux. tmux's own processes never count: a pane's process before
/// tmux exec'd its command is a copy of the tmux server, with the command line of the
/// `tmux new-session -s NAME …` that started it.
fn resolve_agent(profiles: &Profiles, pane_pid: u32, known: Option<Agent>) -> Option<Agent> {
    if let Some(mut a) = known
        && let Some(s) = procs::stat(a.inc.pid)
        && s.start_time == a.inc.start_time
        && s.state != 'Z'
        && s.comm == a.comm
    {
        a.cpu_ticks = s.cpu_ticks;
        return Some(a);
    }
    let tree: Vec<(procs::ProcStat, String)> = procs::tree(pane_pid, TREE_LIMIT)
        .into_iter()
        .map(|p| {
            let cmd = procs::cmdline(p.pid);
            (p, cmd)
        })
        .collect();
    let (p, profile) = pick_agent(profiles, &tree)?;
    let p = p.clone();
    Some(Agent {
        inc: Incarnation {
            pid: p.pid,
            start_time: p.start_time,
        },
        comm: p.comm.clone(),
        cmdline: tree
            .iter()
            .find(|(q, _)| q.pid == p.pid)
            .map(|(_, cmd)| cmd.clone())
            .unwrap_or_default(),
        name: profile.clone().unwrap_or_else(|| p.comm.clone()),
        profile,
        cpu_ticks: p.cpu_ticks,
    })
}

/// The agent among a pane's processes (breadth first, with their command lines): the first a
/// profile recognises, else the pane's own process when it is neither a shell (a shell's passing
/// children, prompt hooks and `ls`, are not agents) nor tmux.
fn pick_agent<'a>(
    profiles: &Profiles,
    tree: &'a [(procs::ProcStat, String)],
) -> Option<(&'a procs::ProcStat, Option<String>)> {
    let by_profile = tree.iter().find_map(|(p, cmd)| {
        profiles
            .match_process(&p.comm, cmd)
            .map(|prof| (p, Some(prof.name.clone())))
    });
    by_profile.or_else(|| {
        tree.first()
            .filter(|(p, cmd)| {
                !SHELLS.contains(&p.comm.trim_start_matches('-'))
                    && !argus_shared::profile::is_tmux(&p.comm, cmd)
            })
            .map(|(p, _)| (p, None))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pane(name: &str) -> Pane {
        Pane {
            session_name: name.into(),
            session_id: "$1".into(),
            window_index: 0,
            pane_index: 0,
            pane_id: "%3".into(),
            pane_pid: 100,
            pane_dead: false,
            dead_status: 0,
            window_activity: 1_700_000_000,
            history_size: 0,
            cursor_y: 0,
            cwd: "/work".into(),
            labels: [
                "claude".into(),
                String::new(),
                String::new(),
                "g1".into(),
                String::new(),
                String::new(),
            ],
            window_size: (120, 40),
            pane_height: 40,
            start_command: "claude".into(),
            title: String::new(),
        }
    }

    fn agent() -> Agent {
        Agent {
            inc: Incarnation {
                pid: 101,
                start_time: 5,
            },
            comm: "node".into(),
            cmdline: "node /usr/lib/claude/cli.js".into(),
            name: "claude".into(),
            profile: Some("claude".into()),
            cpu_ticks: 7,
        }
    }

    #[test]
    fn selectors_fill_unset_labels_and_outlive_the_agent() {
        use argus_shared::selector::{SelectorSpec, Selectors};
        let selectors = Selectors::compile(&[SelectorSpec {
            session: Some("claudesquad_*".into()),
            program: Some("*claude*".into()),
            group: Some("squad".into()),
            profile: Some("claude".into()),
            restart: Some("claude --continue".into()),
            ..Default::default()
        }])
        .expect("valid");
        let none = Selectors::default();
        let mut p = pane("claudesquad_fix");
        let group = LABELS
            .iter()
            .position(|l| *l == "group")
            .expect("group label");
        p.labels[group] = "mine".into();
        let mut cache = PaneCache {
            agent: Some(agent()),
            ..Default::default()
        };
        let adopted = adopt([&selectors, &none], "/s", &p, &mut cache).expect("adopted");
        assert_eq!(adopted.label("group"), Some("mine"), "the tmux option wins");
        assert_eq!(adopted.label("restart"), Some("claude --continue"));
        assert_eq!(adopted.label("profile"), Some("claude"));
        // The agent died: the pane keeps its selector's labels for the restart.
        cache.agent = None;
        let kept = adopt([&selectors, &none], "/s", &p, &mut cache).expect("kept");
        assert_eq!(kept.label("restart"), Some("claude --continue"));
        // Another program now runs there: it is not adopted any more.
        let mut vim = agent();
        vim.comm = "vim".into();
        vim.cmdline = "vim notes".into();
        cache.agent = Some(vim);
        assert!(adopt([&selectors, &none], "/s", &p, &mut cache).is_none());
        // A session named otherwise is never adopted.
        let mut cache = PaneCache {
            agent: Some(agent()),
            ..Default::default()
        };
        assert!(adopt([&selectors, &none], "/s", &pane("work"), &mut cache).is_none());
        // The policy's selectors come after the node's own.
        let policy = Selectors::compile(&[SelectorSpec {
            session: Some("*".into()),
            group: Some("fleet".into()),
            ..Default::default()
        }])
        .expect("valid");
        let mut cache = PaneCache {
            agent: Some(agent()),
            ..Default::default()
        };
        let untagged = |name: &str| Pane {
            labels: Default::default(),
            ..pane(name)
        };
        let own = adopt(
            [&selectors, &policy],
            "/s",
            &untagged("claudesquad_x"),
            &mut cache,
        )
        .expect("adopted");
        assert_eq!(own.label("group"), Some("squad"));
        let fleet = adopt([&selectors, &policy], "/s", &untagged("work"), &mut cache)
            .expect("adopted by the policy");
        assert_eq!(fleet.label("group"), Some("fleet"));
        assert_eq!(fleet.label("restart"), None);
    }

    #[test]
    fn observation_of_a_live_agent() {
        let p = pane("work");
        let a = agent();
        let c = Classification {
            condition: Condition::RateLimited,
            reset_at: Some(42),
        };
        let humans = ["work".to_owned(), "other".to_owned(), "work".to_owned()];
        let o = observation(&Seen {
            socket: "/tmp/s",
            pane: &p,
            humans: &humans,
            agent: Some(&a),
            hash: "abc",
            progress: "def",
            classification: &c,
            decided_by: source::SCREEN,
            agent_session_id: "2b246e8d",
            profile: "claude".into(),
            ms_per_tick: 10,
        });
        assert_eq!(o.tmux_socket, "/tmp/s");
        assert_eq!(o.session_name, "work");
        assert_eq!(
            o.agent,
            Some(pb::Incarnation {
                pid: 101,
                start_time: 5
            })
        );
        assert_eq!(o.agent_name, "claude");
        assert_eq!(o.agent_cpu_ms, 70);
        assert_eq!(o.screen_hash, "abc");
        assert_eq!(o.progress_hash, "def");
        assert_eq!(
            (o.decided_by.as_str(), o.agent_session_id.as_str()),
            ("screen", "2b246e8d")
        );
        assert_eq!(o.condition, pb::Condition::RateLimited as i32);
        assert_eq!(o.rate_limit_reset_at, 42);
        assert_eq!(o.last_output_ms, 1_700_000_000_000);
        assert_eq!(o.attached_clients, 2);
        assert_eq!(o.exit_status, -1);
        assert_eq!((o.window_width, o.window_height), (120, 40));
        assert_eq!(o.labels.len(), 2);
        assert_eq!(
            o.labels
                .get(argus_shared::labels::PROFILE)
                .map(String::as_str),
            Some("claude")
        );
    }

    #[test]
    fn observation_of_a_dead_pane_without_agent() {
        let mut p = pane("gone");
        p.pane_dead = true;
        p.dead_status = 3;
        let o = observation(&Seen {
            socket: "/tmp/s",
            pane: &p,
            humans: &[],
            agent: None,
            hash: "",
            progress: "",
            classification: &Classification::default(),
            decided_by: source::SCREEN,
            agent_session_id: "",
            profile: "generic".into(),
            ms_per_tick: 10,
        });
        assert!(o.agent.is_none() && o.agent_name.is_empty() && o.agent_cpu_ms == 0);
        assert!(o.pane_dead);
        assert_eq!(o.exit_status, 3);
        assert_eq!(o.attached_clients, 0);
        assert_eq!(o.profile, "generic");
    }

    fn proc(pid: u32, comm: &str) -> procs::ProcStat {
        procs::ProcStat {
            pid,
            ppid: 1,
            comm: comm.into(),
            state: 'S',
            cpu_ticks: 0,
            start_time: 1,
        }
    }

    #[test]
    fn tmux_itself_is_never_the_agent() {
        let p = Profiles::builtin();
        // A pane's process before tmux exec'd its command: a copy of the server, with the
        // command line of the `tmux new-session` that started it.
        let pre_exec = [(
            proc(10, "tmux: server"),
            "tmux -S /tmp/s -f /dev/null new-session -d -s aider aider --model x".to_owned(),
        )];
        assert!(pick_agent(&p, &pre_exec).is_none());
        // A nested tmux client in a pane is not an agent either.
        let client = [(proc(11, "tmux: client"), "tmux attach -t claude".to_owned())];
        assert!(pick_agent(&p, &client).is_none());
        // Once exec'd: the agent, by its own program.
        let tree = [
            (proc(10, "bash"), "bash -c aider --model x".to_owned()),
            (
                proc(12, "aider"),
                "/venv/bin/python /venv/bin/aider --model x".to_owned(),
            ),
        ];
        let (agent, profile) = pick_agent(&p, &tree).expect("aider");
        assert_eq!((agent.pid, profile.as_deref()), (12, Some("aider")));
        // Another program is the pane's own process when it is neither a shell nor tmux.
        let vim = [(proc(13, "vim"), "vim notes-about-claude.md".to_owned())];
        assert_eq!(
            pick_agent(&p, &vim).map(|(a, p)| (a.pid, p)),
            Some((13, None))
        );
    }

    #[test]
    fn a_gone_session_s_size_is_remembered() {
        let mut prober = Prober::new(
            Vec::new(),
            Arc::new(Profiles::builtin()),
            ProbeConfig {
                lines: 30,
                recapture_every: 10,
                selectors: Arc::default(),
                policy_selectors: watch::channel(Arc::default()).1,
            },
            Arc::new(EventBuffer::new(16)),
            Arc::new(Notify::new()),
        );
        let key: SessionKey = ("/s".into(), "work".into());
        let mut snap = Snapshot::default();
        snap.sessions.insert(
            key.clone(),
            pb::SessionObservation {
                window_width: 120,
                window_height: 40,
                ..Default::default()
            },
        );
        prober.remember_sizes(&snap);
        snap.gone_sizes = prober.gone_sizes.clone();
        assert_eq!(snap.window_size(&key), Some((120, 40)));
        assert!(snap.gone_sizes.is_empty());
        let mut later = Snapshot::default();
        prober.remember_sizes(&later);
        later.gone_sizes = prober.gone_sizes.clone();
        assert_eq!(later.window_size(&key), Some((120, 40)), "after it is gone");
        assert_eq!(later.window_size(&("/s".into(), "other".into())), None);
    }

    #[test]
    fn the_label_names_the_profile_before_the_agent() {
        let mut p = pane("work");
        let mut a = agent();
        a.profile = Some("codex".into());
        assert_eq!(profile_name(&p, Some(&a)).as_deref(), Some("claude"));
        p.labels[0].clear();
        assert_eq!(profile_name(&p, Some(&a)).as_deref(), Some("codex"));
        assert_eq!(profile_name(&p, None), None);
    }

    fn cls(condition: Condition) -> Classification {
        Classification {
            condition,
            reset_at: None,
        }
    }

    #[test]
    fn the_title_settles_an_ambiguous_screen_while_fresh() {
        let mut title = TitleSeen::default();
        title.update("\u{25d0} Claude Code", Condition::Thinking, 1_000);
        let r = [title.reading()];
        // The screen says nothing recognised: the title decides.
        assert_eq!(
            precedence((&cls(Condition::None), 0), &r, 2_000),
            (cls(Condition::Thinking), source::TITLE)
        );
        // The screen recognises something: the screen decides.
        assert_eq!(
            precedence((&cls(Condition::AtPrompt), 0), &r, 2_000),
            (cls(Condition::AtPrompt), source::SCREEN)
        );
        // The spinner in the title keeps it fresh; a title left alone goes stale.
        title.update("\u{25d1} Claude Code", Condition::Thinking, 200_000);
        let r = [title.reading()];
        assert_eq!(
            precedence((&cls(Condition::None), 0), &r, 200_000 + TITLE_FRESH_MS).1,
            source::TITLE
        );
        assert_eq!(
            precedence((&cls(Condition::None), 0), &r, 200_001 + TITLE_FRESH_MS),
            (cls(Condition::None), source::SCREEN),
            "a stale title never pins a state"
        );
    }

    #[test]
    fn the_newest_fresh_reading_wins() {
        let limit = Reading {
            source: source::TRANSCRIPT,
            classification: cls(Condition::RateLimited),
            since_ms: 5_000,
            heard_ms: 5_000,
            fresh_ms: 60_000,
        };
        let mut title = TitleSeen::default();
        title.update("\u{2810} topic", Condition::Thinking, 1_000);
        let both = [limit.clone(), title.reading()];
        // The limit is newer than the title's busy reading.
        assert_eq!(
            precedence((&cls(Condition::None), 0), &both, 6_000).1,
            source::TRANSCRIPT
        );
        // A limit outranks the screen's busy line, until it goes stale.
        assert_eq!(
            precedence((&cls(Condition::Thinking), 0), &both, 6_000).1,
            source::TRANSCRIPT
        );
        assert_eq!(
            precedence((&cls(Condition::Thinking), 0), &both, 70_000),
            (cls(Condition::Thinking), source::SCREEN)
        );
        // The screen changed after the limit (Claude retrying by itself): the screen decides.
        assert_eq!(
            precedence((&cls(Condition::Thinking), 5_500), &both, 6_000),
            (cls(Condition::Thinking), source::SCREEN)
        );
        // The title turned busy after the limit: the agent went back to work.
        title.update("\u{2810} topic 2", Condition::AtPrompt, 7_000);
        title.update("\u{2810} topic 2", Condition::Thinking, 8_000);
        let both = [limit, title.reading()];
        assert_eq!(
            precedence((&cls(Condition::None), 0), &both, 9_000),
            (cls(Condition::Thinking), source::TITLE)
        );
    }

    #[test]
    fn a_hook_decides_until_the_screen_changes_after_it_and_goes_stale() {
        let hook = |condition, at| Reading {
            source: source::HOOK,
            classification: cls(condition),
            since_ms: at,
            heard_ms: at,
            fresh_ms: 10_000,
        };
        // The screen still shows the busy line; the hook already says permission.
        let r = [hook(Condition::WaitingPermission, 5_000)];
        assert_eq!(
            precedence((&cls(Condition::Thinking), 1_000), &r, 5_100),
            (cls(Condition::WaitingPermission), source::HOOK)
        );
        // The screen shows it too, later: still the hook's call, it said so first.
        assert_eq!(
            precedence((&cls(Condition::WaitingPermission), 5_300), &r, 5_400),
            (cls(Condition::WaitingPermission), source::HOOK)
        );
        // The screen changed after the hook (the person answered): the screen decides.
        assert_eq!(
            precedence((&cls(Condition::Thinking), 6_000), &r, 6_100),
            (cls(Condition::Thinking), source::SCREEN)
        );
        // A hook that stopped firing never pins a state.
        assert_eq!(
            precedence((&cls(Condition::None), 0), &r, 15_001),
            (cls(Condition::None), source::SCREEN)
        );
        // An older hook still settles a screen that says nothing, while fresh.
        assert_eq!(
            precedence((&cls(Condition::None), 9_000), &r, 9_500).1,
            source::HOOK
        );
    }
}
