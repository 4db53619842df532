-- Slipway controller store, SQLite dialect. Timestamps are unix seconds.
-- Secrets never land here: env vars are known by NAME only.

CREATE TABLE tenants (
    name        TEXT PRIMARY KEY,
    created_at  INTEGER NOT NULL
);

CREATE TABLE environments (
    tenant      TEXT NOT NULL REFERENCES tenants(name),
    name        TEXT NOT NULL,
    production  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, name)
);

CREATE TABLE apps (
    tenant      TEXT NOT NULL REFERENCES tenants(name),
    name        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant, name)
);

CREATE TABLE blobs (
    digest      TEXT PRIMARY KEY,
    size        INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE releases (
    tenant          TEXT NOT NULL,
    app             TEXT NOT NULL,
    version         TEXT NOT NULL,
    manifest_digest TEXT NOT NULL,
    blob_digest     TEXT NOT NULL REFERENCES blobs(digest),
    blob_size       INTEGER NOT NULL,
    git_commit      TEXT,
    entries         INTEGER NOT NULL,
    manifest        BLOB NOT NULL,
    created_at      INTEGER NOT NULL,
    PRIMARY KEY (tenant, app, version),
    FOREIGN KEY (tenant, app) REFERENCES apps(tenant, name)
);

-- The desired release of every app in every environment. `generation` grows with
-- every change (deploy, promote, rollback, retry) so agents can tell a new
-- deploy of the same release from the one they already refused.
CREATE TABLE desired (
    tenant      TEXT NOT NULL,
    app         TEXT NOT NULL,
    environment TEXT NOT NULL,
    version     TEXT NOT NULL,
    generation  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant, app, environment),
    FOREIGN KEY (tenant, app, version) REFERENCES releases(tenant, app, version),
    FOREIGN KEY (tenant, environment) REFERENCES environments(tenant, name)
);

CREATE TABLE desired_history (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant      TEXT NOT NULL,
    app         TEXT NOT NULL,
    environment TEXT NOT NULL,
    version     TEXT NOT NULL,
    generation  INTEGER NOT NULL,
    at          INTEGER NOT NULL
);
CREATE INDEX desired_history_by_app ON desired_history (tenant, app, environment, id);

CREATE TABLE hosts (
    tenant        TEXT NOT NULL REFERENCES tenants(name),
    name          TEXT NOT NULL,
    environment   TEXT NOT NULL,
    agent_version TEXT NOT NULL,
    last_seen     INTEGER NOT NULL,
    PRIMARY KEY (tenant, name)
);

-- What each host reports for each app it is configured to run.
CREATE TABLE host_status (
    tenant          TEXT NOT NULL,
    host            TEXT NOT NULL,
    app             TEXT NOT NULL,
    running_version TEXT NOT NULL DEFAULT '',
    running_digest  TEXT NOT NULL DEFAULT '',
    state           INTEGER NOT NULL DEFAULT 0,
    health          INTEGER NOT NULL DEFAULT 0,
    health_reason   TEXT NOT NULL DEFAULT '',
    env_check       INTEGER NOT NULL DEFAULT 0,
    missing_env     TEXT NOT NULL DEFAULT '',
    last_error      TEXT NOT NULL DEFAULT '',
    failed_version  TEXT NOT NULL DEFAULT '',
    failed_digest   TEXT NOT NULL DEFAULT '',
    generation      INTEGER NOT NULL DEFAULT 0,
    updated_at      INTEGER NOT NULL,
    PRIMARY KEY (tenant, host, app)
);

CREATE TABLE audit (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    tenant      TEXT NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    app         TEXT NOT NULL DEFAULT '',
    environment TEXT NOT NULL DEFAULT '',
    detail      TEXT NOT NULL DEFAULT '',
    outcome     TEXT NOT NULL,
    peer        TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_by_app ON audit (tenant, app, id);

-- Every controller starts with one tenant and the two usual environments.
INSERT INTO tenants (name, created_at) VALUES ('default', 0);
INSERT INTO environments (tenant, name, production) VALUES ('default', 'preprod', 0);
INSERT INTO environments (tenant, name, production) VALUES ('default', 'prod', 1);
