-- Where in the chain each subject's, connection's and session's events are: one row
-- per value per append, in place of an index entry per event (see audit_keys.rs).
-- Events already stored get one stretch per value per 4,096 sequence numbers.
CREATE TABLE audit_keys (
    key TEXT NOT NULL,
    first_seq BIGINT NOT NULL,
    last_seq BIGINT NOT NULL,
    PRIMARY KEY (key, first_seq)
);
-- Verification walks the chain and the stretches together, in order.
CREATE INDEX audit_keys_first ON audit_keys (first_seq);

INSERT INTO audit_keys (key, first_seq, last_seq)
SELECT 's:' || subject, MIN(seq), MAX(seq) FROM audit_events
WHERE subject IS NOT NULL GROUP BY subject, seq / 4096;

INSERT INTO audit_keys (key, first_seq, last_seq)
SELECT 'c:' || connection, MIN(seq), MAX(seq) FROM audit_events
WHERE connection IS NOT NULL GROUP BY connection, seq / 4096;

INSERT INTO audit_keys (key, first_seq, last_seq)
SELECT 'x:' || session_id, MIN(seq), MAX(seq) FROM audit_events
WHERE session_id IS NOT NULL GROUP BY session_id, seq / 4096;

DROP INDEX audit_events_subject;
DROP INDEX audit_events_connection;
DROP INDEX audit_events_session;
