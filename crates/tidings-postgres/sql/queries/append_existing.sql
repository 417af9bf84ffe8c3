-- The one-statement append: one append to a stream that already has events, with an
-- expected version other than no-stream, in a single autocommit round trip. It locks
-- the stream's row, checks the version under the lock, and only if it holds claims
-- positions (locking the counter row until commit, as insert_events.sql does), inserts,
-- moves the stream head and notifies. Anything else — the stream has no row, the check
-- fails, the unique index refuses an id — writes nothing, and the caller runs the full
-- transaction (append.rs), which decides those cases.
--
-- $1 stream, $2 expected ('any' | 'stream-exists' | 'exact'), $3 expected revision
-- (for 'exact'), $4 channel, $5.. one array per column, one element per event.
WITH locked AS (
    SELECT last_revision FROM tidings_streams WHERE name = $1 FOR UPDATE
),
decided AS (
    SELECT l.last_revision AS current,
           l.last_revision IS NOT NULL
               AND ($2::text IN ('any', 'stream-exists')
                    OR ($2::text = 'exact' AND l.last_revision = $3::bigint)) AS accepted
    FROM locked l
),
claimed AS (
    UPDATE tidings_position
    SET next_position = next_position + cardinality($5::uuid[])
    FROM decided d
    WHERE d.accepted
    RETURNING next_position - cardinality($5::uuid[]) AS first_position,
              d.current,
              (extract(epoch FROM clock_timestamp()) * 1000000)::bigint AS recorded_at
),
inserted AS (
    INSERT INTO tidings_events (
        position, stream, revision, event_id, event_type, event_version, occurred_at,
        source, data, correlation_id, causation_id, user_id, extra, recorded_at
    )
    SELECT c.first_position + e.ord - 1, $1, c.current + e.ord, e.event_id, e.event_type,
           e.event_version, e.occurred_at, e.source, e.data, e.correlation_id,
           e.causation_id, e.user_id, e.extra::jsonb, c.recorded_at
    FROM claimed c,
         unnest($5::uuid[], $6::text[], $7::text[], $8::bigint[], $9::text[], $10::text[],
                $11::text[], $12::text[], $13::text[], $14::text[])
             WITH ORDINALITY
             AS e(event_id, event_type, event_version, occurred_at, source, data,
                  correlation_id, causation_id, user_id, extra, ord)
),
moved AS (
    UPDATE tidings_streams s
    SET last_revision = c.current + cardinality($5::uuid[]),
        last_position = c.first_position + cardinality($5::uuid[]) - 1,
        last_written = c.recorded_at
    FROM claimed c
    WHERE s.name = $1
),
notified AS (
    SELECT pg_notify($4, (c.first_position + cardinality($5::uuid[]) - 1)::text)
    FROM claimed c
)
SELECT d.current, d.accepted, c.first_position, (SELECT count(*) FROM notified) AS notified
FROM decided d
LEFT JOIN claimed c ON true
