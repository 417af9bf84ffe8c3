-- $1 correlation id, $2 first position, $3 limit, $4 the visibility horizon, read by
-- an earlier statement as for read_all.sql.
SELECT position, stream, revision, recorded_at, event_id, event_type, event_version, occurred_at, source, data, correlation_id, causation_id, user_id, extra::text AS extra
FROM tidings_events
WHERE correlation_id = $1 AND position >= $2
  AND position < $4::bigint
ORDER BY position
LIMIT $3
