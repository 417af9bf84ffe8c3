-- Locks the rows of the streams an append batch writes to, in name order (so batches
-- never wait on each other in a cycle), and answers their versions. Streams without a
-- row have no events; they are created by create_streams.sql when written to.
SELECT name, last_revision
FROM tidings_streams
WHERE name = ANY($1::text[])
ORDER BY name
FOR UPDATE
