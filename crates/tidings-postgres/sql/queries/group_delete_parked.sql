-- Drops parked messages for good (also while a replay has them queued or out).
-- $1 group id, $2 every one, $3 or these parked ids.
DELETE FROM tidings_group_messages
WHERE group_id = $1 AND parked_id IS NOT NULL AND ($2::boolean OR parked_id = ANY($3::bigint[]))
