-- Nodes and their fencing epochs: an epoch only ever grows.
CREATE TABLE nodes (
    node_id        TEXT PRIMARY KEY NOT NULL,
    epoch          INTEGER NOT NULL,
    hostname       TEXT NOT NULL DEFAULT '',
    agent_version  TEXT NOT NULL DEFAULT '',
    boot_id        TEXT NOT NULL DEFAULT '',
    last_attach_ms INTEGER NOT NULL DEFAULT 0
);

-- Every session state transition (heartbeats and unchanged reports write nothing).
CREATE TABLE transitions (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    node_id      TEXT NOT NULL,
    tmux_socket  TEXT NOT NULL,
    session_name TEXT NOT NULL,
    at_ms        INTEGER NOT NULL,
    from_state   TEXT NOT NULL,
    to_state     TEXT NOT NULL,
    reason       TEXT NOT NULL
);
CREATE INDEX transitions_by_session ON transitions (node_id, session_name, id);

-- The audit log: every command, who decided it, why, and how it ended.
CREATE TABLE commands (
    command_id     TEXT PRIMARY KEY NOT NULL,
    node_id        TEXT NOT NULL,
    tmux_socket    TEXT NOT NULL,
    session_name   TEXT NOT NULL,
    epoch          INTEGER NOT NULL,
    action         TEXT NOT NULL,
    origin         TEXT NOT NULL,
    reason         TEXT NOT NULL,
    issued_at_ms   INTEGER NOT NULL,
    status         TEXT NOT NULL DEFAULT 'COMMAND_STATUS_UNSPECIFIED',
    result_message TEXT NOT NULL DEFAULT '',
    finished_at_ms INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX commands_by_session ON commands (node_id, session_name, issued_at_ms);
