-- Fleet: the inventory (host purpose, criticality, labels, OS), each
-- environment's soak and rollout strategy, rollouts host by host, how long a
-- host has run its release healthy, and drift reported by agents.

ALTER TABLE hosts ADD COLUMN purpose TEXT NOT NULL DEFAULT '';
ALTER TABLE hosts ADD COLUMN criticality TEXT NOT NULL DEFAULT 'medium';
-- JSON object, keys sorted.
ALTER TABLE hosts ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
ALTER TABLE hosts ADD COLUMN os TEXT NOT NULL DEFAULT '';

ALTER TABLE environments ADD COLUMN soak_secs INTEGER NOT NULL DEFAULT 0;
ALTER TABLE environments ADD COLUMN canary INTEGER NOT NULL DEFAULT 1;
-- "N" hosts or "N%" of the environment's hosts.
ALTER TABLE environments ADD COLUMN batch TEXT NOT NULL DEFAULT '25%';
ALTER TABLE environments ADD COLUMN batch_timeout_secs INTEGER NOT NULL DEFAULT 600;
ALTER TABLE environments ADD COLUMN pause_secs INTEGER NOT NULL DEFAULT 0;
ALTER TABLE environments ADD COLUMN max_failures TEXT NOT NULL DEFAULT '0';
ALTER TABLE environments ADD COLUMN auto_revert INTEGER NOT NULL DEFAULT 1;

-- One row per change of an app's desired release in an environment. While a
-- rollout is running, paused or halted it holds back the hosts it has not
-- admitted yet: they keep (from_version, from_generation).
CREATE TABLE rollouts (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant             TEXT NOT NULL,
    app                TEXT NOT NULL,
    environment        TEXT NOT NULL,
    from_version       TEXT NOT NULL DEFAULT '',
    from_generation    INTEGER NOT NULL DEFAULT 0,
    to_version         TEXT NOT NULL,
    to_digest          TEXT NOT NULL,
    generation         INTEGER NOT NULL,
    canary             INTEGER NOT NULL,
    batch              TEXT NOT NULL,
    batch_timeout_secs INTEGER NOT NULL,
    pause_secs         INTEGER NOT NULL,
    max_failures       TEXT NOT NULL,
    auto_revert        INTEGER NOT NULL,
    state              TEXT NOT NULL,
    step               INTEGER NOT NULL DEFAULT 0,
    steps              INTEGER NOT NULL,
    -- 0 until the current step's hosts are admitted.
    step_started_at    INTEGER NOT NULL DEFAULT 0,
    -- End of the pause after a finished step (0: none pending).
    next_step_at       INTEGER NOT NULL DEFAULT 0,
    reason             TEXT NOT NULL DEFAULT '',
    created_by         TEXT NOT NULL,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL
);
CREATE INDEX rollouts_by_app ON rollouts (tenant, app, environment, id);
CREATE INDEX rollouts_by_state ON rollouts (state);

CREATE TABLE rollout_hosts (
    rollout_id  INTEGER NOT NULL REFERENCES rollouts(id),
    host        TEXT NOT NULL,
    step        INTEGER NOT NULL,
    admitted_at INTEGER NOT NULL DEFAULT 0,
    -- pending, healthy, failed, timeout, offline, reverted
    outcome     TEXT NOT NULL DEFAULT 'pending',
    reason      TEXT NOT NULL DEFAULT '',
    -- What the host keeps until admitted: the rollout's previous release, or
    -- what a superseded rollout had already given it.
    hold_version    TEXT NOT NULL DEFAULT '',
    hold_generation INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (rollout_id, host)
);

-- Since when the host has run running_digest healthy (0: not healthy).
ALTER TABLE host_status ADD COLUMN healthy_since INTEGER NOT NULL DEFAULT 0;
-- Drift lines as the agent reports them (newline-separated, bounded), their
-- total count, and the fingerprint of the drift an operator acknowledged.
ALTER TABLE host_status ADD COLUMN drift TEXT NOT NULL DEFAULT '';
ALTER TABLE host_status ADD COLUMN drift_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE host_status ADD COLUMN drift_acked TEXT NOT NULL DEFAULT '';
-- The agent's digest of the drift (paths and what they hold now).
ALTER TABLE host_status ADD COLUMN drift_digest TEXT NOT NULL DEFAULT '';

-- Which hosts of an environment run an app: the hosts whose labels match the
-- selector (a JSON object of label = value, all must match; {}: every host
-- whose agent is configured for the app).
CREATE TABLE placements (
    tenant      TEXT NOT NULL,
    app         TEXT NOT NULL,
    environment TEXT NOT NULL,
    selector    TEXT NOT NULL DEFAULT '{}',
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant, app, environment)
);
