-- The global log, the stream heads and the position counter.
--
-- Positions are handed out by the single row of tidings_position: an append updates it
-- inside its transaction, so the row lock serializes writers from the moment they claim
-- positions until they commit or roll back. Commit order is therefore position order,
-- and a rolled-back append gives its positions back (no gaps). See
-- docs/decisions/0005-postgres-store.md.

CREATE TABLE tidings_position (
    singleton     boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    -- The position the next appended event gets; the head is next_position - 1.
    next_position bigint NOT NULL CHECK (next_position >= 0)
);
INSERT INTO tidings_position (singleton, next_position) VALUES (true, 0);

-- One row per stream: its head, and the row an append locks to check the expected
-- version without a check-then-act race. Names compare bytewise ("C"), as StreamId does.
CREATE TABLE tidings_streams (
    name          text COLLATE "C" PRIMARY KEY,
    -- NULL only inside the transaction of the append that creates the stream.
    last_revision bigint,
    last_position bigint,
    -- Microseconds since the Unix epoch.
    last_written  bigint
);

CREATE TABLE tidings_events (
    position       bigint PRIMARY KEY,
    stream         text COLLATE "C" NOT NULL,
    revision       bigint NOT NULL,
    event_id       uuid NOT NULL,
    event_type     text NOT NULL,
    event_version  text NOT NULL,
    -- The envelope's timestamp, microseconds since the Unix epoch.
    occurred_at    bigint NOT NULL,
    source         text NOT NULL,
    -- The payload's compact JSON text, byte for byte (jsonb would reorder keys).
    data           text NOT NULL,
    correlation_id text,
    causation_id   text,
    user_id        text,
    -- Free-form metadata pairs as a JSON object; NULL when there are none.
    extra          jsonb,
    -- When the append committed (database clock), microseconds since the Unix epoch.
    recorded_at    bigint NOT NULL,
    CONSTRAINT tidings_events_event_id_unique UNIQUE (event_id),
    CONSTRAINT tidings_events_stream_revision_unique UNIQUE (stream, revision)
);

CREATE INDEX tidings_events_correlation
    ON tidings_events (correlation_id, position)
    WHERE correlation_id IS NOT NULL;
