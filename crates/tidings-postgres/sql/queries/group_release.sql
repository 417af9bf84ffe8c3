-- Gives a leaving member's messages back, ready at once, attempts unchanged.
-- $1 group id, $2 member.
UPDATE tidings_group_messages
SET state = 'ready', delivery_id = NULL, member = NULL, out_until = NULL, ready_at = now()
WHERE group_id = $1 AND member = $2 AND state = 'out'
