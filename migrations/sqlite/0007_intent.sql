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

-- Yanked releases (`slipctl releases yank`): kept, listed as yanked, never
-- deployed, promoted or rolled back to again, and left out of the app's next
-- counter.
ALTER TABLE releases ADD COLUMN yanked_at INTEGER;
ALTER TABLE releases ADD COLUMN yank_reason TEXT NOT NULL DEFAULT '';

-- Counters are 1..=i64::MAX. A counter above that (2^63 and up, accepted
-- before and stored negative) froze the app's signed publishing: such
-- releases are yanked, their counter cleared.
UPDATE releases
   SET yanked_at = CAST(strftime('%s', 'now') AS INTEGER),
       yank_reason = 'release counter ' || CAST(counter AS TEXT) || ' was out of range (stored before 0007)',
       counter = 0
 WHERE counter < 0;

-- What a rollout does with hosts that are offline (no session, stale
-- heartbeats): fail, wait (hold the step until they return or it times out)
-- or skip. Environments default to wait; rollouts started before this keep
-- what they did (skip).
ALTER TABLE environments ADD COLUMN offline TEXT NOT NULL DEFAULT 'wait';
ALTER TABLE rollouts ADD COLUMN offline TEXT NOT NULL DEFAULT 'skip';
