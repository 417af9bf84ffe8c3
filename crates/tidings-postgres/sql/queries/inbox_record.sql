-- Records that consumer $1 handled event $2; no row when it already had (a concurrent
-- uncommitted record of the same id makes this wait for that transaction's outcome).
INSERT INTO tidings_inbox (consumer, event_id) VALUES ($1, $2)
ON CONFLICT (consumer, event_id) DO NOTHING
