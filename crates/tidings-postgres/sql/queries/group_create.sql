-- Creates a group; no row when the name is taken.
-- $1 name, $2 settings (JSON), $3 first position to read (NULL: the visibility horizon
-- now, so an append in flight below it is still delivered).
INSERT INTO tidings_groups (name, settings, read_upto)
SELECT $1, $2::jsonb, coalesce($3::bigint, tidings_horizon())
ON CONFLICT (name) DO NOTHING
RETURNING id
