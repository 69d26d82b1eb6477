-- The notification outbox of controller replicas (PostgreSQL only; mirrored here so that both
-- schemas stay alike).
-- The notification outbox's marks: one row per incident change (`opened`, `closed`) that the
-- leader replica claimed, fenced by its leader token, before it posted the webhooks. A change
-- with a row is never posted again, by this leader or the next. `sent` is 0 when the change was
-- folded into another replica's incident of the same kind and scope (no post); `sent_as` is the
-- incident id the posts named (the first incident of the group).
CREATE TABLE notified (
    incident_id TEXT NOT NULL,
    change      TEXT NOT NULL,
    sent        INTEGER NOT NULL,
    sent_as     TEXT NOT NULL,
    token       INTEGER NOT NULL,
    at_ms       INTEGER NOT NULL,
    PRIMARY KEY (incident_id, change)
);
-- Incidents from before the outbox were notified by the controller that opened them.
INSERT INTO notified (incident_id, change, sent, sent_as, token, at_ms)
    SELECT id, 'opened', 1, id, 0, 0 FROM incidents;
INSERT INTO notified (incident_id, change, sent, sent_as, token, at_ms)
    SELECT id, 'closed', 1, id, 0, 0 FROM incidents WHERE closed_ms > 0;
