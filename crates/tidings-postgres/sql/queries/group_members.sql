-- A group's live members with what they hold. $1 group id.
SELECT mm.member, mm.name,
       greatest(0, (extract(epoch FROM (mm.expires_at - now())) * 1000)::bigint) AS left_ms,
       (SELECT count(*) FROM tidings_group_messages m
        WHERE m.group_id = $1 AND m.member = mm.member AND m.state = 'out') AS in_flight
FROM tidings_group_members mm
WHERE mm.group_id = $1 AND mm.expires_at >= now()
ORDER BY mm.expires_at DESC, mm.member
