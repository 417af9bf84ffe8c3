-- Claims $1 positions for the calling transaction (tidings_claim, migration 0007): the
-- first one, and the horizon below it when known cheaply or $2 asks for it. The claim
-- lasts until the transaction ends. If this statement fails, the connection must be
-- closed (the claim gate is session-level).
SELECT first_position, horizon FROM tidings_claim($1::bigint, $2::boolean)
