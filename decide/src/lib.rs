//! The Argus decision core, pure: functions of (state, input, now, policy) returning the new state
//! and the effects to carry out. No I/O, no clock, no randomness of its own: the controller's
//! supervisor feeds it and executes what it returns, and tests drive it with a simulated clock.
//! This crate depends on `argus-shared` only, so the compiler keeps it that way.
//!
//! - [`alarm`]: when a due alarm is delivered (at the prompt) or held;
//! - [`detect`]: one session's lifecycle and detection (`step`), deaths and restarts;
//! - [`effect`]: the typed effects and notices a step returns;
//! - [`budget`]: the fleet-wide budget of kills and restarts, reserved where they are decided;
//! - [`escalate`]: the escalation ladder (warn, nudge, triage, confirm, restart or kill);
//! - [`gate`]: quality gates: when they run, how an outcome is judged, feedback and escalation;
//! - [`guard`]: guarded files restored on a node: the record and the agent's warning;
//! - [`handoff`]: why a restart happened, and the resume message its new agent gets;
//! - [`correlate`]: incidents by failure domain, which gate per-session actions;
//! - [`health`]: node health from silence, and the fleet's share of silent nodes;
//! - [`policy`]: thresholds, dwell times and budgets;
//! - [`triage`]: the built-in triage heuristic;
//! - [`worktree`]: git discipline: the reminder to commit old uncommitted work.

pub mod alarm;
pub mod budget;
pub mod correlate;
pub mod detect;
pub mod effect;
pub mod escalate;
pub mod gate;
pub mod guard;
pub mod handoff;
pub mod health;
pub mod policy;
pub mod triage;
pub mod worktree;
