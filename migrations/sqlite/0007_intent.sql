-- Intent hardening (issue 11).

-- Nonces of operator rollback authorizations (slipway.rollback.v2) already
-- used: an authorization allows one rollback. Rows past their expiry are
-- pruned (an expired authorization is refused before its nonce is looked up).
CREATE TABLE rollback_nonces (
    tenant      TEXT NOT NULL,
    nonce       TEXT NOT NULL,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER NOT NULL,
    PRIMARY KEY (tenant, nonce)
);
