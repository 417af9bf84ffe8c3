-- Creates the rows of new streams, in name order. A name missing from the answer was
-- created by a concurrent append after lock_streams.sql looked: the batch's version
-- checks are stale and it starts over.
INSERT INTO tidings_streams (name)
SELECT n FROM unnest($1::text[]) AS n ORDER BY n
ON CONFLICT (name) DO NOTHING
RETURNING name
