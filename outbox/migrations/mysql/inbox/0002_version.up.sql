-- DDL is not transactional here: a table of another program that happens
-- to have this name fails this probe (unknown column) before it is altered.
SELECT event_id, status, attempts, updated_at FROM __TABLE__ WHERE 1 = 0;
-- The sender's event version of each message (1 when the message does not
-- say). Rows written before this migration are version 1. Added as the last
-- column: an instant change on MySQL 8.0 and MariaDB 10.6, no table rebuild.
ALTER TABLE __TABLE__ ADD COLUMN version INT NOT NULL DEFAULT 1;
