-- Deletes the claim rows of backends that are gone: their claims can never be written,
-- and their positions become gaps. A backend leaves pg_stat_activity only after its
-- transaction has ended; a claim its transaction cleared just before it ended is
-- checked again on the new row version (and a pid reused by a new backend is alive).
-- When the role may not see another backend's start time (a different role without
-- pg_read_all_stats), the pid alone counts as alive, so a live claim is never taken for
-- dead. Answers how many claims were released this way.
WITH gone AS (
    DELETE FROM tidings_claims c
    WHERE NOT EXISTS (
        SELECT 1 FROM pg_stat_get_activity(c.pid) a
        WHERE a.backend_start IS NULL OR a.backend_start = c.backend_start)
    RETURNING c.lo
)
SELECT count(lo) AS released FROM gone
