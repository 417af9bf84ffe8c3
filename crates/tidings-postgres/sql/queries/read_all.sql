-- $1 first position, $2 event types (empty: all), $3 stream prefix (NULL: all), $4 limit,
-- $5 categories (empty: all). A stream's category is its name up to the first '-'
-- (split_part gives the whole name when there is none); migration 0004 indexes it.
-- $6 the visibility horizon (horizon.sql, read by an earlier statement, so that this
-- statement's snapshot sees everything committed below it): a claimed position at or
-- above it may still commit, and a reader that passed it would never see it.
SELECT position, stream, revision, recorded_at, event_id, event_type, event_version, occurred_at, source, data, correlation_id, causation_id, user_id, extra::text AS extra
FROM tidings_events
WHERE position >= $1
  AND position < $6::bigint
  AND (cardinality($2::text[]) = 0 OR event_type = ANY($2::text[]))
  AND ($3::text IS NULL OR starts_with(stream, $3::text))
  AND (cardinality($5::text[]) = 0 OR split_part(stream, '-', 1) = ANY($5::text[]))
ORDER BY position
LIMIT $4
