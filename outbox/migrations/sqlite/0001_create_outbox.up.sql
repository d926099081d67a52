-- The outbox table. `__TABLE__` and `__NAME__` are filled in by the library
-- with the validated table name. Times are Unix milliseconds (UTC).
CREATE TABLE IF NOT EXISTS __TABLE__ (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id       TEXT NOT NULL UNIQUE,
    name           TEXT NOT NULL,
    payload        TEXT NOT NULL,
    stream_key     TEXT,
    headers        TEXT NOT NULL DEFAULT '{}',
    correlation_id TEXT,
    causation_id   TEXT,
    created_at     INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
    status         TEXT NOT NULL DEFAULT 'pending'
                   CHECK (status IN ('pending', 'dead', 'published')),
    attempts       INTEGER NOT NULL DEFAULT 0,
    last_error     TEXT,
    available_at   INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
    claim_token    TEXT,
    published_at   INTEGER
);

CREATE INDEX IF NOT EXISTS "__NAME___pending" ON __TABLE__ (id) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS "__NAME___dead" ON __TABLE__ (id) WHERE status = 'dead';
CREATE INDEX IF NOT EXISTS "__NAME___stream" ON __TABLE__ (stream_key, id)
    WHERE stream_key IS NOT NULL AND status <> 'published';
CREATE INDEX IF NOT EXISTS "__NAME___published" ON __TABLE__ (published_at) WHERE status = 'published';
