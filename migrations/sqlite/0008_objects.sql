-- Format-2 releases (issue 12): a blob may be an object pack; the key names
-- the objects it holds and their order (sha256 over the object digests), so a
-- release with the same objects reuses the full pack of an earlier one.
ALTER TABLE blobs ADD COLUMN objects_key TEXT;
CREATE INDEX blobs_objects_key ON blobs (objects_key);
CREATE INDEX releases_manifest_digest ON releases (tenant, manifest_digest);
