-- Sequenced parking: parks, as held, the ready messages of a stream behind an earlier
-- parked one (the pick query never hands them out either; this puts them in the list).
-- $1 group id.
WITH behind AS (
    SELECT m.position
    FROM tidings_group_messages m
    WHERE m.group_id = $1 AND m.state = 'ready'
      AND EXISTS (SELECT 1 FROM tidings_group_messages p
                  WHERE p.group_id = $1 AND p.stream = m.stream
                    AND p.position < m.position AND p.state = 'parked')
    ORDER BY m.position
    FOR UPDATE OF m SKIP LOCKED
)
UPDATE tidings_group_messages m
SET state = 'parked',
    held = true,
    replay = false,
    parked_id = coalesce(m.parked_id, nextval('tidings_group_parked_ids')),
    parked_at = now(),
    reason = 'held behind an earlier parked event of its stream'
FROM behind b
WHERE m.group_id = $1 AND m.position = b.position
RETURNING m.position
