-- A batch of appends decided and written in one statement and one transaction: the
-- function tidings_append_group (migration 0008). It answers 'ids-known' when an id of
-- the batch is recorded already (nothing written; append.rs decides the batch with the
-- full transaction). SQLSTATE TDS01 or a duplicate event id: rolled back, decide again.
-- Any other error: the connection must be closed (the claim gate is session-level).
--
-- $1 whether to compute the horizon when it is not cheap; $2..$4 one element per
-- append (stream, expected kind, expected revision); $5.. one element per event (its
-- append, its index in it, then one array per column).
SELECT outcome, written, first_revisions, first_positions, horizon
FROM tidings_append_group($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,
                          $15, $16)
