-- Hardening of the controller's edge (issue 11).
-- API tokens may expire (NULL: never), and remember when they were last used
-- (updated at most once a minute per token, NULL: never used).
ALTER TABLE api_tokens ADD COLUMN expires_at INTEGER;
ALTER TABLE api_tokens ADD COLUMN last_used_at INTEGER;
