-- This connection's backend, as a claim records it.
-- The start time as text (with its offset, exact to the microsecond), as claim.sql takes it.
SELECT pg_backend_pid() AS pid, a.backend_start::text AS backend_start
FROM pg_stat_get_activity(pg_backend_pid()) a
