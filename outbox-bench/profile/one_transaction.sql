BEGIN;
WITH due AS (SELECT o.id, o.event_id, o.name, o.payload::text AS payload, o.stream_key, o.headers::text AS headers, o.correlation_id, o.causation_id, o.created_at, o.attempts FROM ob o WHERE o.status = 'pending' AND o.id > :after AND o.available_at <= now() ORDER BY o.id LIMIT 100 FOR UPDATE SKIP LOCKED) SELECT coalesce(array_agg(id),'{}') AS ids, coalesce(max(id), 0) AS after FROM due \gset
DELETE FROM ob WHERE id = ANY(:ids::bigint[]);
COMMIT;
