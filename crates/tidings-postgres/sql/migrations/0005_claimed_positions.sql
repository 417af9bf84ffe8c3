-- Positions claimed outside the append's transaction, and the visibility horizon readers
-- stop at. See docs/decisions/0020-postgres-claimed-positions.md.
--
-- An append claims its positions in a short transaction of its own (committed without
-- waiting for the WAL flush): it moves tidings_position and records the claim here, with
-- the backend that will write the events. The append's transaction then inserts the
-- events and deletes the claim, atomically. The counter row is locked for the claim
-- only, not until the events commit, so appends from any number of sessions flush their
-- commits together.
--
-- A claimed position may commit after a higher one, or never (a refused or failed append
-- gives it up; a dead backend's claim is garbage). Readers therefore stop below the
-- horizon: the lowest position still claimed, or next_position when there is none.
-- Below it, every position is committed and visible, or a gap for good.

-- Unlogged: a claim matters only while its backend lives, and a crash ends every
-- backend (PostgreSQL empties unlogged tables on crash recovery).
CREATE UNLOGGED TABLE tidings_inflight (
    -- The claimed positions: lo up to, not including, hi.
    lo            bigint PRIMARY KEY,
    hi            bigint NOT NULL CHECK (hi > lo),
    -- The backend whose transaction writes them; with its start time, as pids are reused.
    pid           integer NOT NULL,
    backend_start timestamptz NOT NULL
);

-- The visibility horizon: every position below it is committed or will never be. Every
-- claim still in the table holds it back, also a dead backend's: a claim is deleted by
-- its own transaction, by a release, or once its backend is gone by
-- release_dead_claims.sql. (Judging liveness here instead would race: a backend may
-- commit its events after this snapshot and exit before the check.)
CREATE FUNCTION tidings_horizon() RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT least((SELECT min(i.lo) FROM tidings_inflight i),
                 (SELECT p.next_position FROM tidings_position p))
$$;

-- A lone append in one round trip (CALL): a check without locks, the claim (its own
-- transaction, committed without waiting for the flush), the append's transaction
-- (stream row locked or created, version checked again under the lock, events inserted,
-- claim deleted; one flush), and the notification (a third transaction, so the
-- notification queue's lock is not held across the flush: NOTIFY serializes committing
-- transactions cluster-wide). It declines, writing nothing, what needs the full
-- transaction in append.rs: a failed version check, a stream created meanwhile, a claim
-- below the stream's last position (another append claimed later but wrote first).
-- When it declines after the claim, the claimed positions become a gap.
--
-- outcome: 'written', 'declined', or 'ids-known' (an id is recorded: a repeat, for the
-- full transaction to answer). horizon: the horizon the append saw before its
-- commit, without its own claim; every position below it is settled once it has
-- committed, so the writer's head can move there at once.
CREATE PROCEDURE tidings_append_one(
    stream text, expected_kind text, expected_revision bigint, channel text,
    event_ids uuid[], event_types text[], event_versions text[], occurred_ats bigint[],
    sources text[], payloads text[], correlation_ids text[], causation_ids text[],
    user_ids text[], extras text[],
    INOUT outcome text DEFAULT NULL,
    INOUT first_revision bigint DEFAULT NULL,
    INOUT first_position bigint DEFAULT NULL,
    INOUT horizon bigint DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
    n        bigint := cardinality(event_ids);
    cur_rev  bigint;
    cur_pos  bigint;
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
    -- A repeat (a retry of an append that was written) would claim positions only to
    -- leave them as a gap when the unique index refuses its ids.
    IF EXISTS (SELECT 1 FROM tidings_events e WHERE e.event_id = ANY(event_ids)) THEN
        outcome := 'ids-known';
        RETURN;
    END IF;

    PERFORM set_config('synchronous_commit', 'off', true);
    UPDATE tidings_position SET next_position = next_position + n
    RETURNING next_position - n INTO first_position;
    INSERT INTO tidings_inflight (lo, hi, pid, backend_start)
    VALUES (first_position, first_position + n, pg_backend_pid(),
            (SELECT a.backend_start FROM pg_stat_get_activity(pg_backend_pid()) a));
    COMMIT;

    now_us := (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
    IF known THEN
        SELECT s.last_revision, s.last_position INTO cur_rev, cur_pos
        FROM tidings_streams s WHERE s.name = stream FOR UPDATE;
        -- A stream's positions grow with its revisions: an append that claimed before
        -- another one wrote to the stream must not write below it. The full
        -- transaction claims under the stream lock instead.
        IF NOT coalesce((expected_kind IN ('any', 'stream-exists')
                         OR (expected_kind = 'exact' AND cur_rev = expected_revision))
                        AND cur_pos < first_position,
                        false) THEN
            DELETE FROM tidings_inflight WHERE lo = first_position;
            PERFORM pg_notify(channel, (first_position + n - 1)::text);
            outcome := 'declined';
            first_position := NULL;
            RETURN;
        END IF;
        first_revision := cur_rev + 1;
        UPDATE tidings_streams
        SET last_revision = cur_rev + n, last_position = first_position + n - 1,
            last_written = now_us
        WHERE name = stream;
    ELSE
        INSERT INTO tidings_streams (name, last_revision, last_position, last_written)
        VALUES (stream, n - 1, first_position + n - 1, now_us)
        ON CONFLICT (name) DO NOTHING;
        IF NOT FOUND THEN
            DELETE FROM tidings_inflight WHERE lo = first_position;
            PERFORM pg_notify(channel, (first_position + n - 1)::text);
            outcome := 'declined';
            first_position := NULL;
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
    DELETE FROM tidings_inflight WHERE lo = first_position;
    horizon := tidings_horizon();
    COMMIT;

    PERFORM set_config('synchronous_commit', 'off', true);
    PERFORM pg_notify(channel, (first_position + n - 1)::text);
    outcome := 'written';
END
$$;
