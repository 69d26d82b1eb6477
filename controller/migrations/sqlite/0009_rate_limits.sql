-- Fleet-wide provider incidents among controller replicas (PostgreSQL only; mirrored here so
-- that both schemas stay alike).
-- One row per session in a rate-limit episode, written by the replica that owns its node when
-- the episode starts or is renewed (`at_ms`, the cooldown end `until_ms`) and deleted when it
-- ends: never per heartbeat or per unchanged report. The leader replica counts them per
-- provider scope across the fleet and opens or closes one `provider_limit` incident per scope.
CREATE TABLE rate_limits (
    node_id      TEXT NOT NULL,
    tmux_socket  TEXT NOT NULL,
    session_name TEXT NOT NULL,
    scope        TEXT NOT NULL,
    at_ms        INTEGER NOT NULL,
    until_ms     INTEGER NOT NULL,
    PRIMARY KEY (node_id, tmux_socket, session_name)
);
-- Every replica reads the open provider incidents every second.
CREATE INDEX incidents_open ON incidents (kind, scope) WHERE closed_ms = 0;
