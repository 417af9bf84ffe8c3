-- Writes a batch's events at the positions claimed for it (tidings_claim, earlier in
-- the same transaction) and moves the stream heads, in one statement. The claim ends
-- with the transaction: the events become visible exactly when it stops holding readers
-- back. Events arrive in position order; each append's events are contiguous.
-- Notifications are sent by the writer after the commit, on another connection.
--
-- $1.. one array per column, each with one element per event, $13 the first claimed
-- position.
WITH claimed AS (
    SELECT $13::bigint AS first_position,
           (extract(epoch FROM clock_timestamp()) * 1000000)::bigint AS recorded_at
),
batch AS (
    SELECT *
    FROM unnest($1::text[], $2::bigint[], $3::uuid[], $4::text[], $5::text[], $6::bigint[],
                $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[])
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
SELECT count(*) AS inserted FROM batch
