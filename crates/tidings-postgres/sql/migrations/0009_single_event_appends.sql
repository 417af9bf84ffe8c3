-- Migration 0009: cheaper lone appends of one event (decision 0026).
--
-- PL/pgSQL runs a statement such as PERFORM f(x) through the executor, with a plan and
-- a portal, but evaluates an assignment whose right side needs no table (v := f(x)) as a
-- simple expression, with none of that. The claim is eight calls of lock functions:
-- as assignments, each costs a function call instead of a statement. A function that
-- returns void is called as `done := f(x) IS NULL` (void is never NULL, so done is
-- false; the call is what matters).
--
-- The sequence is read with pg_sequence_last_value (a function, so also a simple
-- expression); it answers NULL until nextval was first called, and tidings_next(),
-- which reads the sequence's row, answers then.

-- The claim of 0008: the same steps in the same order, the same answers.
CREATE OR REPLACE FUNCTION tidings_claim(n bigint, want_horizon boolean,
                              OUT first_position bigint, OUT horizon bigint,
                              OUT listened boolean)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    space  oid := tidings_lock_space();
    gate   bigint := space::bigint * 2;
    listen bigint := 8589934592 + space::bigint;
    done   boolean;
BEGIN
    done := pg_advisory_lock(gate) IS NULL;
    first_position := pg_sequence_last_value('tidings_next_position') + 1;
    IF first_position IS NULL THEN
        first_position := tidings_next();
    END IF;
    done := pg_advisory_xact_lock_shared(tidings_int4(space::bigint),
                                         tidings_int4(first_position)) IS NULL;
    IF nextval('tidings_next_position') <> first_position THEN
        done := pg_advisory_unlock(gate);
        RAISE EXCEPTION 'tidings_next_position moved without the claim gate';
    END IF;
    IF n > 1 THEN
        done := setval('tidings_next_position', first_position + n - 1) IS NULL;
    END IF;
    IF pg_try_advisory_lock(gate + 1) THEN
        done := pg_advisory_unlock(gate + 1);
        horizon := first_position + n;
    END IF;
    done := pg_advisory_xact_lock_shared(gate + 1) IS NULL;
    done := pg_advisory_unlock(gate);
    listened := NOT pg_try_advisory_lock(listen);
    IF NOT listened THEN
        done := pg_advisory_unlock(listen);
    END IF;
    IF horizon IS NULL AND want_horizon THEN
        horizon := tidings_next();
        horizon := least(horizon, tidings_lowest_claim(space, horizon, pg_backend_pid()));
    END IF;
END
$$;

-- A lone append of one event, as tidings_append_one (0008) with n = 1, its columns
-- passed as scalars: no arrays to build, send and unnest, and one row inserted with
-- VALUES. The store calls it for every lone append of a single event
-- (queries/append_event.sql).
CREATE FUNCTION tidings_append_event(
    stream text, expected_kind text, expected_revision bigint, want_horizon boolean,
    p_event_id uuid, p_event_type text, p_event_version text, p_occurred_at bigint,
    p_source text, p_payload text, p_correlation_id text, p_causation_id text,
    p_user_id text, p_extra text,
    OUT outcome text, OUT first_revision bigint, OUT first_position bigint,
    OUT horizon bigint, OUT listened boolean)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    cur_rev   bigint;
    known     boolean;
    ids_known boolean;
    now_us    bigint;
BEGIN
    IF expected_kind = 'no-stream' THEN
        SELECT EXISTS (SELECT 1 FROM tidings_streams s WHERE s.name = stream),
               EXISTS (SELECT 1 FROM tidings_events e WHERE e.event_id = p_event_id)
        INTO known, ids_known;
        IF known THEN
            outcome := 'declined';
            RETURN;
        END IF;
    ELSE
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
        ids_known := EXISTS (SELECT 1 FROM tidings_events e WHERE e.event_id = p_event_id);
    END IF;
    IF ids_known THEN
        outcome := 'ids-known';
        RETURN;
    END IF;
    SELECT c.first_position, c.horizon, c.listened
    INTO first_position, horizon, listened
    FROM tidings_claim(1, want_horizon) c;
    now_us := (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
    IF known THEN
        first_revision := cur_rev + 1;
        UPDATE tidings_streams
        SET last_revision = cur_rev + 1, last_position = first_position,
            last_written = now_us
        WHERE name = stream;
    ELSE
        INSERT INTO tidings_streams (name, last_revision, last_position, last_written)
        VALUES (stream, 0, first_position, now_us)
        ON CONFLICT (name) DO NOTHING;
        IF NOT FOUND THEN
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
    ) VALUES (first_position, stream, first_revision, p_event_id, p_event_type,
              p_event_version, p_occurred_at, p_source, p_payload, p_correlation_id,
              p_causation_id, p_user_id, p_extra::jsonb, now_us);
    outcome := 'written';
END
$$;
