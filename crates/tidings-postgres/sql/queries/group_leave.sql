-- Drops a member; true when its lease was still live (its messages are then released
-- without counting an attempt; a lapsed member's are left to the sweep, which counts one).
-- $1 group name, $2 member.
DELETE FROM tidings_group_members m
USING tidings_groups g
WHERE m.member = $2 AND m.group_id = g.id AND g.name = $1
RETURNING g.id, m.expires_at >= now() AS live
