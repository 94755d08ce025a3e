-- Batches, their images, and the cron ticks claimed by replicas. Postgres is the source of truth;
-- Redis only says which job to run next.

CREATE TABLE batches (
    id            uuid PRIMARY KEY,
    status        text NOT NULL CHECK (status IN
                    ('uploading', 'queued', 'processing', 'archiving', 'done', 'failed', 'expired')),
    pipeline      jsonb NOT NULL,
    total         integer NOT NULL DEFAULT 0,
    done_count    integer NOT NULL DEFAULT 0,
    failed_count  integer NOT NULL DEFAULT 0,
    error         text,
    archive_bytes bigint,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    queued_at     timestamptz,
    finished_at   timestamptz,
    expires_at    timestamptz,
    expired_at    timestamptz,
    CHECK (done_count + failed_count <= total)
);

CREATE INDEX batches_expiry ON batches (expires_at) WHERE status IN ('done', 'failed');
CREATE INDEX batches_unfinished ON batches (status, updated_at)
    WHERE status IN ('uploading', 'queued', 'processing', 'archiving');

CREATE TABLE images (
    id            uuid PRIMARY KEY,
    batch_id      uuid NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
    position      integer NOT NULL,
    name          text NOT NULL,
    input_format  text,
    input_bytes   bigint NOT NULL,
    status        text NOT NULL CHECK (status IN ('pending', 'done', 'failed')),
    error         text,
    output_format text,
    output_bytes  bigint,
    width         integer,
    height        integer,
    attempts      integer NOT NULL DEFAULT 0,
    processed_by  text,
    enqueued_at   timestamptz,
    finished_at   timestamptz,
    UNIQUE (batch_id, position)
);

CREATE INDEX images_pending ON images (enqueued_at) WHERE status = 'pending';

-- One row per (cron job, tick): the replica whose insert succeeds runs that tick.
CREATE TABLE cron_ticks (
    job        text NOT NULL,
    fire_at    timestamptz NOT NULL,
    claimed_by text NOT NULL,
    claimed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job, fire_at)
);
