-- Trust: API tokens (hashed), one-time join tokens (hashed), the certificates
-- issued to hosts, per-tenant blob links, release counters and signatures.

CREATE TABLE api_tokens (
    id          TEXT PRIMARY KEY,
    tenant      TEXT NOT NULL REFERENCES tenants(name),
    name        TEXT NOT NULL,
    roles       TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    created_by  TEXT NOT NULL,
    revoked_at  INTEGER
);

CREATE TABLE join_tokens (
    id          TEXT PRIMARY KEY,
    tenant      TEXT NOT NULL,
    host        TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER,
    created_at  INTEGER NOT NULL,
    created_by  TEXT NOT NULL
);

-- Every client certificate issued; a call's certificate is looked up here.
CREATE TABLE host_certs (
    fingerprint TEXT PRIMARY KEY,
    tenant      TEXT NOT NULL,
    host        TEXT NOT NULL,
    not_after   INTEGER NOT NULL,
    issued_at   INTEGER NOT NULL
);
CREATE INDEX host_certs_by_host ON host_certs (tenant, host);

ALTER TABLE hosts ADD COLUMN revoked_at INTEGER;
ALTER TABLE hosts ADD COLUMN directive_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE hosts ADD COLUMN cert_fingerprint TEXT NOT NULL DEFAULT '';
ALTER TABLE hosts ADD COLUMN cert_not_after INTEGER NOT NULL DEFAULT 0;

-- A tenant reaches a blob only through its own link: content addressing must
-- not let one tenant read or probe for another's uploads.
CREATE TABLE blob_links (
    tenant      TEXT NOT NULL,
    digest      TEXT NOT NULL REFERENCES blobs(digest),
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant, digest)
);
INSERT OR IGNORE INTO blob_links (tenant, digest, created_at)
    SELECT tenant, blob_digest, MIN(created_at) FROM releases GROUP BY tenant, blob_digest;

ALTER TABLE releases ADD COLUMN counter INTEGER NOT NULL DEFAULT 0;
ALTER TABLE releases ADD COLUMN signatures TEXT NOT NULL DEFAULT '[]';
ALTER TABLE desired ADD COLUMN authorization TEXT NOT NULL DEFAULT '[]';
