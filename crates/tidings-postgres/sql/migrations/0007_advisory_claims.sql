-- Claims as transaction-scoped advisory locks, positions from a sequence, one
-- transaction per append. See docs/decisions/0022-postgres-advisory-claims.md.
--
-- Migration 0005/0006 recorded a claim by committing a row, and cleared it in the
-- append's transaction: three commits per append (claim, events, notification). A claim
-- is now an advisory lock taken inside the append's own transaction. Other sessions see
-- it in pg_locks at once (no commit needed), and PostgreSQL drops it by itself when the
-- transaction commits, rolls back or its backend dies: nothing to release, nothing to
-- collect.
--
-- Lock keys, all in the current database (pg_locks.database), where S is the OID of this
-- schema (unique in the database, so stores in two schemas never mix):
--   claim of position p   two int4 keys (S, p mod 2^32), shared, until the transaction
--                         ends; pg_locks: classid = S, objid = p mod 2^32, objsubid = 2.
--   the gate              one bigint key 2*S, exclusive, session-level, held by a writer
--                         only while it takes positions (tidings_claim below).
--   "claims exist"        one bigint key 2*S+1: every claim also holds it shared until
--                         its transaction ends; a writer that may take it exclusively
--                         (try, under the gate) knows no other claim is live.
--
-- An advisory lock key has 64 bits and the schema needs 32 of them, so a claim's lock
-- names its position modulo 2^32. A reader rebuilds the position as the one with that
-- remainder nearest to the next position it read; that is exact as long as a claim
-- lives while fewer than 2^31 (2.1 billion) later positions are taken. The store's own
-- appends end within their statement and lock timeouts; the limit is documented in the
-- decision record.

DROP PROCEDURE tidings_append_one;
DROP FUNCTION tidings_horizon();
DROP TABLE tidings_claims;

-- Positions, handed out under the gate. Not transactional: a position taken by an
-- append that does not commit becomes a gap. CACHE 1: sessions must not keep private
-- ranges, positions follow the order in which claims are taken.
CREATE SEQUENCE tidings_next_position AS bigint MINVALUE 0 CACHE 1 NO CYCLE;
SELECT setval('tidings_next_position', p.next_position, false) FROM tidings_position p;
DROP TABLE tidings_position;

-- This schema's advisory lock key space: its OID. Resolved through search_path, which
-- every store connection sets to the schema.
CREATE FUNCTION tidings_lock_space() RETURNS oid LANGUAGE sql STABLE AS $$
    SELECT quote_ident(current_schema())::regnamespace::oid
$$;

-- The gate's key (one bigint key).
CREATE FUNCTION tidings_gate_key() RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT tidings_lock_space()::bigint * 2
$$;

-- A non-negative bigint below 2^32 as the int4 with the same 32 bits (advisory lock keys
-- are int4; pg_locks shows them as unsigned oids).
CREATE FUNCTION tidings_int4(x bigint) RETURNS integer LANGUAGE sql IMMUTABLE AS $$
    SELECT ((x % 4294967296 + 2147483648) % 4294967296 - 2147483648)::integer
$$;

-- The next position the sequence hands out. Read live (a sequence is not versioned).
CREATE FUNCTION tidings_next() RETURNS bigint LANGUAGE sql VOLATILE AS $$
    SELECT CASE WHEN s.is_called THEN s.last_value + 1 ELSE s.last_value END
    FROM tidings_next_position s
$$;

-- The lowest position claimed now, or NULL. near is the next position, read before:
-- every live claim lies within 2^31 of it (below: older claims; at or above: claims
-- taken since it was read), and is rebuilt from its remainder modulo 2^32 as the
-- position with that remainder nearest to it. Claims of the backend except_pid are
-- left out (NULL: none).
CREATE FUNCTION tidings_lowest_claim(space oid, near bigint, except_pid integer)
RETURNS bigint LANGUAGE sql VOLATILE AS $$
    SELECT min(near - 2147483648
               + ((l.objid::bigint - near + 2147483648) % 4294967296 + 4294967296)
                 % 4294967296)
    FROM pg_locks l
    WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.classid = space
      AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
      AND l.pid IS DISTINCT FROM except_pid
$$;

-- The visibility horizon: every position below it is committed or will never be. The
-- next position is read first, then the claims: a writer takes its claim's lock before
-- it moves the sequence (tidings_claim), so every position below the next one read here
-- is either settled or still claimed when pg_locks is read. Takes no lock.
--
-- It reads the present, not a snapshot: a query that reads events below the horizon
-- must take its snapshot after this ran (a later statement), or it could miss an append
-- that committed in between.
CREATE FUNCTION tidings_horizon_now(OUT horizon bigint, OUT next_position bigint)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    next_position := tidings_next();
    horizon := least(next_position,
                     tidings_lowest_claim(tidings_lock_space(), next_position, NULL));
END
$$;

CREATE FUNCTION tidings_horizon() RETURNS bigint LANGUAGE sql VOLATILE AS $$
    SELECT h.horizon FROM tidings_horizon_now() h
$$;

-- Claims n contiguous positions for the calling transaction: answers the first, and,
-- when no other claim is live or want_horizon is set, the horizon this transaction will
-- leave behind: the lowest other live claim, or the next position (every position below
-- it is settled once this transaction commits). Call it once per
-- transaction, as late as possible (after the stream rows are locked). The claim lasts
-- until the transaction ends; nothing needs releasing.
--
-- The gate is session-level (a transaction-level lock would be held until the commit,
-- flush included): if this function fails between taking and releasing it, the caller
-- must end the session (the store closes the connection on any error of a claiming
-- statement).
CREATE FUNCTION tidings_claim(n bigint, want_horizon boolean,
                              OUT first_position bigint, OUT horizon bigint)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    space oid := tidings_lock_space();
    gate  bigint := space::bigint * 2;
BEGIN
    PERFORM pg_advisory_lock(gate);
    first_position := tidings_next();
    -- The claim's lock first, then the sequence: a reader that sees the sequence moved
    -- sees the lock.
    PERFORM pg_advisory_xact_lock_shared(tidings_int4(space::bigint),
                                         tidings_int4(first_position));
    IF nextval('tidings_next_position') <> first_position THEN
        PERFORM pg_advisory_unlock(gate);
        RAISE EXCEPTION 'tidings_next_position moved without the claim gate';
    END IF;
    IF n > 1 THEN
        PERFORM setval('tidings_next_position', first_position + n - 1);
    END IF;
    IF pg_try_advisory_lock(gate + 1) THEN
        -- No other claim is live: everything below this claim is settled, and so is
        -- the claim once this transaction commits.
        PERFORM pg_advisory_unlock(gate + 1);
        horizon := first_position + n;
    END IF;
    PERFORM pg_advisory_xact_lock_shared(gate + 1);
    PERFORM pg_advisory_unlock(gate);
    IF horizon IS NULL AND want_horizon THEN
        -- Outside the gate: a scan of pg_locks is not cheap. The next position first,
        -- then every live claim but this backend's own (its one claim is this one).
        horizon := tidings_next();
        horizon := least(horizon, tidings_lowest_claim(space, horizon, pg_backend_pid()));
    END IF;
END
$$;

-- A lone append in one statement and one transaction (one flush): a check without
-- locks, the stream row locked (or created), the version checked again under the lock,
-- positions claimed, events inserted. Positions are claimed after the stream row is
-- locked, so a stream's positions grow with its revisions. It declines, writing
-- nothing, what needs the full transaction in append.rs: a failed version check, a
-- stream created meanwhile ('declined'), or an id recorded already ('ids-known').
-- Notifications are sent by the writer afterwards, on another connection.
--
-- horizon: see tidings_claim (NULL when not known cheaply and not wanted, or declined).
CREATE FUNCTION tidings_append_one(
    stream text, expected_kind text, expected_revision bigint, want_horizon boolean,
    event_ids uuid[], event_types text[], event_versions text[], occurred_ats bigint[],
    sources text[], payloads text[], correlation_ids text[], causation_ids text[],
    user_ids text[], extras text[],
    OUT outcome text, OUT first_revision bigint, OUT first_position bigint,
    OUT horizon bigint)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    n        bigint := cardinality(event_ids);
    cur_rev  bigint;
    known    boolean;
    now_us   bigint;
BEGIN
    SELECT s.last_revision, true INTO cur_rev, known
    FROM tidings_streams s WHERE s.name = stream;
    known := coalesce(known, false);
    IF NOT coalesce(CASE expected_kind
                        WHEN 'any' THEN true
                        WHEN 'no-stream' THEN NOT known
                        WHEN 'stream-exists' THEN known
                        WHEN 'exact' THEN known AND cur_rev = expected_revision
                    END, false) THEN
        outcome := 'declined';
        RETURN;
    END IF;
    -- A repeat (a retry of an append that was written) is answered by the full
    -- transaction, which finds where its ids were written.
    IF EXISTS (SELECT 1 FROM tidings_events e WHERE e.event_id = ANY(event_ids)) THEN
        outcome := 'ids-known';
        RETURN;
    END IF;

    IF known THEN
        SELECT s.last_revision INTO cur_rev
        FROM tidings_streams s WHERE s.name = stream FOR UPDATE;
        IF NOT FOUND OR cur_rev IS NULL
           OR NOT (expected_kind IN ('any', 'stream-exists')
                   OR (expected_kind = 'exact' AND cur_rev = expected_revision)) THEN
            outcome := 'declined';
            RETURN;
        END IF;
        SELECT c.first_position, c.horizon INTO first_position, horizon
        FROM tidings_claim(n, want_horizon) c;
        first_revision := cur_rev + 1;
        now_us := (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
        UPDATE tidings_streams
        SET last_revision = cur_rev + n, last_position = first_position + n - 1,
            last_written = now_us
        WHERE name = stream;
    ELSE
        -- A new stream: whoever inserts its row first writes revision 0; every later
        -- append to it waits for that row, so claims after this one.
        SELECT c.first_position, c.horizon INTO first_position, horizon
        FROM tidings_claim(n, want_horizon) c;
        now_us := (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
        INSERT INTO tidings_streams (name, last_revision, last_position, last_written)
        VALUES (stream, n - 1, first_position + n - 1, now_us)
        ON CONFLICT (name) DO NOTHING;
        IF NOT FOUND THEN
            -- Created meanwhile: the claimed positions become a gap.
            outcome := 'declined';
            first_position := NULL;
            horizon := NULL;
            RETURN;
        END IF;
        first_revision := 0;
    END IF;

    INSERT INTO tidings_events (
        position, stream, revision, event_id, event_type, event_version, occurred_at,
        source, data, correlation_id, causation_id, user_id, extra, recorded_at
    )
    SELECT first_position + e.ord - 1, stream, first_revision + e.ord - 1, e.event_id,
           e.event_type, e.event_version, e.occurred_at, e.source, e.data,
           e.correlation_id, e.causation_id, e.user_id, e.extra::jsonb, now_us
    FROM unnest(event_ids, event_types, event_versions, occurred_ats, sources, payloads,
                correlation_ids, causation_ids, user_ids, extras)
         WITH ORDINALITY
         AS e(event_id, event_type, event_version, occurred_at, source, data,
              correlation_id, causation_id, user_id, extra, ord);
    outcome := 'written';
END
$$;
