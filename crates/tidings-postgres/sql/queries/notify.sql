-- Announces that events up to position $2 are committed, on channel $1 (the notifier's
-- own connection, which commits without waiting for the flush).
SELECT pg_notify($1, $2)::text
