-- The inbox table: one row per received event id. `__TABLE__` and
-- `__NAME__` are filled in by the library with the validated table name.
-- status: done (processed; payload dropped; kept for the dedupe window),
-- failed (attempts made; the message kept), dead (a dead letter),
-- requeued (a dead letter given back, processed from the table).
CREATE TABLE IF NOT EXISTS __TABLE__ (
    event_id       UUID PRIMARY KEY,
    id             BIGINT GENERATED ALWAYS AS IDENTITY,
    name           TEXT NOT NULL,
    status         TEXT NOT NULL
                   CHECK (status IN ('done', 'failed', 'dead', 'requeued')),
    attempts       INTEGER NOT NULL DEFAULT 0,
    payload        TEXT,
    stream_key     TEXT,
    headers        TEXT,
    correlation_id UUID,
    causation_id   UUID,
    last_error     TEXT,
    received_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Cleanup finds processed ids past the dedupe window.
CREATE INDEX IF NOT EXISTS "__NAME___done" ON __TABLE__ (updated_at) WHERE status = 'done';
-- Listing dead letters and finding requeued ones, in arrival order.
CREATE INDEX IF NOT EXISTS "__NAME___open" ON __TABLE__ (status, id) WHERE status <> 'done';
