-- The parked list, oldest first, with the events.
-- $1 group id, $2 limit.
SELECT m.parked_id, (extract(epoch FROM m.parked_at) * 1000000)::bigint AS parked_at_us,
       coalesce(m.reason, '') AS reason, m.attempts, m.held,
       e.position, e.stream, e.revision, e.recorded_at, e.event_id, e.event_type,
       e.event_version, e.occurred_at, e.source, e.data, e.correlation_id, e.causation_id,
       e.user_id, e.extra::text AS extra
FROM tidings_group_messages m
JOIN tidings_events e ON e.position = m.position
WHERE m.group_id = $1 AND m.parked_id IS NOT NULL
ORDER BY m.parked_at, m.position
LIMIT $2
