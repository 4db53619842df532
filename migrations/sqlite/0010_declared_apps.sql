-- Apps declared on the controller (`slipctl apps add`): host settings per
-- environment (host = '') and per-host overrides, as JSON
-- (proto::apps::AppSettings). They travel to hosts in signed DeclaredApps.
CREATE TABLE app_settings (
    tenant      TEXT NOT NULL,
    environment TEXT NOT NULL,
    app         TEXT NOT NULL,
    host        TEXT NOT NULL DEFAULT '',
    settings    TEXT NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant, environment, app, host)
);

-- Bumped by every change of an environment's declarations; hosts say which
-- revision they took (and which apps they refused there).
CREATE TABLE app_revisions (
    tenant      TEXT NOT NULL,
    environment TEXT NOT NULL,
    revision    INTEGER NOT NULL,
    PRIMARY KEY (tenant, environment)
);

ALTER TABLE hosts ADD COLUMN apps_revision INTEGER NOT NULL DEFAULT 0;
ALTER TABLE hosts ADD COLUMN apps_refused TEXT NOT NULL DEFAULT '{}';
