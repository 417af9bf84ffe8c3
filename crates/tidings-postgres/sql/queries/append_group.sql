-- A batch of appends decided and written in one statement and one transaction: the
-- function tidings_append_group (migration 0008). 'again' (a recorded id or an existing
-- fresh stream), or a unique violation on an event id or on a new stream's row (created
-- concurrently): nothing written, append.rs decides the batch with the full
-- transaction. Any other error: the connection must be closed (the claim gate is
-- session-level).
--
-- $1 whether to compute the horizon when it is not cheap; $2..$5 one element per
-- append (stream, expected kind, expected revision, events); $6 the streams to lock
-- (those named by an append that is not 'no-stream', sorted), $7 the others; $8.. one
-- element per event (its append, its index in it, then one array per column).
SELECT outcome, written, first_revisions, first_positions, horizon, listened
FROM tidings_append_group($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,
                          $15, $16, $17, $18, $19)
