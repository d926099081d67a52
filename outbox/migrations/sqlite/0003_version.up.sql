-- The version of the event type that recorded each entry (`Event::VERSION`,
-- from 1). Entries written before this migration, and rows a writer inserts
-- without it, are version 1.
ALTER TABLE __TABLE__ ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
