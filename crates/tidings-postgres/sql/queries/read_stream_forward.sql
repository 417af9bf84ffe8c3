-- $1 stream, $2 first revision, $3 limit.
SELECT position, stream, revision, recorded_at, event_id, event_type, event_version, occurred_at, source, data, correlation_id, causation_id, user_id, extra::text AS extra
FROM tidings_events
WHERE stream = $1 AND revision >= $2
ORDER BY revision
LIMIT $3
