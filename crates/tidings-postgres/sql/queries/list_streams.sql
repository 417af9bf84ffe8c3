-- $1 prefix (NULL: all), $2 only names after this (NULL: from the first), $3 limit.
-- Names compare bytewise (the column's "C" collation), as StreamId orders them.
SELECT name, last_revision, last_position, last_written
FROM tidings_streams
WHERE last_revision IS NOT NULL
  AND ($1::text IS NULL OR (name >= $1::text AND starts_with(name, $1::text)))
  AND ($2::text IS NULL OR name > $2::text)
ORDER BY name
LIMIT $3
