-- Claims positions, writes the events, moves the stream head and notifies listeners, in
-- one statement. Updating tidings_position locks its row until commit: writers serialize
-- from here, so positions are assigned, and become visible, in commit order.
--
-- $1 stream, $2 first revision, $3 channel, $4.. one array per column.
WITH claimed AS (
    UPDATE tidings_position
    SET next_position = next_position + cardinality($4::uuid[])
    RETURNING next_position - cardinality($4::uuid[]) AS first_position,
              (extract(epoch FROM clock_timestamp()) * 1000000)::bigint AS recorded_at
),
inserted AS (
    INSERT INTO tidings_events (
        position, stream, revision, event_id, event_type, event_version, occurred_at,
        source, data, correlation_id, causation_id, user_id, extra, recorded_at
    )
    SELECT c.first_position + e.ord - 1, $1, $2 + e.ord - 1, e.event_id, e.event_type,
           e.event_version, e.occurred_at, e.source, e.data, e.correlation_id,
           e.causation_id, e.user_id, e.extra::jsonb, c.recorded_at
    FROM claimed c,
         unnest($4::uuid[], $5::text[], $6::text[], $7::bigint[], $8::text[], $9::text[],
                $10::text[], $11::text[], $12::text[], $13::text[])
             WITH ORDINALITY
             AS e(event_id, event_type, event_version, occurred_at, source, data,
                  correlation_id, causation_id, user_id, extra, ord)
),
moved AS (
    UPDATE tidings_streams s
    SET last_revision = $2 + cardinality($4::uuid[]) - 1,
        last_position = c.first_position + cardinality($4::uuid[]) - 1,
        last_written = c.recorded_at
    FROM claimed c
    WHERE s.name = $1
)
SELECT c.first_position,
       pg_notify($3, (c.first_position + cardinality($4::uuid[]) - 1)::text)::text AS notified
FROM claimed c
