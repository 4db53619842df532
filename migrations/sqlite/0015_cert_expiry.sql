-- Every certificate recorded (an enrollment, a renewal) drops the expired
-- ones; without an index that was a scan of every host's certificates under
-- the store's write lock, once per join of a 10,000-host storm.
CREATE INDEX host_certs_by_expiry ON host_certs (not_after);
