-- Drops the store's schema (named by `tidings.schema`) and everything in it.
DO $$
BEGIN
    EXECUTE format('DROP SCHEMA IF EXISTS %I CASCADE', current_setting('tidings.schema'));
END
$$;
