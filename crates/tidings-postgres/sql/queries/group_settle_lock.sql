-- The messages a settlement names that this member still holds, locked. A message taken
-- back (lease lapsed, timed out, handed to another) no longer matches: it is stale.
-- A message past its timeout counts as taken back even before a sweep has run.
-- $1 group id, $2 member, $3 delivery ids.
SELECT position, delivery_id, attempts
FROM tidings_group_messages
WHERE delivery_id = ANY($3::bigint[]) AND group_id = $1 AND member = $2
  AND state = 'out' AND out_until >= now()
FOR UPDATE
