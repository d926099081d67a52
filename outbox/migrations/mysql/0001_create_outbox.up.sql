-- The outbox table. `__TABLE__` and `__NAME__` are filled in by the library
-- with the validated table name. Times are UTC (DATETIME carries no zone):
-- the library always writes them from UTC_TIMESTAMP(6), never from NOW(),
-- so the session time zone does not matter. UUIDs are hyphenated text.
-- MariaDB has no partial indexes: (status, id) serves "pending in record
-- order" for claims and "dead in record order" for listing, (stream_key, id)
-- the per-stream order check, (status, published_at) retention cleanup.
CREATE TABLE IF NOT EXISTS __TABLE__ (
    id             BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    event_id       CHAR(36) CHARACTER SET ascii NOT NULL,
    name           VARCHAR(255) NOT NULL,
    payload        LONGTEXT NOT NULL CHECK (JSON_VALID(payload)),
    stream_key     VARCHAR(255) NULL,
    headers        LONGTEXT NOT NULL DEFAULT ('{}') CHECK (JSON_VALID(headers)),
    correlation_id CHAR(36) CHARACTER SET ascii NULL,
    causation_id   CHAR(36) CHARACTER SET ascii NULL,
    created_at     DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    status         VARCHAR(16) NOT NULL DEFAULT 'pending'
                   CHECK (status IN ('pending', 'dead', 'published')),
    attempts       INT NOT NULL DEFAULT 0,
    last_error     MEDIUMTEXT NULL,
    available_at   DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    claim_token    CHAR(36) CHARACTER SET ascii NULL,
    published_at   DATETIME(6) NULL,
    UNIQUE KEY `__NAME___event_id` (event_id),
    KEY `__NAME___status_id` (status, id),
    KEY `__NAME___stream` (stream_key, id),
    KEY `__NAME___published` (status, published_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
