-- Just-in-time access, command reviews, and event delivery (webhooks, SIEM sinks).
ALTER TABLE connections ADD COLUMN access_options TEXT NOT NULL DEFAULT '{}';

-- Access requests; an approved one is a grant until ends_at.
CREATE TABLE access_requests (
    id TEXT PRIMARY KEY,
    connection TEXT NOT NULL,
    subject TEXT NOT NULL,
    groups_json TEXT NOT NULL,
    reason TEXT NOT NULL,
    duration_secs BIGINT NOT NULL,
    status TEXT NOT NULL,
    reviewers_json TEXT NOT NULL,
    required_approvals BIGINT NOT NULL,
    approvals_json TEXT NOT NULL,
    decided_by TEXT,
    decision_comment TEXT,
    created_at BIGINT NOT NULL,
    decided_at BIGINT,
    ends_at BIGINT
);
CREATE INDEX access_requests_grant ON access_requests (subject, connection, status);
CREATE INDEX access_requests_status ON access_requests (status, ends_at);

-- Commands held for review.
CREATE TABLE reviews (
    id TEXT PRIMARY KEY,
    session_id TEXT,
    connection TEXT NOT NULL,
    subject TEXT NOT NULL,
    groups_json TEXT NOT NULL,
    command TEXT NOT NULL,
    command_hash TEXT NOT NULL,
    rule TEXT NOT NULL,
    status TEXT NOT NULL,
    reviewers_json TEXT NOT NULL,
    required_approvals BIGINT NOT NULL,
    approvals_json TEXT NOT NULL,
    decided_by TEXT,
    decision_comment TEXT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    decided_at BIGINT,
    used_at BIGINT
);
CREATE INDEX reviews_status ON reviews (status, created_at);
CREATE INDEX reviews_reuse ON reviews (subject, connection, command_hash, status);

CREATE TABLE webhooks (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    kinds_json TEXT NOT NULL,
    decisions_json TEXT NOT NULL,
    secret_sealed TEXT NOT NULL,
    description TEXT,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- Where each delivery target (`webhook:<id>`, `siem:<name>`) is in the audit log:
-- the log itself is the outbox, so nothing extra is written per event.
CREATE TABLE outbox_cursors (
    target TEXT PRIMARY KEY,
    seq BIGINT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt_at BIGINT,
    last_error TEXT,
    updated_at BIGINT NOT NULL
);

-- Events a target gave up on after its attempts.
CREATE TABLE dead_letters (
    id TEXT PRIMARY KEY,
    target TEXT NOT NULL,
    seq BIGINT NOT NULL,
    event_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    last_error TEXT NOT NULL,
    failed_at BIGINT NOT NULL
);
CREATE INDEX dead_letters_target ON dead_letters (target, failed_at);
