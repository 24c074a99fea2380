-- Network agents: registrations (the key stored as a SHA-256 of the whole token) and
-- what the gateway last saw of them; connections may name one.
CREATE TABLE agents (
    name TEXT PRIMARY KEY,
    key_id TEXT NOT NULL UNIQUE,
    key_hash TEXT NOT NULL,
    description TEXT,
    -- JSON list of networks its tunnels may come from; empty: anywhere.
    sources TEXT NOT NULL DEFAULT '[]',
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT,
    last_seen_at BIGINT,
    last_address TEXT,
    last_version TEXT,
    sessions_carried BIGINT NOT NULL DEFAULT 0
);

ALTER TABLE connections ADD COLUMN agent TEXT;
