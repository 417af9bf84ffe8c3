-- Creates the stream's row if needed and locks it until the transaction ends; answers
-- the stream's version (NULL: no events). A concurrent append to the same stream waits
-- here, then sees the winner's committed version.
INSERT INTO tidings_streams (name) VALUES ($1)
ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name
RETURNING last_revision
