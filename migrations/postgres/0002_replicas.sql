-- What several controllers sharing one store agree on (ARCHITECTURE.md,
-- "Several controllers").
--
-- The public side of the keys every controller of this store must hold: the
-- CA's key pin and the directive-signing key. Recorded by the first start; a
-- controller holding other keys refuses to start (its agents would refuse it).
CREATE TABLE controller_keys (
    name        TEXT COLLATE "C" PRIMARY KEY,
    public      TEXT COLLATE "C" NOT NULL,
    recorded_at BIGINT NOT NULL
);

-- Leadership: the replica whose lease on `name` ('rollouts') is unexpired on
-- the database's clock runs that job. Used on PostgreSQL; a SQLite store has
-- one controller, which always leads.
CREATE TABLE leases (
    name          TEXT COLLATE "C" PRIMARY KEY,
    holder        TEXT COLLATE "C" NOT NULL,
    expires_at_ms BIGINT NOT NULL
);
