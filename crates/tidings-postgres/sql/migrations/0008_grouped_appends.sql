-- A batch of concurrent appends (group commit) decided and written by one statement.
-- See docs/decisions/0024-postgres-grouped-appends.md.
--
-- Until now a batch ran as a transaction of six or seven statements (BEGIN, lock the
-- stream rows, look up the ids, create new streams, claim, insert, COMMIT), each a round
-- trip. tidings_append_group does the same work in one call, in one transaction, with
-- one flush. The functions a claim calls keep their plans (PL/pgSQL instead of SQL),
-- and a claim tells whether anyone listens, so that appends nobody listens for are not
-- announced (a notification is a transaction of its own).

-- The next position, as in 0007, in PL/pgSQL: a SQL function whose body reads a table
-- is not inlined, and its body was parsed and planned again on every call (about half
-- of a claim's cost); PL/pgSQL keeps its plan for the session.
CREATE OR REPLACE FUNCTION tidings_next() RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    n bigint;
BEGIN
    SELECT CASE WHEN s.is_called THEN s.last_value + 1 ELSE s.last_value END INTO n
    FROM tidings_next_position s;
    RETURN n;
END
$$;

-- The lowest position claimed now, as in 0007, in PL/pgSQL for the same reason.
CREATE OR REPLACE FUNCTION tidings_lowest_claim(space oid, near bigint, except_pid integer)
RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN (
        SELECT min(near - 2147483648
                   + ((l.objid::bigint - near + 2147483648) % 4294967296 + 4294967296)
                     % 4294967296)
        FROM pg_locks l
        WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.classid = space
          AND l.database = (SELECT d.oid FROM pg_database d
                            WHERE d.datname = current_database())
          AND l.pid IS DISTINCT FROM except_pid);
END
$$;

-- Whether anyone listens for this store's notifications: every listener holds this
-- bigint key shared for as long as its session lives (listener.rs), taken before it
-- reads the horizon. 2^33 + S lies above every 2S and 2S + 1 (the gate and "claims
-- exist" keys of any schema), so it meets no other store's keys.
CREATE FUNCTION tidings_listen_key() RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT 8589934592 + tidings_lock_space()::bigint
$$;

-- A claim, as in 0007, that also answers whether anyone listened once it was taken
-- (listened). Its writer announces its commit only then: a listener that starts later
-- reads the horizon after it took its key, so it finds this claim still held (and polls
-- until it settles) or settled, and needs no notification for it.
DROP FUNCTION tidings_append_one;
DROP FUNCTION tidings_claim;
CREATE FUNCTION tidings_claim(n bigint, want_horizon boolean,
                              OUT first_position bigint, OUT horizon bigint,
                              OUT listened boolean)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    space  oid := tidings_lock_space();
    gate   bigint := space::bigint * 2;
    listen bigint := 8589934592 + space::bigint;
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
    -- After the claim is visible. Taken (for a moment) only when no listener holds it;
    -- another writer checking at the same moment counts as a listener, which costs a
    -- notification and nothing else.
    listened := NOT pg_try_advisory_lock(listen);
    IF NOT listened THEN
        PERFORM pg_advisory_unlock(listen);
    END IF;
    IF horizon IS NULL AND want_horizon THEN
        -- Outside the gate: a scan of pg_locks is not cheap. The next position first,
        -- then every live claim but this backend's own (its one claim is this one).
        horizon := tidings_next();
        horizon := least(horizon, tidings_lowest_claim(space, horizon, pg_backend_pid()));
    END IF;
END
$$;

-- The lone append of 0007, answering listened too (see tidings_claim), with one lookup
-- fewer: a stream expected to be new is checked together with the ids, and any other
-- stream's row is locked at once instead of being read first without a lock.
CREATE FUNCTION tidings_append_one(
    stream text, expected_kind text, expected_revision bigint, want_horizon boolean,
    event_ids uuid[], event_types text[], event_versions text[], occurred_ats bigint[],
    sources text[], payloads text[], correlation_ids text[], causation_ids text[],
    user_ids text[], extras text[],
    OUT outcome text, OUT first_revision bigint, OUT first_position bigint,
    OUT horizon bigint, OUT listened boolean)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    n         bigint := cardinality(event_ids);
    cur_rev   bigint;
    known     boolean;
    ids_known boolean;
    now_us    bigint;
BEGIN
    IF expected_kind = 'no-stream' THEN
        -- Nothing to lock: the stream's absence and the ids in one statement; inserting
        -- the stream's row settles a race.
        SELECT EXISTS (SELECT 1 FROM tidings_streams s WHERE s.name = stream),
               EXISTS (SELECT 1 FROM tidings_events e WHERE e.event_id = ANY(event_ids))
        INTO known, ids_known;
        IF known THEN
            outcome := 'declined';
            RETURN;
        END IF;
    ELSE
        -- The stream's row locked at once: its version cannot change before this
        -- transaction ends.
        SELECT s.last_revision INTO cur_rev
        FROM tidings_streams s WHERE s.name = stream FOR UPDATE;
        known := FOUND;
        IF (known AND cur_rev IS NULL)
           OR NOT coalesce(CASE expected_kind
                               WHEN 'any' THEN true
                               WHEN 'stream-exists' THEN known
                               WHEN 'exact' THEN known AND cur_rev = expected_revision
                           END, false) THEN
            outcome := 'declined';
            RETURN;
        END IF;
        ids_known := EXISTS (SELECT 1 FROM tidings_events e
                             WHERE e.event_id = ANY(event_ids));
    END IF;
    -- A repeat (a retry of an append that was written) is answered by the full
    -- transaction, which finds where its ids were written.
    IF ids_known THEN
        outcome := 'ids-known';
        RETURN;
    END IF;

    IF known THEN
        SELECT c.first_position, c.horizon, c.listened
        INTO first_position, horizon, listened
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
        SELECT c.first_position, c.horizon, c.listened
        INTO first_position, horizon, listened
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

-- Decides and writes a batch of appends, in order, as if one ran after another: each
-- append's expected version is checked against the streams as the appends before it
-- in the batch left them; a refused append writes nothing and does not disturb the
-- others. Positions are claimed once for everything written (tidings_claim), after the
-- rows of the existing streams are locked in name order, so each stream's positions
-- grow with its revisions.
--
-- Appends: streams, expected_kinds ('any' | 'no-stream' | 'stream-exists' | 'exact'),
-- expected_revisions (for 'exact') and counts (events), one element per append.
-- locked: the distinct streams named by an append that is not 'no-stream', sorted
-- bytewise; their rows are locked and read. fresh: the other streams of the batch,
-- named only by 'no-stream' appends: they are taken to be new, with no lock, and
-- inserting their rows is the check. Events: event_appends (the 1-based index of the event's append) and
-- event_offsets (its 0-based index in that append), then one array per column, one
-- element per event, every append's events in batch order. No id may appear twice in a
-- batch.
--
-- Answers 'again', writing nothing and claiming nothing, when an event id is recorded
-- already (a repeat: it is answered with its first result, which takes a lookup of
-- where its ids lie) or a fresh stream exists: the caller decides the batch with the
-- full transaction. Otherwise 'decided' and, per append: written[i]; first_revisions[i], its first revision when written,
-- else the stream's version that refused it (NULL: no stream); first_positions[i], its
-- first position when written. horizon and listened: see tidings_claim (NULL when
-- nothing was written; horizon also when not known cheaply and not wanted).
--
-- Fails, writing nothing, with a unique violation when a concurrent append created a
-- new stream (tidings_streams_pkey) or recorded an event id
-- (tidings_events_event_id_unique) after the check above; its claimed positions become
-- a gap, and the caller decides the batch with the full transaction. Both are raised
-- after the claim gate was released; on any other error the caller must close the
-- connection (the gate is session-level).
CREATE FUNCTION tidings_append_group(
    want_horizon boolean,
    streams text[], expected_kinds text[], expected_revisions bigint[], counts integer[],
    locked text[], fresh text[],
    event_appends integer[], event_offsets integer[],
    event_ids uuid[], event_types text[], event_versions text[], occurred_ats bigint[],
    sources text[], payloads text[], correlation_ids text[], causation_ids text[],
    user_ids text[], extras text[],
    OUT outcome text, OUT written boolean[], OUT first_revisions bigint[],
    OUT first_positions bigint[], OUT horizon bigint, OUT listened boolean)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    n_appends     integer := cardinality(streams);
    -- Every stream of the batch: the existing ones first (locked, in name order), then
    -- the new ones in order of first mention. versions: as the batch leaves them (NULL:
    -- no stream); last_offsets: the offset of the stream's last written event among
    -- everything the batch writes (NULL: not written).
    names         text[] := '{}';
    versions      bigint[] := '{}';
    last_offsets  bigint[];
    n_existing    integer := 0;
    n_new         integer := 0;
    i             integer;
    j             integer;
    cur           bigint;
    total         bigint := 0;
    base_position bigint;
    now_us        bigint;
BEGIN
    IF EXISTS (SELECT 1 FROM tidings_events e WHERE e.event_id = ANY(event_ids))
       OR EXISTS (SELECT 1 FROM tidings_streams s WHERE s.name = ANY(fresh)) THEN
        outcome := 'again';
        RETURN;
    END IF;
    IF cardinality(locked) > 0 THEN
        SELECT coalesce(array_agg(l.name ORDER BY l.name), '{}'),
               coalesce(array_agg(l.last_revision ORDER BY l.name), '{}')
        INTO names, versions
        FROM (SELECT s.name, s.last_revision
              FROM tidings_streams s
              WHERE s.name = ANY(locked)
              ORDER BY s.name
              FOR UPDATE) l;
        n_existing := cardinality(names);
    END IF;
    last_offsets := array_fill(NULL::bigint, ARRAY[n_existing]);

    written := array_fill(false, ARRAY[n_appends]);
    first_revisions := array_fill(NULL::bigint, ARRAY[n_appends]);
    first_positions := array_fill(NULL::bigint, ARRAY[n_appends]);
    FOR i IN 1 .. n_appends LOOP
        j := array_position(names, streams[i]);
        IF j IS NULL THEN
            names := array_append(names, streams[i]);
            versions := array_append(versions, NULL::bigint);
            last_offsets := array_append(last_offsets, NULL::bigint);
            j := cardinality(names);
            n_new := n_new + 1;
        END IF;
        cur := versions[j];
        IF coalesce(CASE expected_kinds[i]
                        WHEN 'any' THEN true
                        WHEN 'no-stream' THEN cur IS NULL
                        WHEN 'stream-exists' THEN cur IS NOT NULL
                        WHEN 'exact' THEN cur = expected_revisions[i]
                    END, false) THEN
            written[i] := true;
            first_revisions[i] := coalesce(cur + 1, 0);
            -- An offset for now; the claimed first position is added below.
            first_positions[i] := total;
            total := total + counts[i];
            versions[j] := first_revisions[i] + counts[i] - 1;
            last_offsets[j] := total - 1;
        ELSE
            first_revisions[i] := cur;
        END IF;
    END LOOP;
    outcome := 'decided';
    IF total = 0 THEN
        RETURN;
    END IF;

    SELECT c.first_position, c.horizon, c.listened
    INTO base_position, horizon, listened
    FROM tidings_claim(total, want_horizon) c;
    now_us := (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;

    IF n_new > 0 THEN
        -- New streams written to, in name order. Whoever inserts a stream's row first
        -- writes its revision 0; an insert that finds the row taken (created since the
        -- check) fails.
        INSERT INTO tidings_streams (name, last_revision, last_position, last_written)
        SELECT u.name, u.version, base_position + u.off, now_us
        FROM unnest(names[n_existing + 1 :], versions[n_existing + 1 :],
                    last_offsets[n_existing + 1 :]) AS u(name, version, off)
        WHERE u.off IS NOT NULL
        ORDER BY u.name;
    END IF;
    IF n_existing > 0 THEN
        UPDATE tidings_streams s
        SET last_revision = u.version, last_position = base_position + u.off,
            last_written = now_us
        FROM unnest(names[1 : n_existing], versions[1 : n_existing],
                    last_offsets[1 : n_existing]) AS u(name, version, off)
        WHERE s.name = u.name AND u.off IS NOT NULL;
    END IF;

    INSERT INTO tidings_events (
        position, stream, revision, event_id, event_type, event_version, occurred_at,
        source, data, correlation_id, causation_id, user_id, extra, recorded_at
    )
    SELECT base_position + first_positions[e.app] + e.k, streams[e.app],
           first_revisions[e.app] + e.k, e.event_id, e.event_type, e.event_version,
           e.occurred_at, e.source, e.data, e.correlation_id, e.causation_id, e.user_id,
           e.extra::jsonb, now_us
    FROM unnest(event_appends, event_offsets, event_ids, event_types, event_versions,
                occurred_ats, sources, payloads, correlation_ids, causation_ids, user_ids,
                extras)
         AS e(app, k, event_id, event_type, event_version, occurred_at, source, data,
              correlation_id, causation_id, user_id, extra)
    WHERE written[e.app];

    FOR i IN 1 .. n_appends LOOP
        IF written[i] THEN
            first_positions[i] := base_position + first_positions[i];
        END IF;
    END LOOP;
END
$$;
