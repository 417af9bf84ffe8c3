-- Claims $1 positions for the calling transaction (tidings_claim, migrations 0007 and
-- 0008): the first one, the horizon below it when known cheaply or $2 asks for it, and
-- whether anyone listens for notifications. The claim
-- lasts until the transaction ends. If this statement fails, the connection must be
-- closed (the claim gate is session-level).
SELECT first_position, horizon, listened FROM tidings_claim($1::bigint, $2::boolean)
