//! The chaos benchmark's faults and their seeded schedule. The schedule is a pure function of
//! the seed, the fault count, the fleet size and the enabled kinds, so that a failing run can be
//! replayed from its seed (the order and parameters of the faults are the same; the timing of the
//! processes around them is not).

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    // Infrastructure, one at a time: injected, held, recovered.
    /// SIGKILL the controller; restart it on the same database after the hold.
    ControllerKill,
    /// SIGKILL the node agent; restart it after the hold.
    NodeKill,
    /// SIGSTOP the node agent; SIGCONT after the hold.
    NodeStop,
    /// `tmux kill-server`: every session dies at once.
    TmuxKill,
    /// Another process holds `BEGIN EXCLUSIVE` on the database.
    DbLocked,
    /// The database's file system is full.
    DiskFull,
    /// The node agent's link to the controller stops forwarding in both directions.
    BlackHole,
    // Agents, concurrently with the above.
    /// SIGKILL an agent.
    AgentKilled,
    /// An agent exits by itself.
    AgentExits,
    /// An agent stops changing its screen: stalled (fair game for the ladder).
    AgentHangs,
    /// An agent shows its prompt (idle: fair game).
    AgentIdle,
    /// An agent prints output (busy: protected).
    AgentWorks,
    /// An agent shows a thinking line (protected).
    AgentThinks,
    /// An agent asks for a permission (protected).
    AgentAsks,
    /// An agent shows a rate limit with a reset hours away (protected).
    AgentRateLimited,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 15] = [
        Kind::ControllerKill,
        Kind::NodeKill,
        Kind::NodeStop,
        Kind::TmuxKill,
        Kind::DbLocked,
        Kind::DiskFull,
        Kind::BlackHole,
        Kind::AgentKilled,
        Kind::AgentExits,
        Kind::AgentHangs,
        Kind::AgentIdle,
        Kind::AgentWorks,
        Kind::AgentThinks,
        Kind::AgentAsks,
        Kind::AgentRateLimited,
    ];

    /// True for the infrastructure faults (held one at a time).
    pub fn is_infra(self) -> bool {
        matches!(
            self,
            Kind::ControllerKill
                | Kind::NodeKill
                | Kind::NodeStop
                | Kind::TmuxKill
                | Kind::DbLocked
                | Kind::DiskFull
                | Kind::BlackHole
        )
    }

    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Kind::ControllerKill => "controller SIGKILL + restart",
            Kind::NodeKill => "node agent SIGKILL + restart",
            Kind::NodeStop => "node agent SIGSTOP / SIGCONT",
            Kind::TmuxKill => "tmux server killed",
            Kind::DbLocked => "database locked (BEGIN EXCLUSIVE)",
            Kind::DiskFull => "disk full (tmpfs)",
            Kind::BlackHole => "network black hole",
            Kind::AgentKilled => "agent SIGKILLed",
            Kind::AgentExits => "agent exits",
            Kind::AgentHangs => "agent hangs",
            Kind::AgentIdle => "agent idle at its prompt",
            Kind::AgentWorks => "agent works",
            Kind::AgentThinks => "agent thinks",
            Kind::AgentAsks => "agent waits for a permission",
            Kind::AgentRateLimited => "agent rate-limited",
        }
    }

    /// The name on the command line (`--only`).
    pub fn slug(self) -> &'static str {
        match self {
            Kind::ControllerKill => "controller-kill",
            Kind::NodeKill => "node-kill",
            Kind::NodeStop => "node-stop",
            Kind::TmuxKill => "tmux-kill",
            Kind::DbLocked => "db-locked",
            Kind::DiskFull => "disk-full",
            Kind::BlackHole => "black-hole",
            Kind::AgentKilled => "agent-killed",
            Kind::AgentExits => "agent-exits",
            Kind::AgentHangs => "agent-hangs",
            Kind::AgentIdle => "agent-idle",
            Kind::AgentWorks => "agent-works",
            Kind::AgentThinks => "agent-thinks",
            Kind::AgentAsks => "agent-asks",
            Kind::AgentRateLimited => "agent-rate-limited",
        }
    }

    /// The kind named `slug`.
    pub fn from_slug(slug: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.slug() == slug)
    }

    /// The fake agent's mode for an agent fault.
    pub fn mode(self) -> Option<&'static str> {
        Some(match self {
            Kind::AgentExits => "die",
            Kind::AgentHangs => "hang",
            Kind::AgentIdle => "idle",
            Kind::AgentWorks => "work",
            Kind::AgentThinks => "think",
            Kind::AgentAsks => "permission",
            Kind::AgentRateLimited => "ratelimit",
            _ => return None,
        })
    }

    /// Relative frequency in a schedule.
    fn weight(self) -> u32 {
        match self {
            Kind::TmuxKill => 1,
            Kind::ControllerKill | Kind::NodeKill | Kind::NodeStop => 3,
            Kind::DbLocked | Kind::DiskFull | Kind::BlackHole => 2,
            Kind::AgentKilled | Kind::AgentExits => 3,
            Kind::AgentHangs => 3,
            _ => 2,
        }
    }
}

/// One scheduled fault.
#[derive(Debug, Clone, Copy)]
pub struct Fault {
    pub kind: Kind,
    /// The member it hits (agent faults).
    pub target: usize,
    /// How long an infrastructure fault is held.
    pub hold: Duration,
    /// Pause before it.
    pub gap: Duration,
}

/// The two fault streams of one run: infrastructure (one at a time) and agents.
#[derive(Debug, Clone, Default)]
pub struct Schedule {
    pub infra: Vec<Fault>,
    pub agents: Vec<Fault>,
}

/// Draws `count` faults of the `enabled` kinds from `seed`; agent faults hit one of the first
/// `agents` members. About one fault in five is an infrastructure fault.
pub fn schedule(seed: u64, count: usize, enabled: &[Kind], agents: usize, pace: Pace) -> Schedule {
    let mut rng = StdRng::seed_from_u64(seed);
    let pick = |rng: &mut StdRng, infra: bool| {
        let kinds: Vec<Kind> = enabled
            .iter()
            .copied()
            .filter(|k| k.is_infra() == infra)
            .collect();
        let total: u32 = kinds.iter().map(|k| k.weight()).sum();
        if total == 0 {
            return None;
        }
        let mut x = rng.random_range(0..total);
        kinds.into_iter().find(|k| {
            if x < k.weight() {
                true
            } else {
                x -= k.weight();
                false
            }
        })
    };
    let mut s = Schedule::default();
    for _ in 0..count {
        let infra = rng.random_ratio(1, 5);
        let Some(kind) = pick(&mut rng, infra).or_else(|| pick(&mut rng, !infra)) else {
            break;
        };
        let hold = Duration::from_millis(rng.random_range(pace.hold.0..=pace.hold.1));
        let target = rng.random_range(0..agents.max(1));
        if kind.is_infra() {
            let gap = Duration::from_millis(rng.random_range(pace.infra_gap.0..=pace.infra_gap.1));
            s.infra.push(Fault {
                kind,
                target,
                hold,
                gap,
            });
        } else {
            let gap = Duration::from_millis(rng.random_range(pace.agent_gap.0..=pace.agent_gap.1));
            s.agents.push(Fault {
                kind,
                target,
                hold,
                gap,
            });
        }
    }
    s
}

/// Ranges (milliseconds) of a schedule's timing.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub hold: (u64, u64),
    pub infra_gap: (u64, u64),
    pub agent_gap: (u64, u64),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_schedule() {
        let pace = Pace {
            hold: (500, 3000),
            infra_gap: (500, 1500),
            agent_gap: (100, 500),
        };
        let a = schedule(7, 200, &Kind::ALL, 8, pace);
        let b = schedule(7, 200, &Kind::ALL, 8, pace);
        let c = schedule(8, 200, &Kind::ALL, 8, pace);
        let kinds = |s: &Schedule| {
            s.infra
                .iter()
                .chain(&s.agents)
                .map(|f| (f.kind, f.target, f.hold))
                .collect::<Vec<_>>()
        };
        assert_eq!(kinds(&a), kinds(&b));
        assert_ne!(kinds(&a), kinds(&c));
        assert_eq!(a.infra.len() + a.agents.len(), 200);
        assert!(a.infra.iter().all(|f| f.kind.is_infra()));
        let only_agents = schedule(7, 50, &[Kind::AgentHangs], 8, pace);
        assert_eq!(only_agents.agents.len(), 50);
    }
}
