-- PostgreSQL mirror of migrations/sqlite/0001_init.sql: BIGINT for times and epochs, an identity
-- column where SQLite orders by rowid.
-- Nodes and their fencing epochs: an epoch only ever grows.
CREATE TABLE nodes (
    node_id        TEXT PRIMARY KEY NOT NULL,
    epoch          BIGINT NOT NULL,
    hostname       TEXT NOT NULL DEFAULT '',
    agent_version  TEXT NOT NULL DEFAULT '',
    boot_id        TEXT NOT NULL DEFAULT '',
    last_attach_ms BIGINT NOT NULL DEFAULT 0
);

-- Every session state transition (heartbeats and unchanged reports write nothing).
CREATE TABLE transitions (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    node_id      TEXT NOT NULL,
    tmux_socket  TEXT NOT NULL,
    session_name TEXT NOT NULL,
    at_ms        BIGINT NOT NULL,
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
    epoch          BIGINT NOT NULL,
    action         TEXT NOT NULL,
    origin         TEXT NOT NULL,
    reason         TEXT NOT NULL,
    issued_at_ms   BIGINT NOT NULL,
    status         TEXT NOT NULL DEFAULT 'COMMAND_STATUS_UNSPECIFIED',
    result_message TEXT NOT NULL DEFAULT '',
    finished_at_ms BIGINT NOT NULL DEFAULT 0,
    -- Insertion order (SQLite's rowid): ties of issued_at_ms keep it.
    seq            BIGINT GENERATED ALWAYS AS IDENTITY
);
CREATE INDEX commands_by_session ON commands (node_id, session_name, issued_at_ms);
