-- A lone append of one event in one statement and one transaction: the function
-- tidings_append_event (migration 0009), append_one.sql with each column as a scalar.
-- If it fails, the connection must be closed (the claim gate is session-level).
--
-- $1 stream, $2 expected ('any' | 'no-stream' | 'stream-exists' | 'exact'), $3 expected
-- revision (for 'exact'), $4 whether to compute the horizon when it is not cheap, $5..
-- the event's columns.
SELECT outcome, first_revision, first_position, horizon, listened
FROM tidings_append_event($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
