-- The oldest part of the audit chain, moved into archive files: which events each
-- holds, where the chain continues from and ends, and the file's SHA-256.
CREATE TABLE audit_archives (
    first_seq BIGINT PRIMARY KEY,
    last_seq BIGINT NOT NULL,
    prev_hash TEXT NOT NULL,
    last_hash TEXT NOT NULL,
    file TEXT NOT NULL,
    file_sha256 TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
