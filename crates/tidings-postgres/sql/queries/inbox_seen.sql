-- Whether consumer $1 has handled event $2 (and the record was not pruned).
SELECT EXISTS (SELECT 1 FROM tidings_inbox WHERE consumer = $1 AND event_id = $2)
