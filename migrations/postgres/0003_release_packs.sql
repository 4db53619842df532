-- As migrations/sqlite/0014_release_packs.sql.
CREATE TABLE release_packs (
    tenant          TEXT COLLATE "C" NOT NULL,
    manifest_digest TEXT COLLATE "C" NOT NULL,
    pack_digest     TEXT COLLATE "C" NOT NULL REFERENCES blobs(digest),
    pack_size       BIGINT NOT NULL,
    PRIMARY KEY (tenant, manifest_digest, pack_digest)
);

ALTER TABLE join_tokens ADD COLUMN used_csr TEXT COLLATE "C" NOT NULL DEFAULT '';
