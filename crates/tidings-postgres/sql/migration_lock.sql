-- One migrator per schema at a time; released at the end of the transaction.
SELECT pg_advisory_xact_lock(hashtext('tidings:' || current_setting('tidings.schema')))
