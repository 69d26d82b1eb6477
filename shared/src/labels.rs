//! Session labels: tmux user options `@argus-NAME` on a session, read by the node agent and sent
//! without the prefix. Every label name is written here once.

/// The prefix of the tmux user options that carry labels.
pub const OPTION_PREFIX: &str = "@argus-";

/// The agent profile to read the screen with (`claude`, `codex`, ...).
pub const PROFILE: &str = "profile";
/// The command that restarts the agent; setting it opts the session into restart on death.
pub const RESTART: &str = "restart";
/// The model provider (a failure domain for correlation).
pub const PROVIDER: &str = "provider";
/// The provider account (a failure domain for correlation).
pub const ACCOUNT: &str = "account";
/// The policy group (`[groups.NAME]` in the policy).
pub const GROUP: &str = "group";

/// The session's quality gate command (run in its working directory at a finish point).
pub const GATE: &str = "gate";

/// Every label the node agent reads.
pub const ALL: [&str; 6] = [PROFILE, PROVIDER, ACCOUNT, GROUP, RESTART, GATE];

/// The tmux option name of a label (`@argus-restart`).
pub fn option_name(label: &str) -> String {
    format!("{OPTION_PREFIX}{label}")
}
