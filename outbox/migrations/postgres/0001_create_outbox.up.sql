-- The outbox table. `__TABLE__` and `__NAME__` are filled in by the library
-- with the validated table name.
CREATE TABLE IF NOT EXISTS __TABLE__ (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id       UUID NOT NULL UNIQUE,
    name           TEXT NOT NULL,
    payload        JSON NOT NULL,
    stream_key     TEXT,
    headers        JSON NOT NULL DEFAULT '{}',
    correlation_id UUID,
    causation_id   UUID,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    status         TEXT NOT NULL DEFAULT 'pending'
                   CHECK (status IN ('pending', 'dead', 'published')),
    attempts       INTEGER NOT NULL DEFAULT 0,
    last_error     TEXT,
    available_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    claim_token    UUID,
    published_at   TIMESTAMPTZ
);

-- Claims scan only pending entries, in record order.
CREATE INDEX IF NOT EXISTS "__NAME___pending" ON __TABLE__ (id) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS "__NAME___dead" ON __TABLE__ (id) WHERE status = 'dead';
-- Per-stream order looks up earlier entries of the same stream.
CREATE INDEX IF NOT EXISTS "__NAME___stream" ON __TABLE__ (stream_key, id)
    WHERE stream_key IS NOT NULL AND status <> 'published';
-- Retention cleanup finds old published entries.
CREATE INDEX IF NOT EXISTS "__NAME___published" ON __TABLE__ (published_at) WHERE status = 'published';
