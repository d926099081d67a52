-- The sender's event version of each message (1 when the message does not
-- say). Rows written before this migration are version 1. A constant
-- default adds the column without a table rewrite.
ALTER TABLE __TABLE__ ADD COLUMN IF NOT EXISTS version INTEGER NOT NULL DEFAULT 1;
