INSERT INTO tidings_migrations (version, name) VALUES ($1, $2)
