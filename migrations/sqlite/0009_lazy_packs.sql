-- A format-2 release published as a delta gets its full pack built after
-- publish (issue 12): until then its blob_digest is ''. This row, with no
-- file behind it and no tenant linked to it, is what the foreign key on
-- releases.blob_digest accepts meanwhile (SQLite cannot drop the NOT NULL
-- without rebuilding the table). No fetch finds it: every blob lookup goes
-- through a tenant's blob_links.
INSERT INTO blobs (digest, size, created_at) VALUES ('', 0, 0) ON CONFLICT DO NOTHING;
