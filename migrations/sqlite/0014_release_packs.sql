-- The object packs a format-2 release was published with, beside its full
-- pack: with blobs in a bucket, a replica that did not receive the publish
-- files the release's new objects from them (ARCHITECTURE.md, "Several
-- controllers").
CREATE TABLE release_packs (
    tenant          TEXT NOT NULL,
    manifest_digest TEXT NOT NULL,
    pack_digest     TEXT NOT NULL REFERENCES blobs(digest),
    pack_size       INTEGER NOT NULL,
    PRIMARY KEY (tenant, manifest_digest, pack_digest)
);
