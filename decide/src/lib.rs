//! The Argus decision core, pure: functions of (state, input, now, policy) returning the new state
//! and the effects to carry out. No I/O, no clock, no randomness of its own: the controller's
//! supervisor feeds it and executes what it returns, and tests drive it with a simulated clock.
//! This crate depends on `argus-shared` only, so the compiler keeps it that way.
//!
//! - [`detect`]: one session's lifecycle and detection (`step`), deaths and restarts;
//! - [`escalate`]: the escalation ladder (warn, nudge, triage, confirm, restart or kill);
//! - [`correlate`]: incidents by failure domain, which gate per-session actions;
//! - [`policy`]: thresholds, dwell times and budgets;
//! - [`triage`]: the built-in triage heuristic.

pub mod correlate;
pub mod detect;
pub mod escalate;
pub mod policy;
pub mod triage;
