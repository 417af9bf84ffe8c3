-- Creates the store's schema, named by the connection setting `tidings.schema` (set by
-- PgStore at connect, after validating the name). Runs under the migration lock.
DO $$
BEGIN
    EXECUTE format('CREATE SCHEMA IF NOT EXISTS %I', current_setting('tidings.schema'));
END
$$;

CREATE TABLE IF NOT EXISTS tidings_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
