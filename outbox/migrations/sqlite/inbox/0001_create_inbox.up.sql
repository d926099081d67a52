-- The inbox table: one row per received event id. `__TABLE__` and
-- `__NAME__` are filled in by the library with the validated table name.
-- Times are Unix milliseconds (UTC); UUIDs are hyphenated text.
-- status: done (processed; payload dropped; kept for the dedupe window),
-- failed (attempts made; the message kept), dead (a dead letter),
-- requeued (a dead letter given back, processed from the table).
CREATE TABLE IF NOT EXISTS __TABLE__ (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id       TEXT NOT NULL UNIQUE,
    name           TEXT NOT NULL,
    status         TEXT NOT NULL
                   CHECK (status IN ('done', 'failed', 'dead', 'requeued')),
    attempts       INTEGER NOT NULL DEFAULT 0,
    payload        TEXT,
    stream_key     TEXT,
    headers        TEXT,
    correlation_id TEXT,
    causation_id   TEXT,
    last_error     TEXT,
    received_at    INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),
    updated_at     INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))
);

-- Cleanup finds processed ids past the dedupe window.
CREATE INDEX IF NOT EXISTS "__NAME___done" ON __TABLE__ (updated_at) WHERE status = 'done';
-- Listing dead letters and finding requeued ones, in arrival order.
CREATE INDEX IF NOT EXISTS "__NAME___open" ON __TABLE__ (status, id) WHERE status <> 'done';
