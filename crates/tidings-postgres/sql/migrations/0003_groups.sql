-- Consumer groups (PgGroups): settings, members with leases, and each group's window of
-- unsettled and parked messages. Every process reaching the schema shares them. See
-- docs/decisions/0014-postgres-groups.md.

CREATE TABLE tidings_groups (
    -- Never reused, so a member of a deleted group never matches a new group's rows.
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text COLLATE "C" NOT NULL UNIQUE,
    -- GroupSettings as JSON (validated before it is written); leases read leaseMs and
    -- hand-outs messageTimeoutMs from it.
    settings   jsonb NOT NULL,
    -- The cursor: the next log position not yet read into tidings_group_messages.
    -- Positions are gap-free in commit order, so everything below it that the group
    -- delivers has been read.
    read_upto  bigint NOT NULL CHECK (read_upto >= 0),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tidings_group_members (
    member     uuid PRIMARY KEY,
    group_id   bigint NOT NULL,
    name       text NOT NULL,
    -- Database clock. A lease that has lapsed is never renewed: the row is only garbage.
    expires_at timestamptz NOT NULL
);

-- Live members of a group (describe), and lapsed ones to collect.
CREATE INDEX tidings_group_members_group ON tidings_group_members (group_id, expires_at);

CREATE TABLE tidings_group_messages (
    group_id    bigint NOT NULL,
    position    bigint NOT NULL,
    stream      text COLLATE "C" NOT NULL,
    -- ready: may be handed out from ready_at on; out: held by member under delivery_id
    -- until out_until; parked: in the parked list, not queued.
    state       text NOT NULL CHECK (state IN ('ready', 'out', 'parked')),
    -- Failed attempts counted so far; the next hand-out is attempt attempts + 1.
    attempts    integer NOT NULL DEFAULT 0,
    ready_at    timestamptz NOT NULL DEFAULT '-infinity',
    delivery_id bigint,
    member      uuid,
    out_until   timestamptz,
    -- Queued again by a replay of the parked list.
    replay      boolean NOT NULL DEFAULT false,
    -- Set while the message is in the parked list (also while a replay has it queued).
    parked_id   bigint,
    parked_at   timestamptz,
    reason      text,
    held        boolean NOT NULL DEFAULT false,
    PRIMARY KEY (group_id, position),
    CHECK ((state = 'out') = (delivery_id IS NOT NULL AND member IS NOT NULL
                              AND out_until IS NOT NULL)),
    CHECK (state <> 'parked' OR parked_id IS NOT NULL)
);

-- Candidates for a fetch, oldest first; also counts the ready messages against the buffer.
CREATE INDEX tidings_group_messages_ready
    ON tidings_group_messages (group_id, position) WHERE state = 'ready';
-- Messages out: per member (leave, describe) and for the lease and timeout sweep.
CREATE INDEX tidings_group_messages_out
    ON tidings_group_messages (group_id, member) WHERE state = 'out';
-- The pinned strategy's gate: an earlier unsettled event of the same stream.
CREATE INDEX tidings_group_messages_stream
    ON tidings_group_messages (group_id, stream, position);
-- A settlement finds its message by delivery id.
CREATE UNIQUE INDEX tidings_group_messages_delivery
    ON tidings_group_messages (delivery_id) WHERE delivery_id IS NOT NULL;
-- The parked list, oldest first.
CREATE UNIQUE INDEX tidings_group_messages_parked
    ON tidings_group_messages (group_id, parked_id) WHERE parked_id IS NOT NULL;

-- One hand-out of one message: fresh for every hand-out, never reused.
CREATE SEQUENCE tidings_group_delivery_ids AS bigint START 1;
CREATE SEQUENCE tidings_group_parked_ids AS bigint START 1;
