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

-- The digest of the CSR a join token was used with: the same host asking
-- again with the same CSR (its answer lost on the way) is answered again
-- instead of being told the token is used.
ALTER TABLE join_tokens ADD COLUMN used_csr TEXT NOT NULL DEFAULT '';
