-- Writes a batch's events at the positions claimed for it (claim.sql), clears the claim,
-- moves the stream heads and notifies listeners, in one statement; the claim disappears
-- exactly when the events become visible, at commit. Events arrive in position order;
-- each append's events are contiguous.
--
-- Answers the horizon this transaction saw without its own claim: once it has committed,
-- every position below it is settled, so the writer's head may move there.
--
-- $1 channel, $2.. one array per column, each with one element per event, $14 the
-- first claimed position.
WITH claimed AS (
    SELECT $14::bigint AS first_position,
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
),
released AS (
    UPDATE tidings_claims SET lo = NULL, hi = NULL WHERE lo = $14::bigint
)
SELECT least((SELECT min(c.lo) FROM tidings_claims c WHERE c.lo <> $14::bigint),
             (SELECT p.next_position FROM tidings_position p)) AS horizon,
       pg_notify($1, ($14::bigint + cardinality($2::text[]) - 1)::text)::text AS notified
