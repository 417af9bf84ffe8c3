-- Renews a live lease by the group's current leaseMs; no row when the lease has lapsed
-- (a lapsed lease is never renewed), the member left, or the group is gone. Locks the
-- member row until the transaction ends.
-- $1 group name, $2 member.
UPDATE tidings_group_members m
SET expires_at = now() + (g.settings ->> 'leaseMs')::bigint * interval '1 millisecond'
FROM tidings_groups g
WHERE m.member = $2 AND m.group_id = g.id AND g.name = $1 AND m.expires_at >= now()
RETURNING g.id, g.settings::text AS settings
