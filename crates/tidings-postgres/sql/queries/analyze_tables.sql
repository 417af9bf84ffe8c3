-- Fresh statistics for the tables appends read by key. Plans are cached per session,
-- and a plan made while a table was nearly empty (a seq scan of tidings_events for the
-- id check) is kept until the table is next analyzed; autovacuum does that only after a
-- minute or more, each append slower than the last meanwhile. The writer runs this after
-- its first appends (writer.rs); ANALYZE makes every session plan these statements again.
ANALYZE tidings_events, tidings_streams
