-- DDL is not transactional here: a table of another program that happens
-- to have this name fails this probe (unknown column) before it is altered.
SELECT event_id, status, claim_token, available_at FROM __TABLE__ WHERE 1 = 0;
-- The version of the event type that recorded each entry (`Event::VERSION`,
-- from 1). Entries written before this migration, and rows a writer inserts
-- without it, are version 1. Added as the last column: an instant change on
-- MySQL 8.0 and MariaDB 10.6, no table rebuild.
ALTER TABLE __TABLE__ ADD COLUMN version INT NOT NULL DEFAULT 1;
