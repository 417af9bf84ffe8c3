-- A group's numbers now. $1 group name.
SELECT g.id, g.settings::text AS settings, g.read_upto,
       tidings_horizon() AS head,
       (SELECT min(position) FROM tidings_group_messages
        WHERE group_id = g.id AND parked_id IS NULL) AS first_unsettled,
       (SELECT count(*) FROM tidings_group_messages
        WHERE group_id = g.id AND parked_id IS NOT NULL) AS parked,
       (SELECT count(*) FROM tidings_group_messages
        WHERE group_id = g.id AND state = 'out') AS in_flight
FROM tidings_groups g
WHERE g.name = $1
