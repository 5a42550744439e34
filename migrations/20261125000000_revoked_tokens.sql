-- Console session tokens revoked before they expire (log-out). Only a SHA-256 digest of each
-- token is kept, until the token would have expired anyway.
CREATE TABLE revoked_tokens (
    digest bytea PRIMARY KEY,
    expires_at timestamptz NOT NULL
);
CREATE INDEX revoked_tokens_expires_idx ON revoked_tokens (expires_at);
