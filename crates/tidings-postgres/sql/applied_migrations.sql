SELECT version FROM tidings_migrations ORDER BY version
