-- Deletes the claims of backends that are gone: they can never commit, and their
-- positions become gaps. A backend leaves pg_stat_activity only after its transaction
-- has ended; a claim its transaction deleted just before it ended is skipped here (the
-- delete finds it gone). When the role may not see another backend's start time (a
-- different role without pg_read_all_stats), the pid alone counts as alive, so a live
-- claim is never taken for dead. Answers how many were deleted.
WITH released AS (
    DELETE FROM tidings_inflight i
    WHERE NOT EXISTS (
        SELECT 1 FROM pg_stat_get_activity(i.pid) a
        WHERE a.backend_start IS NULL OR a.backend_start = i.backend_start)
    RETURNING i.lo
)
SELECT count(*) AS released FROM released
