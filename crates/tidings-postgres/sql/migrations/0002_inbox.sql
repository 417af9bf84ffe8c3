-- The transactional inbox (PgInbox): which event ids each consumer has handled.
--
-- A handler records the id in the same transaction as its own writes, inserting it first
-- (INSERT ... ON CONFLICT DO NOTHING): a concurrent duplicate blocks on the uncommitted
-- row, then sees it and does not run. Rows older than the retention window are deleted
-- by PgInbox::prune. See docs/decisions/0012-broker-consumers.md.

CREATE TABLE tidings_inbox (
    consumer   text NOT NULL,
    event_id   uuid NOT NULL,
    handled_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

-- For pruning one consumer's oldest rows.
CREATE INDEX tidings_inbox_handled_at ON tidings_inbox (consumer, handled_at);
