-- Publishers a relay found blocked (destination down or misconfigured), for
-- `stats()` and `outbox status` in other processes. Times are Unix ms.
CREATE TABLE IF NOT EXISTS __BLOCKED_TABLE__ (
    publisher TEXT PRIMARY KEY,
    since     INTEGER NOT NULL,
    reason    TEXT NOT NULL,
    seen_at   INTEGER NOT NULL
);
