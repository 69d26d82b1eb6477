-- PostgreSQL mirror of migrations/sqlite/0004_alarms.sql.
-- Durable alarms: a note delivered to a session's agent as a nudge when due, at its prompt.
CREATE TABLE alarms (
    id           TEXT PRIMARY KEY NOT NULL,
    node_id      TEXT NOT NULL,
    tmux_socket  TEXT NOT NULL,
    session_name TEXT NOT NULL,
    note         TEXT NOT NULL,
    origin       TEXT NOT NULL,
    created_ms   BIGINT NOT NULL,
    due_ms       BIGINT NOT NULL,
    -- pending, delivered or cancelled
    state        TEXT NOT NULL DEFAULT 'pending',
    closed_ms    BIGINT NOT NULL DEFAULT 0,
    command_id   TEXT NOT NULL DEFAULT '',
    message      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX alarms_pending ON alarms (state, due_ms);
