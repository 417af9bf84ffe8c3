-- Adds a member with a fresh lease; no row when the group does not exist.
-- $1 member, $2 group name, $3 member name.
WITH g AS (
    SELECT id, (settings ->> 'leaseMs')::bigint AS lease_ms FROM tidings_groups WHERE name = $2
),
joined AS (
    INSERT INTO tidings_group_members (member, group_id, name, expires_at)
    SELECT $1, g.id, $3, now() + g.lease_ms * interval '1 millisecond' FROM g
)
SELECT lease_ms FROM g
