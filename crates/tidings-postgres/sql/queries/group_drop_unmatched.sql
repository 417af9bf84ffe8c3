-- After a filter change: drops read-ahead messages the new filter leaves out (never
-- handed out, never parked); they count as settled.
-- $1 group id, $2 event types (empty: all), $3 stream prefix (NULL: all),
-- $4 categories (empty: all).
DELETE FROM tidings_group_messages m
USING tidings_events e
WHERE m.group_id = $1 AND m.state = 'ready' AND m.parked_id IS NULL AND m.attempts = 0
  AND e.position = m.position
  AND NOT ((cardinality($2::text[]) = 0 OR e.event_type = ANY($2::text[]))
           AND ($3::text IS NULL OR starts_with(e.stream, $3::text))
           AND (cardinality($4::text[]) = 0 OR split_part(e.stream, '-', 1) = ANY($4::text[])))
