-- Publishers a relay found blocked (destination down or misconfigured), for
-- `stats()` and `outbox status` in other processes. Times are UTC.
CREATE TABLE IF NOT EXISTS __BLOCKED_TABLE__ (
    publisher VARCHAR(255) NOT NULL PRIMARY KEY,
    since     DATETIME(6) NOT NULL,
    reason    MEDIUMTEXT NOT NULL,
    seen_at   DATETIME(6) NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
