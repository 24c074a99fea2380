-- SSH: per-connection options (host key pin, forwarding) and users' registered keys.
ALTER TABLE connections ADD COLUMN ssh_options TEXT NOT NULL DEFAULT '{}';

CREATE TABLE ssh_user_keys (
    fingerprint TEXT PRIMARY KEY,
    public_key TEXT NOT NULL,
    name TEXT NOT NULL,
    subject TEXT NOT NULL,
    groups_json TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX ssh_user_keys_subject ON ssh_user_keys (subject);
