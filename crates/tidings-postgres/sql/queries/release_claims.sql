-- Gives up claimed positions that will not be written (a refused or failed append): the
-- claim starting at $1, or with $1 NULL this connection's backend's claim. The positions
-- become a gap. Notifies $2 so readers waiting at the horizon move on; the commit does
-- not wait for the flush (a claim is void after a crash anyway). Answers how many claims
-- were released.
WITH async AS (
    SELECT set_config('synchronous_commit', 'off', true)
),
held AS (
    SELECT pid, hi FROM tidings_claims
    WHERE lo IS NOT NULL
      AND (lo = $1::bigint OR ($1::bigint IS NULL AND pid = pg_backend_pid()))
),
released AS (
    UPDATE tidings_claims c SET lo = NULL, hi = NULL
    FROM held h, async
    WHERE c.pid = h.pid
    RETURNING h.hi
)
SELECT count(*) AS released, max(pg_notify($2, (r.hi - 1)::text)::text) AS notified
FROM released r
