-- PostgreSQL mirror of migrations/sqlite/0002_policy_state.sql.
-- Per-session state that must survive a restart: cooldowns, restart and crash records (JSON).
CREATE TABLE session_durable (
    node_id      TEXT NOT NULL,
    tmux_socket  TEXT NOT NULL,
    session_name TEXT NOT NULL,
    data         TEXT NOT NULL,
    updated_ms   BIGINT NOT NULL,
    PRIMARY KEY (node_id, tmux_socket, session_name)
);

-- Incidents: one row per root cause.
CREATE TABLE incidents (
    id         TEXT PRIMARY KEY NOT NULL,
    kind       TEXT NOT NULL,
    scope      TEXT NOT NULL,
    opened_ms  BIGINT NOT NULL,
    closed_ms  BIGINT NOT NULL DEFAULT 0,
    acked_ms   BIGINT NOT NULL DEFAULT 0,
    acked_by   TEXT NOT NULL DEFAULT '',
    summary    TEXT NOT NULL,
    sessions   BIGINT NOT NULL DEFAULT 0,
    until_ms   BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX incidents_by_time ON incidents (opened_ms);
