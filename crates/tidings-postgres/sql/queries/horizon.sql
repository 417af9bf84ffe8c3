-- The visibility horizon (every position below it is committed or a gap for good) and
-- the next position to hand out. They differ while a claim is live. Reads the present:
-- a query that reads events below this horizon must be a later statement.
SELECT horizon, next_position FROM tidings_horizon_now()
