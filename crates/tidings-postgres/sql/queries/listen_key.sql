-- Marks this session as a listener for as long as it lives (migration 0008): writers
-- announce their commits only while some session holds this key. Taken before the
-- horizon is read, so a writer that found no listener is covered by that read.
SELECT pg_advisory_lock_shared(tidings_listen_key())::text
