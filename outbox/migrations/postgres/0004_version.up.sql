-- The version of the event type that recorded each entry (`Event::VERSION`,
-- from 1). Entries written before this migration, and rows a writer inserts
-- without it, are version 1. A constant default adds the column without a
-- table rewrite.
ALTER TABLE __TABLE__ ADD COLUMN IF NOT EXISTS version INTEGER NOT NULL DEFAULT 1;
