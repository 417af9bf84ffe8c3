-- Claims $1 positions for the transaction of backend $2 (started at $3), in a short
-- transaction of its own: the counter row is locked only until this commits, and the
-- commit does not wait for the WAL flush (a claim lost in a crash claimed nothing: every
-- backend that could have used it ended with the crash). Readers stop below the claim
-- until that backend's transaction deletes it (insert_events.sql) or the claim is
-- released (release_claims.sql), or the backend ends.
WITH async AS (
    SELECT set_config('synchronous_commit', 'off', true)
),
claimed AS (
    UPDATE tidings_position
    SET next_position = next_position + $1::bigint
    FROM async
    RETURNING next_position - $1::bigint AS lo
)
INSERT INTO tidings_inflight (lo, hi, pid, backend_start)
SELECT lo, lo + $1::bigint, $2::integer, $3::text::timestamptz FROM claimed
RETURNING lo
