-- A batch of concurrent appends (group commit) decided and written by one statement.
-- See docs/decisions/0024-postgres-grouped-appends.md.
--
-- Until now a batch ran as a transaction of six or seven statements (BEGIN, lock the
-- stream rows, look up the ids, create new streams, claim, insert, COMMIT), each a round
-- trip. tidings_append_group does the same work in one call, in one transaction, with
-- one flush. The functions a claim calls keep their plans (PL/pgSQL instead of SQL).

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
-- first position when written. horizon: see tidings_claim (NULL when nothing was
-- written, or when not known cheaply and not wanted).
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
    OUT outcome text, OUT written boolean[], OUT first_revisions bigint[], OUT first_positions bigint[],
    OUT horizon bigint)
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

    SELECT c.first_position, c.horizon INTO base_position, horizon
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
