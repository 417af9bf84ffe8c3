-- Queues parked messages again with fresh attempts; they stay in the parked list until
-- acknowledged or skipped. Messages a replay already queued are not touched.
-- $1 group id, $2 every one, $3 or these parked ids.
UPDATE tidings_group_messages
SET state = 'ready', replay = true, attempts = 0, held = false, ready_at = now()
WHERE group_id = $1 AND state = 'parked' AND ($2::boolean OR parked_id = ANY($3::bigint[]))
