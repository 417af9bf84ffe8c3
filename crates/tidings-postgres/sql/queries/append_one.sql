-- A lone append in one round trip: the procedure tidings_append_one (migration 0005)
-- claims positions, writes, and notifies, or declines what the full transaction in
-- append.rs must decide.
--
-- $1 stream, $2 expected ('any' | 'no-stream' | 'stream-exists' | 'exact'), $3 expected
-- revision (for 'exact'), $4 channel, $5.. one array per column, one element per event.
CALL tidings_append_one($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
