-- The inbox table: one row per received event id. `__TABLE__` and
-- `__NAME__` are filled in by the library with the validated table name.
-- Times are UTC, always written from UTC_TIMESTAMP(6); UUIDs are
-- hyphenated text. The payload is kept as received (a dead letter may hold
-- text that is not JSON), so it has no JSON check.
-- status: done (processed; payload dropped; kept for the dedupe window),
-- failed (attempts made; the message kept), dead (a dead letter),
-- requeued (a dead letter given back, processed from the table).
-- MariaDB has no partial indexes: (status, id) serves dead letters and
-- requeued rows in arrival order, (status, updated_at) the cleanup of
-- processed ids past the dedupe window.
CREATE TABLE IF NOT EXISTS __TABLE__ (
    id             BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    event_id       CHAR(36) CHARACTER SET ascii NOT NULL,
    name           TEXT NOT NULL,
    status         VARCHAR(16) NOT NULL
                   CHECK (status IN ('done', 'failed', 'dead', 'requeued')),
    attempts       INT NOT NULL DEFAULT 0,
    payload        LONGTEXT NULL,
    stream_key     TEXT NULL,
    headers        LONGTEXT NULL,
    correlation_id CHAR(36) CHARACTER SET ascii NULL,
    causation_id   CHAR(36) CHARACTER SET ascii NULL,
    last_error     MEDIUMTEXT NULL,
    received_at    DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    updated_at     DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    UNIQUE KEY `__NAME___event_id` (event_id),
    KEY `__NAME___status_id` (status, id),
    KEY `__NAME___status_updated` (status, updated_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
