-- Controller replicas (PostgreSQL only; mirrored here so that both schemas stay alike). The
-- replica that accepted a node's stream owns it: `owner` and the address other replicas forward
-- its commands to, set by the conditional update that confirms the epoch it raised.
ALTER TABLE nodes ADD COLUMN owner TEXT NOT NULL DEFAULT '';
ALTER TABLE nodes ADD COLUMN owner_addr TEXT NOT NULL DEFAULT '';

-- Leases for fleet-wide duties: one holder at a time, `token` (the fencing token) grows with
-- every change of holder, `expires_ms` in the database's clock.
CREATE TABLE leases (
    name       TEXT PRIMARY KEY NOT NULL,
    holder     TEXT NOT NULL,
    token      INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL
);
