-- Claims positions, writes a batch's events, moves the stream heads and notifies
-- listeners, in one statement. Updating tidings_position locks its row until commit:
-- writers serialize from here, so positions are assigned, and become visible, in commit
-- order. Events arrive in position order; each append's events are contiguous.
--
-- $1 channel, then one array per column, each with one element per event.
WITH claimed AS (
    UPDATE tidings_position
    SET next_position = next_position + cardinality($2::text[])
    RETURNING next_position - cardinality($2::text[]) AS first_position,
              (extract(epoch FROM clock_timestamp()) * 1000000)::bigint AS recorded_at
),
batch AS (
    SELECT *
    FROM unnest($2::text[], $3::bigint[], $4::uuid[], $5::text[], $6::text[], $7::bigint[],
                $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[])
        WITH ORDINALITY
        AS e(stream, revision, event_id, event_type, event_version, occurred_at, source,
             data, correlation_id, causation_id, user_id, extra, ord)
),
inserted AS (
    INSERT INTO tidings_events (
        position, stream, revision, event_id, event_type, event_version, occurred_at,
        source, data, correlation_id, causation_id, user_id, extra, recorded_at
    )
    SELECT c.first_position + e.ord - 1, e.stream, e.revision, e.event_id, e.event_type,
           e.event_version, e.occurred_at, e.source, e.data, e.correlation_id,
           e.causation_id, e.user_id, e.extra::jsonb, c.recorded_at
    FROM claimed c, batch e
),
moved AS (
    UPDATE tidings_streams s
    SET last_revision = h.last_revision,
        last_position = c.first_position + h.last_ord - 1,
        last_written = c.recorded_at
    FROM claimed c,
         (SELECT stream, max(revision) AS last_revision, max(ord) AS last_ord
          FROM batch GROUP BY stream) h
    WHERE s.name = h.stream
)
SELECT c.first_position,
       pg_notify($1, (c.first_position + cardinality($2::text[]) - 1)::text)::text AS notified
FROM claimed c
