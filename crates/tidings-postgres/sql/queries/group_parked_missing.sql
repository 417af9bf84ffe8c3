-- Which of the given parked ids are not in the group's parked list.
-- $1 group id, $2 parked ids.
SELECT id FROM unnest($2::bigint[]) AS ids(id)
WHERE NOT EXISTS (SELECT 1 FROM tidings_group_messages
                  WHERE group_id = $1 AND parked_id = ids.id)
ORDER BY id
