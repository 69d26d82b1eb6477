-- PostgreSQL mirror of migrations/sqlite/0003_checkpoints.sql.
-- Checkpoints node agents took before kills and restarts (and on demand): the checkpoint itself
-- is the protobuf-encoded argus.v1.Checkpoint in `data`.
CREATE TABLE checkpoints (
    id           TEXT PRIMARY KEY NOT NULL,
    node_id      TEXT NOT NULL,
    tmux_socket  TEXT NOT NULL,
    session_name TEXT NOT NULL,
    taken_ms     BIGINT NOT NULL,
    trigger      TEXT NOT NULL,
    command_id   TEXT NOT NULL DEFAULT '',
    reason       TEXT NOT NULL DEFAULT '',
    data         BYTEA NOT NULL,
    -- Insertion order (SQLite's rowid).
    seq          BIGINT GENERATED ALWAYS AS IDENTITY
);
CREATE INDEX checkpoints_by_session ON checkpoints (node_id, session_name, taken_ms);
CREATE INDEX checkpoints_by_time ON checkpoints (taken_ms);

-- Handoffs: a restart from one agent incarnation to the next, until the new one works.
CREATE TABLE handoffs (
    id                 TEXT PRIMARY KEY NOT NULL,
    node_id            TEXT NOT NULL,
    tmux_socket        TEXT NOT NULL,
    session_name       TEXT NOT NULL,
    reason             TEXT NOT NULL,
    detail             TEXT NOT NULL DEFAULT '',
    checkpoint_id      TEXT NOT NULL DEFAULT '',
    restart_command_id TEXT NOT NULL DEFAULT '',
    from_pid           BIGINT NOT NULL DEFAULT 0,
    from_start         BIGINT NOT NULL DEFAULT 0,
    to_pid             BIGINT NOT NULL DEFAULT 0,
    to_start           BIGINT NOT NULL DEFAULT 0,
    state              TEXT NOT NULL,
    started_ms         BIGINT NOT NULL,
    resumed_ms         BIGINT NOT NULL DEFAULT 0,
    ended_ms           BIGINT NOT NULL DEFAULT 0,
    restarts           BIGINT NOT NULL DEFAULT 1,
    resume_attempts    BIGINT NOT NULL DEFAULT 0,
    resume_command_id  TEXT NOT NULL DEFAULT '',
    message            TEXT NOT NULL DEFAULT ''
);
CREATE INDEX handoffs_open ON handoffs (ended_ms, started_ms);
CREATE INDEX handoffs_by_session ON handoffs (node_id, session_name, started_ms);
