-- Claims as one row per backend, updated in place (decision 0020). Migration 0005 kept a
-- row per claim, inserted and deleted by every append: the table filled with dead rows
-- faster than autovacuum collects them, and the horizon's min(lo) walked them all
-- (milliseconds after a minute of appends). A backend has at most one claim at a time
-- (its transactions run one after another), so its row is claimed and released by
-- updates, which stay on their page (HOT) and are pruned as pages are read; the table has
-- a row per backend that has appended. A claim a failed append could not release is
-- overwritten by the backend's next claim, which is safe: that backend's transaction that
-- could have used it has ended.

DROP PROCEDURE tidings_append_one;
DROP FUNCTION tidings_horizon();
DROP TABLE tidings_inflight;

-- The counter and the claims are updated by every append: pages are pruned of old row
-- versions long before they fill, so reading the current version stays short.
ALTER TABLE tidings_position SET (fillfactor = 10);

CREATE UNLOGGED TABLE tidings_claims (
    -- The backend whose transaction writes the claimed positions; with its start time,
    -- as pids are reused.
    pid           integer PRIMARY KEY,
    backend_start timestamptz NOT NULL,
    -- The claimed positions, lo up to, not including, hi; NULL when none.
    lo            bigint,
    hi            bigint,
    CHECK ((lo IS NULL) = (hi IS NULL) AND (lo IS NULL OR hi > lo))
) WITH (fillfactor = 10);

-- The visibility horizon: every position below it is committed or will never be. Every
-- claim holds it back, also a dead backend's: a claim is cleared by its own transaction,
-- by a release, or once its backend is gone by release_dead_claims.sql. (Judging liveness
-- here instead would race: a backend may commit its events after this snapshot and exit
-- before the check.)
CREATE FUNCTION tidings_horizon() RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT least((SELECT min(c.lo) FROM tidings_claims c),
                 (SELECT p.next_position FROM tidings_position p))
$$;

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
    started  text;
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

    -- The backend's start time, read once per session (pg_stat_get_activity copies every
    -- backend's status).
    started := current_setting('tidings.backend_start', true);
    IF coalesce(started, '') = '' THEN
        SELECT a.backend_start::text INTO started
        FROM pg_stat_get_activity(pg_backend_pid()) a;
        PERFORM set_config('tidings.backend_start', started, false);
    END IF;
    PERFORM set_config('synchronous_commit', 'off', true);
    UPDATE tidings_position SET next_position = next_position + n
    RETURNING next_position - n INTO first_position;
    UPDATE tidings_claims
    SET backend_start = started::timestamptz, lo = first_position, hi = first_position + n
    WHERE pid = pg_backend_pid();
    IF NOT FOUND THEN
        INSERT INTO tidings_claims (pid, backend_start, lo, hi)
        VALUES (pg_backend_pid(), started::timestamptz, first_position, first_position + n);
    END IF;
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
            UPDATE tidings_claims SET lo = NULL, hi = NULL WHERE pid = pg_backend_pid();
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
            UPDATE tidings_claims SET lo = NULL, hi = NULL WHERE pid = pg_backend_pid();
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
    UPDATE tidings_claims SET lo = NULL, hi = NULL WHERE pid = pg_backend_pid();
    horizon := tidings_horizon();
    COMMIT;

    PERFORM set_config('synchronous_commit', 'off', true);
    PERFORM pg_notify(channel, (first_position + n - 1)::text);
    outcome := 'written';
END
$$;
