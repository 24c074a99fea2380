-- The gateway instance that serves a session: at its next start it closes, as
-- interrupted, the sessions it left open when it died.
ALTER TABLE sessions ADD COLUMN gateway_id TEXT;
