-- Forgets consumer $1's records older than $2 microseconds.
DELETE FROM tidings_inbox
WHERE consumer = $1 AND handled_at < now() - $2::bigint * interval '1 microsecond'
