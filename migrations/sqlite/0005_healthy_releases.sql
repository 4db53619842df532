-- Releases that ran healthy in an environment: at least one host there
-- reported the release's manifest digest healthy. A rollback without --to goes
-- back only to one of these; a release whose rollout was superseded before
-- any host proved it never lands here.
CREATE TABLE healthy_releases (
    tenant          TEXT NOT NULL,
    app             TEXT NOT NULL,
    environment     TEXT NOT NULL,
    manifest_digest TEXT NOT NULL,
    first_at        INTEGER NOT NULL,
    PRIMARY KEY (tenant, app, environment, manifest_digest)
);

-- Filled from what older controllers knew: hosts judged healthy in a rollout
-- (a host later marked 'reverted' may have been healthy first, but that is
-- not recorded: left out), and what hosts run healthy now (health 2 =
-- HEALTH_HEALTHY).
INSERT INTO healthy_releases (tenant, app, environment, manifest_digest, first_at)
    SELECT r.tenant, r.app, r.environment, r.to_digest, MIN(r.updated_at)
    FROM rollouts r JOIN rollout_hosts h ON h.rollout_id = r.id
    WHERE h.outcome = 'healthy'
    GROUP BY r.tenant, r.app, r.environment, r.to_digest
    ON CONFLICT DO NOTHING;
INSERT INTO healthy_releases (tenant, app, environment, manifest_digest, first_at)
    SELECT s.tenant, s.app, h.environment, s.running_digest, MIN(s.updated_at)
    FROM host_status s JOIN hosts h ON h.tenant = s.tenant AND h.name = s.host
    WHERE s.health = 2 AND s.running_digest != ''
    GROUP BY s.tenant, s.app, h.environment, s.running_digest
    ON CONFLICT DO NOTHING;
