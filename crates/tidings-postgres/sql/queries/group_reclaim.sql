-- Takes back the messages of members whose lease lapsed (or whose row is gone) and the
-- messages held past the message timeout: each counts one failed attempt and is ready
-- again, or parked once it has used up its retries. Also drops lapsed member rows.
-- Rows another session has locked are left for a later sweep (SKIP LOCKED): nobody waits.
-- $1 group id, $2 max retries.
WITH lapsed AS (
    DELETE FROM tidings_group_members
    WHERE member IN (SELECT member FROM tidings_group_members
                     WHERE group_id = $1 AND expires_at < now()
                     FOR UPDATE SKIP LOCKED)
),
taken AS (
    SELECT m.position, m.out_until < now() AS timed_out
    FROM tidings_group_messages m
    WHERE m.group_id = $1 AND m.state = 'out'
      AND (m.out_until < now()
           OR m.member NOT IN (SELECT member FROM tidings_group_members
                               WHERE group_id = $1 AND expires_at >= now()))
    FOR UPDATE OF m SKIP LOCKED
)
UPDATE tidings_group_messages m
SET attempts = m.attempts + 1,
    state = CASE WHEN m.attempts + 1 > $2 THEN 'parked' ELSE 'ready' END,
    ready_at = now(),
    delivery_id = NULL,
    member = NULL,
    out_until = NULL,
    replay = CASE WHEN m.attempts + 1 > $2 THEN false ELSE m.replay END,
    parked_id = CASE WHEN m.attempts + 1 > $2 THEN nextval('tidings_group_parked_ids')
                     ELSE m.parked_id END,
    parked_at = CASE WHEN m.attempts + 1 > $2 THEN now() ELSE m.parked_at END,
    held = CASE WHEN m.attempts + 1 > $2 THEN false ELSE m.held END,
    reason = CASE WHEN t.timed_out THEN 'message timeout: held longer than messageTimeoutMs'
                  ELSE 'lease expired: its member stopped heartbeating' END
FROM taken t
WHERE m.group_id = $1 AND m.position = t.position
RETURNING m.position
