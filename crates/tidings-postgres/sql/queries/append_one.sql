-- A lone append in one statement and one transaction: the function tidings_append_one
-- (migration 0007) claims positions and writes, or declines what the full transaction
-- in append.rs must decide. If it fails, the connection must be closed (the claim gate
-- is session-level).
--
-- $1 stream, $2 expected ('any' | 'no-stream' | 'stream-exists' | 'exact'), $3 expected
-- revision (for 'exact'), $4 whether to compute the horizon when it is not cheap, $5..
-- one array per column, one element per event.
SELECT outcome, first_revision, first_position, horizon, listened
FROM tidings_append_one($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
