-- Dashboard sessions: one per sign-in with an API token. The cookie holds a
-- random id; only its SHA-256 is kept. A session lives no longer than its
-- token: every request checks the token again (revoked, expired).
CREATE TABLE web_sessions (
    id_hash     TEXT PRIMARY KEY,
    token_id    TEXT NOT NULL REFERENCES api_tokens(id),
    csrf        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);
CREATE INDEX web_sessions_by_token ON web_sessions (token_id, created_at);
