-- The sender's event version of each message (1 when the message does not
-- say). Rows written before this migration are version 1.
ALTER TABLE __TABLE__ ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
