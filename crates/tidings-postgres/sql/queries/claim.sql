-- Claims $1 positions for the transaction of backend $2 (started at $3, as text), in a
-- short transaction of its own: the counter row is locked only until this commits, and
-- the commit does not wait for the WAL flush (a claim lost in a crash claimed nothing:
-- every backend that could have used it ended with the crash). Readers stop below the
-- claim until that backend's transaction clears it (insert_events.sql), it is released
-- (release_claims.sql), or the backend ends. The backend's row (migration 0006) is
-- updated in place, or made on its first claim.
WITH async AS (
    SELECT set_config('synchronous_commit', 'off', true)
),
claimed AS (
    UPDATE tidings_position
    SET next_position = next_position + $1::bigint
    FROM async
    RETURNING next_position - $1::bigint AS lo
),
updated AS (
    UPDATE tidings_claims c
    SET backend_start = $3::text::timestamptz, lo = k.lo, hi = k.lo + $1::bigint
    FROM claimed k
    WHERE c.pid = $2::integer
    RETURNING c.pid
),
inserted AS (
    INSERT INTO tidings_claims (pid, backend_start, lo, hi)
    SELECT $2::integer, $3::text::timestamptz, k.lo, k.lo + $1::bigint
    FROM claimed k
    WHERE NOT EXISTS (SELECT 1 FROM updated)
)
SELECT lo FROM claimed
