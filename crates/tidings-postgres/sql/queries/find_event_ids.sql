-- Where already-recorded event ids live (for idempotent re-appends).
SELECT event_id, stream, revision, position
FROM tidings_events
WHERE event_id = ANY($1::uuid[])
