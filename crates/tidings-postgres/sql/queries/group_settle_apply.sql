-- Applies settlements to messages locked by group_settle_lock.sql: done (ack, skip)
-- deletes the row (it also leaves the parked list); retry makes it ready after a delay;
-- park puts it in the parked list.
-- $1 group id, then one array per column: positions, actions (done, retry, park),
-- failed attempts after this one, delays (ms), reasons.
WITH s AS (
    SELECT * FROM unnest($2::bigint[], $3::text[], $4::integer[], $5::bigint[], $6::text[])
        AS s(position, action, attempts, delay_ms, reason)
),
done AS (
    DELETE FROM tidings_group_messages m
    USING s
    WHERE m.group_id = $1 AND m.position = s.position AND s.action = 'done'
    RETURNING m.position
)
UPDATE tidings_group_messages m
SET state = CASE WHEN s.action = 'retry' THEN 'ready' ELSE 'parked' END,
    attempts = s.attempts,
    ready_at = now() + s.delay_ms * interval '1 millisecond',
    delivery_id = NULL,
    member = NULL,
    out_until = NULL,
    reason = s.reason,
    replay = CASE WHEN s.action = 'park' THEN false ELSE m.replay END,
    held = CASE WHEN s.action = 'park' THEN false ELSE m.held END,
    parked_id = CASE WHEN s.action = 'park' THEN nextval('tidings_group_parked_ids')
                     ELSE m.parked_id END,
    parked_at = CASE WHEN s.action = 'park' THEN now() ELSE m.parked_at END
FROM s
WHERE m.group_id = $1 AND m.position = s.position AND s.action <> 'done'
