-- Database migrations as a first-class step (issue 13): each environment's
-- policy ('auto': the agent applies pending migrations before the flip;
-- 'manual': it refuses the release until a promoter approves; '': by the
-- production flag), and the approvals `slipctl migrate` gives per release.
ALTER TABLE environments ADD COLUMN migrations TEXT NOT NULL DEFAULT '';

CREATE TABLE migration_approvals (
    tenant TEXT NOT NULL,
    app TEXT NOT NULL,
    environment TEXT NOT NULL,
    version TEXT NOT NULL,
    approved_by TEXT NOT NULL,
    approved_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, app, environment, version)
);

-- The publisher said the release has a [migrations] table: only its
-- directives may carry apply_migrations (agents without the field verify
-- every other directive unchanged).
ALTER TABLE releases ADD COLUMN has_migrations INTEGER NOT NULL DEFAULT 0;
