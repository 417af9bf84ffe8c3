-- Gives up claimed positions that will not be written (a refused or failed append): the
-- claim starting at $1, or with $1 NULL every claim of this connection's backend. The
-- positions become a gap. Notifies $2 so readers waiting at the horizon move on; the
-- commit does not wait for the flush (a claim is void after a crash anyway).
WITH async AS (
    SELECT set_config('synchronous_commit', 'off', true)
),
released AS (
    DELETE FROM tidings_inflight
    WHERE lo = $1::bigint OR ($1::bigint IS NULL AND pid = pg_backend_pid())
    RETURNING hi
)
SELECT count(*) AS released, max(pg_notify($2, (r.hi - 1)::text)::text) AS notified
FROM released r, async
