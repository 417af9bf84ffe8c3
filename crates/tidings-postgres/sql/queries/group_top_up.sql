-- Reads the log into the group's window: from the cursor on, the events the group
-- delivers, until the window holds `buffer` unsettled messages, looking at no more than
-- `window` positions; then moves the cursor past what it looked at. The visibility
-- horizon $7 was read by an earlier statement (horizon.sql, migration 0007), so this
-- statement's snapshot sees every event committed below it, and the cursor never passes
-- an event it has not seen.
-- The cursor row is taken with SKIP LOCKED: while one fetch reads, the others skip it.
-- No row: someone else is reading, or the window is full.
-- $1 group id, $2 buffer, $3 event types (empty: all), $4 stream prefix (NULL: all),
-- $5 positions to look at, at most, $6 categories (empty: all), $7 the horizon.
WITH cursor AS (
    SELECT read_upto FROM tidings_groups WHERE id = $1 FOR NO KEY UPDATE SKIP LOCKED
),
room AS (
    SELECT $2::bigint
           - (SELECT count(*) FROM tidings_group_messages WHERE group_id = $1 AND state = 'ready')
           - (SELECT count(*) FROM tidings_group_messages WHERE group_id = $1 AND state = 'out')
           AS n
),
bound AS (
    SELECT least(h.horizon, c.read_upto + $5::bigint) AS upto, h.horizon AS head
    FROM (SELECT $7::bigint AS horizon) h, cursor c
),
picked AS (
    SELECT e.position, e.stream
    FROM tidings_events e, cursor c, bound b
    WHERE e.position >= c.read_upto AND e.position < b.upto
      AND NOT starts_with(e.stream, '$')
      AND (cardinality($3::text[]) = 0 OR e.event_type = ANY($3::text[]))
      AND ($4::text IS NULL OR starts_with(e.stream, $4::text))
      AND (cardinality($6::text[]) = 0 OR split_part(e.stream, '-', 1) = ANY($6::text[]))
    ORDER BY e.position
    LIMIT (SELECT greatest(n, 0) FROM room)
),
inserted AS (
    INSERT INTO tidings_group_messages (group_id, position, stream, state)
    SELECT $1, position, stream, 'ready' FROM picked
)
UPDATE tidings_groups g
SET read_upto = CASE WHEN (SELECT count(*) FROM picked) >= r.n
                     THEN (SELECT max(position) + 1 FROM picked)
                     ELSE b.upto END
FROM cursor c, bound b, room r
WHERE g.id = $1 AND r.n > 0
RETURNING g.read_upto, b.head, (SELECT count(*) FROM picked) AS read, r.n AS room
