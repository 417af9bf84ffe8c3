-- Hands ready messages to a member, oldest first, each under a fresh delivery id, and
-- returns them with their events. Rows other fetches are handing out are skipped
-- (SKIP LOCKED), so concurrent fetchers never wait for each other.
-- Pinned: a message waits while its stream has a message out, or an earlier one ready
-- (or, with sequenced parking, parked). Only the oldest unsettled message of a stream
-- can pass, so two fetches never take two messages of one stream.
-- $1 group id, $2 member, $3 how many, $4 pinned, $5 sequenced parking,
-- $6 message timeout (ms).
WITH picked AS (
    SELECT m.position
    FROM tidings_group_messages m
    WHERE m.group_id = $1 AND m.state = 'ready' AND m.ready_at <= now()
      AND (NOT $4::boolean OR NOT EXISTS (
          SELECT 1 FROM tidings_group_messages e
          WHERE e.group_id = $1 AND e.stream = m.stream AND e.position <> m.position
            AND (e.state = 'out'
                 OR (e.position < m.position
                     AND (e.state = 'ready' OR ($5::boolean AND e.state = 'parked'))))))
    ORDER BY m.position
    LIMIT $3
    FOR UPDATE OF m SKIP LOCKED
)
UPDATE tidings_group_messages m
SET state = 'out',
    member = $2,
    delivery_id = nextval('tidings_group_delivery_ids'),
    out_until = now() + $6::bigint * interval '1 millisecond'
FROM picked p, tidings_events e
WHERE m.group_id = $1 AND m.position = p.position AND e.position = p.position
RETURNING m.delivery_id, m.attempts, m.replay,
          e.position, e.stream, e.revision, e.recorded_at, e.event_id, e.event_type,
          e.event_version, e.occurred_at, e.source, e.data, e.correlation_id,
          e.causation_id, e.user_id, e.extra::text AS extra
