-- Portable SQL: runs unchanged on SQLite and PostgreSQL.
-- Times are Unix microseconds (BIGINT); lists and structures are JSON text.

CREATE TABLE gateway_state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE connections (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    username TEXT,
    secret_kind TEXT,
    secret_sealed TEXT,
    tls TEXT NOT NULL,
    allowed_groups TEXT NOT NULL,
    policies TEXT NOT NULL,
    description TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    subject TEXT NOT NULL,
    groups_json TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT
);

CREATE TABLE audit_head (
    id BIGINT PRIMARY KEY,
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL
);

INSERT INTO audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

CREATE TABLE audit_events (
    seq BIGINT PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    time_us BIGINT NOT NULL,
    session_id TEXT,
    subject TEXT,
    connection TEXT,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);

CREATE INDEX audit_events_time ON audit_events (time_us);
CREATE INDEX audit_events_subject ON audit_events (subject, seq);
CREATE INDEX audit_events_connection ON audit_events (connection, seq);
CREATE INDEX audit_events_kind ON audit_events (kind, seq);
CREATE INDEX audit_events_session ON audit_events (session_id, seq);

CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    connection TEXT NOT NULL,
    protocol TEXT NOT NULL,
    subject TEXT NOT NULL,
    groups_json TEXT NOT NULL,
    client_addr TEXT,
    started_at BIGINT NOT NULL,
    ended_at BIGINT,
    status TEXT NOT NULL,
    end_reason TEXT,
    commands BIGINT NOT NULL,
    denied BIGINT NOT NULL,
    bytes_in BIGINT NOT NULL,
    bytes_out BIGINT NOT NULL,
    recording TEXT
);

CREATE INDEX sessions_started ON sessions (started_at);
CREATE INDEX sessions_connection ON sessions (connection, started_at);
CREATE INDEX sessions_subject ON sessions (subject, started_at);
