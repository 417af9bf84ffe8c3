SELECT last_revision FROM tidings_streams WHERE name = $1
