-- The visibility horizon (every position below it is committed or a gap for good) and
-- the next position to hand out. They differ while a live backend holds a claim.
SELECT tidings_horizon() AS horizon, p.next_position
FROM tidings_position p
