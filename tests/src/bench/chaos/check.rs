//! The chaos benchmark's invariants, checked after the run against what the fake agents recorded
//! themselves (their logs: the ground truth of what reached them) and against the controller's
//! audit (the `commands` table of its SQLite file):
//!
//! 1. no agent that was busy, thinking, waiting for a permission or rate-limited received a
//!    kill, a restart, an interrupt or a nudge (a keystroke or a signal);
//! 2. every death of a labelled session was restarted, once (the policy of the run lifts the
//!    crash-loop, mass-death and budget brakes; the one hold rule left is a rate-limit
//!    cooldown, which holds a dead agent's restart until the reset);
//! 3. every command in the audit has a final outcome, and every action an agent received has an
//!    audit row;
//! 4. no session outside the named agents was touched: bystanders received nothing, no command
//!    names them, and no unlabelled agent was restarted after a death.

use std::collections::BTreeMap;
use std::time::Duration;

use super::faults::Kind;
use super::fleet::{Event, Fleet, Member, Role, What, protected, rate_limit_holds};

/// What the runner did that explains an agent's end or start.
#[derive(Debug, Default, Clone)]
pub struct Journal {
    /// Agents the runner SIGKILLed: pid, Unix seconds.
    pub agent_kills: Vec<(u32, f64)>,
    /// Times the tmux server was killed: `kill-server` issued, and returned.
    pub tmux_kills: Vec<(f64, f64)>,
    /// Sessions the runner (re)created: name, Unix seconds.
    pub creations: Vec<(String, f64)>,
    /// Infrastructure faults: what, from, to (Unix seconds).
    pub infra: Vec<(&'static str, f64, f64)>,
    /// From the node agents' logs: when a link to a controller came up (true) or went down
    /// (false), Unix seconds, in order. See [`link_changes`].
    pub links: Vec<(f64, bool)>,
}

impl Journal {
    /// Stretches in which no node agent watched the panes: from a node agent's SIGKILL until
    /// a second after its restart (it starts probing), and while it is stopped.
    fn node_blind(&self) -> Vec<(f64, f64)> {
        self.infra
            .iter()
            .filter_map(|(what, from, to)| match *what {
                w if w == Kind::NodeKill.name() => Some((*from, to + 1.0)),
                w if w == Kind::NodeStop.name() => Some((*from, *to)),
                _ => None,
            })
            .collect()
    }

    /// True when Argus learned of an agent that lived from `start` to `end`: a node agent
    /// watched it for a second (a few probes). That node agent passes its exit on, or keeps it
    /// in its state directory for the next node agent process to report
    /// (`node-agent/src/seen.rs`) if it dies first.
    fn agent_seen(&self, start: f64, end: f64) -> bool {
        seen_for(start, end, &self.node_blind()) >= UNSEEN_BELOW
    }

    /// Stretches in which no controller saw the screens the node agent saw: from a controller
    /// or node agent kill, or a black hole that cut the link, until the node agent next
    /// attached; a SIGSTOP while it lasts. What the node agent saw meanwhile reaches the next
    /// controller only as its current snapshot and its buffered events (exits), not as the
    /// screens in between.
    fn argus_blind(&self) -> Vec<(f64, f64)> {
        let next_attach = |after: f64| {
            self.links
                .iter()
                .find(|(t, up)| *up && *t >= after)
                .map_or(f64::INFINITY, |(t, _)| *t)
        };
        let cut = |from: f64, to: f64| {
            self.links
                .iter()
                .any(|(t, up)| !up && *t >= from && *t <= to + 2.0)
        };
        self.infra
            .iter()
            .filter_map(|(what, from, to)| match *what {
                w if w == Kind::ControllerKill.name() || w == Kind::NodeKill.name() => {
                    Some((*from, next_attach(*to)))
                }
                w if w == Kind::BlackHole.name() && cut(*from, *to) => {
                    Some((*from, next_attach(*to)))
                }
                w if w == Kind::BlackHole.name() || w == Kind::NodeStop.name() => {
                    Some((*from, to + 0.5))
                }
                _ => None,
            })
            .collect()
    }

    /// The infrastructure faults held at `t` or ended within 2 s before it, for the report.
    fn during(&self, t: f64) -> String {
        let held: Vec<&str> = self
            .infra
            .iter()
            .filter(|(_, from, to)| t >= *from && t <= to + 2.0)
            .map(|(what, _, _)| *what)
            .collect();
        if held.is_empty() {
            String::new()
        } else {
            format!(" [during: {}]", held.join(", "))
        }
    }
}

/// One command row of the audit.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct AuditRow {
    pub command_id: String,
    pub session_name: String,
    pub action: String,
    pub origin: String,
    pub reason: String,
    pub issued_at_ms: i64,
    pub status: String,
}

impl AuditRow {
    pub fn finished(&self) -> bool {
        !self.status.is_empty() && self.status != "COMMAND_STATUS_UNSPECIFIED"
    }
}

/// One broken invariant.
#[derive(Debug, Clone)]
pub struct Violation {
    /// Which invariant (1 to 4).
    pub invariant: u8,
    /// Unix seconds.
    pub at: f64,
    pub what: String,
}

/// What the check counted besides violations.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Deaths of labelled agents (killed, exited, tmux server killed).
    pub deaths: usize,
    /// Of them, restarted.
    pub restarted: usize,
    /// Of them, held by a rule (a rate-limit cooldown): no restart due within the run.
    pub held: usize,
    /// Of the held, those held only because what lifted the hold (the agent back at work or at
    /// its prompt, a fresh agent in the session) happened where Argus could not see it.
    pub held_unseen: usize,
    /// Death to the new agent's start, seconds.
    pub restart_delays: Vec<f64>,
    /// Actions that reached an agent while it was fair game (hung or idle), by kind.
    pub allowed: BTreeMap<String, usize>,
    /// Audit rows by action and status.
    pub audit: BTreeMap<String, usize>,
    /// Agent instances seen.
    pub instances: usize,
}

/// The checker's settings.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// How long an agent must have shown a protected mode before an action counts as wrongful:
    /// the controller sees the screen a probe later and decides after its confirming re-check.
    pub grace: Duration,
    /// Signals this soon after a tmux server kill come from tmux (SIGHUP to every pane).
    pub tmux_window: Duration,
}

/// One run of one agent process.
struct Instance<'a> {
    pid: u32,
    start: f64,
    /// Started from the `@argus-restart` label (Argus), not by the runner's own command.
    by_label: bool,
    events: Vec<&'a Event>,
}

/// How an instance ended.
#[derive(Debug, Clone, PartialEq)]
enum End {
    Alive,
    /// Ended by a fault of the run (runner SIGKILL, exit on request, tmux server killed).
    Death {
        at: f64,
        cause: &'static str,
    },
    /// Ended by a signal Argus sent (a kill or a restart).
    Argus {
        at: f64,
    },
    /// Gone without a recorded signal and without a fault to explain it.
    Unexplained {
        at: f64,
    },
}

/// Checks every invariant; returns the violations (oldest first) and the tally.
pub fn check(
    fleet: &Fleet,
    journal: &Journal,
    audit: Option<&[AuditRow]>,
    rules: Rules,
) -> (Vec<Violation>, Tally) {
    let mut v = Vec::new();
    let mut tally = Tally::default();
    let near_tmux_kill = |t: f64| {
        journal
            .tmux_kills
            .iter()
            .any(|(from, to)| t >= from - 0.5 && t <= to + rules.tmux_window.as_secs_f64())
    };
    let bystanders: Vec<&str> = fleet
        .members
        .iter()
        .filter(|m| m.role == Role::Bystander)
        .map(|m| m.name.as_str())
        .collect();
    let argus_blind = journal.argus_blind();
    let argus_saw = |from: f64, to: f64| seen_for(from, to, &argus_blind);
    for m in &fleet.members {
        let events = fleet.events(m);
        let instances = instances(&events);
        tally.instances += instances.len();
        // The session's restart is held for a rate limit (from Argus's point of view) when the
        // instance before died held.
        let mut carried = false;
        for (i, inst) in instances.iter().enumerate() {
            let end = end_of(fleet, m, inst, journal, &near_tmux_kill);
            actions(m, inst, &near_tmux_kill, audit, rules, &mut v, &mut tally);
            let next = instances.get(i + 1);
            if let Some(next) = next
                && !started_by_runner(journal, m, next)
                && m.role != Role::Labelled
                && !matches!(end, End::Argus { .. })
            {
                v.push(Violation {
                    invariant: 4,
                    at: next.start,
                    what: format!(
                        "{} ({:?}) was started again by someone other than the benchmark after \
                         its agent {} ended ({end:?}); only labelled sessions are restarted",
                        m.name, m.role, inst.pid
                    ),
                });
            }
            if m.role != Role::Labelled {
                continue;
            }
            let death = match end {
                End::Death { at, cause } => Some((at, cause)),
                End::Unexplained { at } => Some((at, "unexplained")),
                _ => None,
            };
            let was_carried = std::mem::take(&mut carried);
            if let Some((at, cause)) = death {
                tally.deaths += 1;
                // The hold rule of rate limits: an agent that dies in its cooldown is restarted
                // when the cooldown ends (hours away here), not before. The hold is Argus's
                // judgement on what it saw: it holds while what would lift it (a second back at
                // work or at the prompt; a fresh agent in the session) stayed out of its sight.
                let own = rate_limit_holds(&inst.events, at, &argus_saw);
                let fresh_unseen = was_carried && !journal.agent_seen(inst.start, at);
                if own || fresh_unseen {
                    tally.held += 1;
                    if fresh_unseen || !rate_limit_holds(&inst.events, at, &|a, b| b - a) {
                        tally.held_unseen += 1;
                    }
                    carried = true;
                    continue;
                }
                match next {
                    Some(n) if !started_by_runner(journal, m, n) => {
                        tally.restarted += 1;
                        tally.restart_delays.push(n.start - at);
                    }
                    Some(n) => v.push(Violation {
                        invariant: 2,
                        at,
                        what: format!(
                            "{}: agent {} died ({cause}) and was not restarted (the benchmark \
                             started it again {:.0} s later){}",
                            m.name,
                            inst.pid,
                            n.start - at,
                            journal.during(at)
                        ),
                    }),
                    None => v.push(Violation {
                        invariant: 2,
                        at,
                        what: format!(
                            "{}: agent {} died ({cause}) and was never restarted{}",
                            m.name,
                            inst.pid,
                            journal.during(at)
                        ),
                    }),
                }
            } else if let End::Argus { at } = end
                && next.is_none_or(|n| started_by_runner(journal, m, n))
            {
                v.push(Violation {
                    invariant: 2,
                    at,
                    what: format!(
                        "{}: agent {} was stopped by Argus and never started again{}",
                        m.name,
                        inst.pid,
                        journal.during(at)
                    ),
                });
            }
            if let End::Unexplained { at } = end {
                v.push(Violation {
                    invariant: 1,
                    at,
                    what: format!(
                        "{}: agent {} ended without a signal it could record (SIGKILL?) and \
                         without a fault of the run to explain it",
                        m.name, inst.pid
                    ),
                });
            }
        }
    }
    if let Some(audit) = audit {
        for row in audit {
            *tally
                .audit
                .entry(format!(
                    "{} {}",
                    row.action,
                    row.status
                        .trim_start_matches("COMMAND_STATUS_")
                        .to_lowercase()
                ))
                .or_default() += 1;
            if !row.finished() {
                v.push(Violation {
                    invariant: 3,
                    at: row.issued_at_ms as f64 / 1000.0,
                    what: format!(
                        "command {} ({} of {}, {}: {}) has no final outcome in the audit",
                        row.command_id, row.action, row.session_name, row.origin, row.reason
                    ),
                });
            }
            if bystanders.contains(&row.session_name.as_str()) {
                v.push(Violation {
                    invariant: 4,
                    at: row.issued_at_ms as f64 / 1000.0,
                    what: format!(
                        "command {} ({}) names the bystander {}",
                        row.command_id, row.action, row.session_name
                    ),
                });
            }
        }
    }
    v.sort_by(|a, b| a.at.total_cmp(&b.at));
    (v, tally)
}

fn instances(events: &[Event]) -> Vec<Instance<'_>> {
    let mut out: Vec<Instance<'_>> = Vec::new();
    for e in events {
        if let What::Start { by_label } = e.what {
            out.push(Instance {
                pid: e.pid,
                start: e.t,
                by_label,
                events: Vec::new(),
            });
        }
        if let Some(inst) = out.iter_mut().rev().find(|i| i.pid == e.pid) {
            inst.events.push(e);
        }
    }
    out
}

/// An agent whose life showed to the node agent for less than this (seconds) may have passed
/// unseen between its probes (250 ms apart), and before its exit could be watched.
const UNSEEN_BELOW: f64 = 1.0;

/// How many seconds of `from..to` fall outside every `blind` stretch.
fn seen_for(from: f64, to: f64, blind: &[(f64, f64)]) -> f64 {
    let mut cuts: Vec<(f64, f64)> = blind
        .iter()
        .map(|(a, b)| (a.max(from), b.min(to)))
        .filter(|(a, b)| a < b)
        .collect();
    cuts.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut hidden = 0.0;
    let mut reach = from;
    for (a, b) in cuts {
        if b > reach {
            hidden += b - a.max(reach);
            reach = b;
        }
    }
    (to - from).max(0.0) - hidden
}

/// When the node agents' links came up and went down, from their logs in `dir`
/// (`argus-node-agent-*.log`, the `attached` and `link down` lines), oldest first.
pub fn link_changes(dir: &std::path::Path) -> Vec<(f64, bool)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with("argus-node-agent-") && name.ends_with(".log")) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        for line in text.lines() {
            let up = if line.contains("argus_node_agent::link: attached ") {
                true
            } else if line.contains("argus_node_agent::link: link down") {
                false
            } else {
                continue;
            };
            let stamp = line.split_whitespace().next().unwrap_or_default();
            if let Ok(t) = chrono::DateTime::parse_from_rfc3339(stamp) {
                out.push((t.timestamp_micros() as f64 / 1e6, up));
            }
        }
    }
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// True when the runner started this instance: its own command line (a start from the label is
/// Argus's), within 3 s of a creation the runner journaled.
fn started_by_runner(journal: &Journal, m: &Member, inst: &Instance<'_>) -> bool {
    !inst.by_label
        && journal
            .creations
            .iter()
            .any(|(name, at)| *name == m.name && inst.start >= at - 0.5 && inst.start <= at + 3.0)
}

fn end_of(
    fleet: &Fleet,
    m: &Member,
    inst: &Instance<'_>,
    journal: &Journal,
    near_tmux_kill: &impl Fn(f64) -> bool,
) -> End {
    let last = inst.events.last().map_or(inst.start, |e| e.t);
    for e in &inst.events {
        if let What::Exit(why) = &e.what {
            return match why.as_str() {
                "die" => End::Death {
                    at: e.t,
                    cause: "exited",
                },
                _ if near_tmux_kill(e.t) => End::Death {
                    at: e.t,
                    cause: "tmux server killed",
                },
                _ => End::Argus { at: e.t },
            };
        }
    }
    if fleet.runs(m, inst.pid) {
        return End::Alive;
    }
    if let Some((_, at)) = journal.agent_kills.iter().find(|(p, _)| *p == inst.pid) {
        return End::Death {
            at: *at,
            cause: "SIGKILLed",
        };
    }
    if let Some((at, _)) = journal
        .tmux_kills
        .iter()
        .copied()
        .find(|(_, to)| *to >= last)
    {
        return End::Death {
            at,
            cause: "tmux server killed",
        };
    }
    End::Unexplained { at: last }
}

#[allow(clippy::too_many_arguments)]
fn actions(
    m: &Member,
    inst: &Instance<'_>,
    near_tmux_kill: &impl Fn(f64) -> bool,
    audit: Option<&[AuditRow]>,
    rules: Rules,
    v: &mut Vec<Violation>,
    tally: &mut Tally,
) {
    let grace = rules.grace.as_secs_f64();
    let mut mode = ("work", inst.start, true);
    let mut first_mode = true;
    // A nudge arrives as its text and then its submit key, a moment apart: one action.
    let mut last_input = f64::NEG_INFINITY;
    for e in &inst.events {
        let kind = match &e.what {
            What::Mode(m) => {
                mode = (m.as_str(), e.t, first_mode);
                first_mode = false;
                continue;
            }
            What::Input(_) if e.t - last_input < 1.0 => {
                last_input = e.t;
                continue;
            }
            What::Input(hex) => {
                last_input = e.t;
                describe_input(hex)
            }
            What::Signal(s) if s == "SIGHUP" && near_tmux_kill(e.t) => continue,
            What::Signal(s) => format!("signal {s}"),
            _ => continue,
        };
        if m.role == Role::Bystander {
            v.push(Violation {
                invariant: 4,
                at: e.t,
                what: format!("bystander {} (pid {}) received {kind}", m.name, inst.pid),
            });
            continue;
        }
        let (name, since, initial) = mode;
        let held = e.t - since;
        if protected(name) && (held >= grace || initial) {
            v.push(Violation {
                invariant: 1,
                at: e.t,
                what: format!(
                    "{} (pid {}) received {kind} while {} for {held:.1} s{}",
                    m.name,
                    inst.pid,
                    describe_mode(name),
                    if initial && held < grace {
                        " (a fresh agent: a late or repeated restart?)"
                    } else {
                        ""
                    }
                ),
            });
        } else {
            *tally.allowed.entry(kind.clone()).or_default() += 1;
        }
        if let Some(audit) = audit
            && !audit.iter().any(|r| {
                let at = r.issued_at_ms as f64 / 1000.0;
                r.session_name == m.name && at <= e.t + 2.0 && at >= e.t - 120.0
            })
        {
            v.push(Violation {
                invariant: 3,
                at: e.t,
                what: format!(
                    "{} (pid {}) received {kind} and the audit has no command for it",
                    m.name, inst.pid
                ),
            });
        }
    }
}

fn describe_input(hex: &str) -> String {
    match hex {
        "03" => "an interrupt (C-c)".to_owned(),
        "0d" => "a submit key (Enter)".to_owned(),
        _ => "a nudge (typed text)".to_owned(),
    }
}

fn describe_mode(mode: &str) -> &'static str {
    match mode {
        "work" => "busy",
        "think" => "thinking",
        "permission" => "waiting for a permission",
        "ratelimit" => "rate-limited",
        _ => "fair game",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pid that is not running (above the kernel's limit).
    const GONE: u32 = 4_999_999;

    fn rules() -> Rules {
        Rules {
            grace: Duration::from_secs(5),
            tmux_window: Duration::from_secs(3),
        }
    }

    fn fleet(dir: &std::path::Path, logs: &[(&str, &str)]) -> Fleet {
        let f = Fleet::new(dir, 1, 1, 1).expect("fleet");
        for (name, log) in logs {
            std::fs::write(dir.join(format!("{name}.log")), log).expect("log");
        }
        f
    }

    /// A process that passes for `name`'s running agent (killed and reaped on drop).
    struct Running(std::process::Child);

    impl Running {
        fn start(f: &Fleet, name: &str) -> Self {
            let child = std::process::Command::new("python3")
                .args(["-c", "import time; time.sleep(60)"])
                .arg(f.script())
                .arg(name)
                .spawn()
                .expect("python3");
            // A version manager's shim runs before the interpreter: wait for its command line.
            let member = f.members.iter().find(|m| m.name == name).expect("a member");
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !f.runs(member, child.id()) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            Self(child)
        }

        fn pid(&self) -> u32 {
            self.0.id()
        }
    }

    impl Drop for Running {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn row(session: &str, at_s: i64, status: &str) -> AuditRow {
        AuditRow {
            command_id: format!("c-{at_s}"),
            session_name: session.to_owned(),
            action: "nudge".to_owned(),
            origin: "policy".to_owned(),
            reason: "idle".to_owned(),
            issued_at_ms: at_s * 1000,
            status: status.to_owned(),
        }
    }

    #[test]
    fn an_action_on_a_thinking_agent_is_a_violation_and_on_a_hung_one_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = format!(
            "100.0 {GONE} start runner agent\n100.0 {GONE} mode work\n\
             101.0 {GONE} mode think\n110.0 {GONE} input 03\n\
             111.0 {GONE} mode hang\n115.0 {GONE} input 636f6e740d\n"
        );
        let f = fleet(dir.path(), &[("agent-00", &log)]);
        let j = Journal {
            agent_kills: vec![(GONE, 120.0)],
            ..Journal::default()
        };
        let audit = [
            row("agent-00", 109, "COMMAND_STATUS_OK"),
            row("agent-00", 114, "COMMAND_STATUS_OK"),
        ];
        let (v, tally) = check(&f, &j, Some(&audit), rules());
        let one: Vec<_> = v.iter().filter(|v| v.invariant == 1).collect();
        assert_eq!(one.len(), 1, "{v:?}");
        assert!(one[0].what.contains("interrupt") && one[0].what.contains("thinking"));
        assert_eq!(tally.allowed.values().sum::<usize>(), 1);
        // The SIGKILL at 120 is a death with no restart after it.
        assert_eq!(tally.deaths, 1);
        assert!(v.iter().any(|v| v.invariant == 2), "{v:?}");
    }

    #[test]
    fn a_death_restarted_once_is_fine_and_a_fresh_agent_killed_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = fleet(dir.path(), &[]);
        let running = Running::start(&f, "agent-00");
        let log = format!(
            "100.0 {GONE} start runner agent\n100.0 {GONE} mode work\n\
             102.0 {GONE} exit die\n\
             103.0 4999998 start label agent\n103.0 4999998 mode work\n\
             103.5 4999998 signal SIGHUP\n103.5 4999998 exit signal\n\
             104.0 {me} start label agent\n104.0 {me} mode work\n",
            me = running.pid()
        );
        std::fs::write(dir.path().join("agent-00.log"), log).expect("log");
        let (v, tally) = check(&f, &Journal::default(), None, rules());
        assert_eq!(tally.deaths, 1);
        assert_eq!(tally.restarted, 1);
        // The second instance was hit by a restart half a second after it started, busy.
        assert!(
            v.iter()
                .any(|v| v.invariant == 1 && v.what.contains("a fresh agent")),
            "{v:?}"
        );
    }

    #[test]
    fn a_death_in_a_rate_limit_cooldown_is_held() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = format!(
            "100.0 {GONE} start runner agent\n100.0 {GONE} mode work\n\
             101.0 {GONE} mode ratelimit\n103.0 {GONE} mode think\n105.0 {GONE} exit die\n"
        );
        let f = fleet(dir.path(), &[("agent-00", &log)]);
        let (v, tally) = check(&f, &Journal::default(), None, rules());
        assert_eq!((tally.deaths, tally.held, tally.restarted), (1, 1, 0));
        assert!(v.is_empty(), "{v:?}");
    }

    #[test]
    fn a_hold_is_lifted_only_by_what_argus_could_see() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Agent 1 shows its limit and dies (held); the runner starts agent 2 at 110, which dies
        // at 113 and is not restarted.
        let log = "100.0 11 start runner agent\n100.0 11 mode work\n101.0 11 mode ratelimit\n\
                   105.0 11 exit die\n110.0 12 start runner agent\n110.0 12 mode work\n\
                   113.0 12 exit die\n";
        let f = fleet(dir.path(), &[("agent-00", log)]);
        let journal = |infra: Vec<(&'static str, f64, f64)>, links: Vec<(f64, bool)>| Journal {
            agent_kills: vec![(11, 105.0), (12, 113.0)],
            creations: vec![("agent-00".into(), 110.0)],
            infra,
            links,
            ..Default::default()
        };
        // Agent 2's whole life fell while the node agent was killed: nobody could see it, so
        // the hold stands and its death is held too.
        let unseen = journal(
            vec![(Kind::NodeKill.name(), 108.0, 114.0)],
            vec![(115.0, true)],
        );
        let (v, tally) = check(&f, &unseen, None, rules());
        assert!(v.is_empty(), "{v:?}");
        assert_eq!((tally.deaths, tally.held, tally.held_unseen), (2, 2, 1));
        // A controller kill alone does not blind the node agent: it saw agent 2 and passes its
        // exit on, so its death had to be restarted.
        let seen = journal(
            vec![(Kind::ControllerKill.name(), 108.0, 114.0)],
            vec![(108.1, false), (120.0, true)],
        );
        let (v, tally) = check(&f, &seen, None, rules());
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].invariant == 2 && v[0].what.contains("agent 12 died"),
            "{v:?}"
        );
        assert_eq!((tally.deaths, tally.held), (2, 1));
        // The node agent watched agent 2 for 1.5 s, then was killed before any controller
        // linked, and agent 2 exited while no node agent ran: the node agent had written it
        // down, so the next one reports its exit, and its death had to be restarted.
        let kept = journal(
            vec![
                (Kind::ControllerKill.name(), 108.0, 109.0),
                (Kind::NodeKill.name(), 111.5, 113.5),
            ],
            vec![(108.1, false), (115.0, true)],
        );
        let (v, _) = check(&f, &kept, None, rules());
        assert_eq!(v.len(), 1, "{v:?}");
        // Watched for 0.5 s only (a couple of probes at best): held.
        let glimpse = journal(
            vec![(Kind::NodeKill.name(), 110.5, 113.5)],
            vec![(115.0, true)],
        );
        let (v, tally) = check(&f, &glimpse, None, rules());
        assert!(v.is_empty(), "{v:?}");
        assert_eq!((tally.held, tally.held_unseen), (2, 1));
    }

    #[test]
    fn a_return_to_work_no_controller_saw_does_not_lift_the_hold() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = "100.0 11 start runner agent\n100.0 11 mode work\n101.0 11 mode ratelimit\n\
                   103.0 11 mode idle\n106.0 11 exit die\n";
        let f = fleet(dir.path(), &[("agent-00", log)]);
        let blind = Journal {
            agent_kills: vec![(11, 106.0)],
            infra: vec![(Kind::ControllerKill.name(), 102.0, 103.0)],
            links: vec![(102.0, false), (108.0, true)],
            ..Default::default()
        };
        let (v, tally) = check(&f, &blind, None, rules());
        assert!(v.is_empty(), "{v:?}");
        assert_eq!((tally.held, tally.held_unseen), (1, 1));
        // With the controller linked again at 104, the prompt showed for 2 s in its sight.
        let sighted = Journal {
            links: vec![(102.0, false), (104.0, true)],
            ..blind
        };
        let (v, tally) = check(&f, &sighted, None, rules());
        assert_eq!((v.len(), tally.held), (1, 0), "{v:?}");
    }

    #[test]
    fn link_changes_are_read_from_the_node_agents_logs() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("argus-node-agent-n-1.log"),
            "2026-11-30T22:59:18.500000Z  INFO link{node=n attempt=1 epoch=8}: \
             argus_node_agent::link: attached epoch=8 controller=c\n\
             2026-11-30T22:59:19.000000Z  WARN link{node=n attempt=1 epoch=8}: \
             argus_node_agent::link: link down error=broke\n",
        )
        .expect("log");
        std::fs::write(dir.path().join("argus-controller-0.log"), "attached\n").expect("log");
        let t0 = 1_796_079_558.5;
        assert_eq!(
            link_changes(dir.path()),
            vec![(t0, true), (t0 + 0.5, false)]
        );
    }

    #[test]
    fn seen_for_subtracts_overlapping_blind_stretches() {
        assert_eq!(seen_for(0.0, 10.0, &[]), 10.0);
        assert_eq!(
            seen_for(0.0, 10.0, &[(2.0, 4.0), (3.0, 5.0), (9.0, 20.0)]),
            6.0
        );
        assert_eq!(seen_for(0.0, 10.0, &[(-5.0, 15.0)]), 0.0);
    }

    #[test]
    fn bystanders_and_unfinished_commands() {
        let dir = tempfile::tempdir().expect("tempdir");
        let by = format!("100.0 {GONE} start runner bystander\n101.0 {GONE} signal SIGTERM\n");
        let f = fleet(dir.path(), &[("bystander-00", &by)]);
        let audit = [
            row("bystander-00", 100, "COMMAND_STATUS_OK"),
            row("agent-00", 100, "COMMAND_STATUS_UNSPECIFIED"),
        ];
        let (v, _) = check(&f, &Journal::default(), Some(&audit), rules());
        assert_eq!(v.iter().filter(|v| v.invariant == 4).count(), 2, "{v:?}");
        assert_eq!(v.iter().filter(|v| v.invariant == 3).count(), 1, "{v:?}");
    }

    #[test]
    fn a_tmux_server_kill_explains_the_hangups() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = fleet(dir.path(), &[]);
        let running = Running::start(&f, "agent-00");
        let log = format!(
            "100.0 {GONE} start runner agent\n100.0 {GONE} mode think\n\
             120.2 {GONE} signal SIGHUP\n120.2 {GONE} exit signal\n\
             121.0 {me} start label agent\n",
            me = running.pid()
        );
        std::fs::write(dir.path().join("agent-00.log"), log).expect("log");
        let j = Journal {
            tmux_kills: vec![(120.0, 120.1)],
            ..Journal::default()
        };
        let (v, tally) = check(&f, &j, None, rules());
        // A live pid is the member's only while its command line says so (pids are reused).
        assert!(f.runs(&f.members[0], running.pid()));
        assert!(!f.runs(&f.members[1], running.pid()));
        assert!(!f.runs(&f.members[0], std::process::id()));
        assert_eq!((tally.deaths, tally.restarted), (1, 1));
        assert!(v.is_empty(), "{v:?}");
    }
}
