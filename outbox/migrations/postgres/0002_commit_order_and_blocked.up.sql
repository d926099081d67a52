-- Commit order: each row keeps the id of the transaction that wrote it, and
-- claims take only rows whose transaction is older than every transaction
-- still writing to this table. Added without a table rewrite: rows written
-- before this migration keep NULL (their transactions ended long ago).
ALTER TABLE __TABLE__ ADD COLUMN IF NOT EXISTS xid xid8;
ALTER TABLE __TABLE__ ALTER COLUMN xid SET DEFAULT pg_current_xact_id();

-- Publishers a relay found blocked (destination down or misconfigured), for
-- `stats()` and `outbox status` in other processes.
CREATE TABLE IF NOT EXISTS __BLOCKED_TABLE__ (
    publisher TEXT PRIMARY KEY,
    since     TIMESTAMPTZ NOT NULL,
    reason    TEXT NOT NULL,
    seen_at   TIMESTAMPTZ NOT NULL
);
