-- What operators and integrators follow: an event log per batch, the workers seen lately, and
-- the webhook deliveries owed. The event log and the notifications are written by triggers, so
-- that every path that changes a batch or an image is recorded, whichever process takes it.

-- The latest attempt at an image: when it started and which worker took it (the monitor's image
-- times are `finished_at - started_at`).
ALTER TABLE images ADD COLUMN started_at timestamptz;
ALTER TABLE images ADD COLUMN started_by text;

CREATE INDEX images_finished ON images (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX batches_created ON batches (created_at);

-- Where a finished batch's status is POSTed (webhooks), when the submission gave one.
ALTER TABLE batches ADD COLUMN callback_url text;

-- Everything that happened to a batch, in order. `kind` is one of
--   batch.uploaded, image.started, image.done, image.failed, image.retried, batch.archived,
--   batch.failed, batch.downloaded, batch.expired, webhook.delivered, webhook.failed
-- with the image, the worker and the attempt where they apply, and a short detail (a reason, a
-- size, an HTTP status).
CREATE TABLE batch_events (
    id       bigserial PRIMARY KEY,
    batch_id uuid NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
    at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    kind     text NOT NULL,
    image_id uuid,
    worker   text,
    attempt  integer,
    detail   text
);

CREATE INDEX batch_events_batch ON batch_events (batch_id, id);

-- A webhook owed to a batch's `callback_url` once it is done or failed; retried with backoff
-- until delivered or out of attempts. `next_attempt_at` is also the lease of the worker sending
-- it, so that a worker that dies mid-delivery only delays it.
CREATE TABLE webhook_deliveries (
    batch_id        uuid PRIMARY KEY REFERENCES batches (id) ON DELETE CASCADE,
    url             text NOT NULL,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';

-- The workers seen lately: each worker writes its row at start and every few seconds after
-- (`last_seen`), and marks it stopped when it stops.
CREATE TABLE workers (
    name          text PRIMARY KEY,
    host          text NOT NULL,
    pid           integer NOT NULL,
    concurrency   integer NOT NULL,
    version       text NOT NULL,
    started_at    timestamptz NOT NULL,
    last_seen     timestamptz NOT NULL,
    stopped_at    timestamptz,
    in_flight     integer NOT NULL DEFAULT 0,
    images_done   bigint NOT NULL DEFAULT 0,
    images_failed bigint NOT NULL DEFAULT 0
);

-- A batch changed: its status change goes into the log, a finished batch with a callback owes a
-- webhook, and listeners (`web`'s live pages) are told its id.
CREATE FUNCTION batch_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        IF OLD.status = 'uploading' AND NEW.status IN ('queued', 'processing', 'archiving') THEN
            INSERT INTO batch_events (batch_id, kind, detail)
            VALUES (NEW.id, 'batch.uploaded', NEW.total || ' files');
        ELSIF NEW.status = 'done' THEN
            INSERT INTO batch_events (batch_id, kind, detail)
            VALUES (NEW.id, 'batch.archived', NEW.archive_bytes || ' bytes');
        ELSIF NEW.status = 'failed' THEN
            INSERT INTO batch_events (batch_id, kind, detail)
            VALUES (NEW.id, 'batch.failed', NEW.error);
        ELSIF NEW.status = 'expired' THEN
            INSERT INTO batch_events (batch_id, kind) VALUES (NEW.id, 'batch.expired');
        END IF;
        -- Not for an upload refused or broken off: its sender never got the batch's id.
        IF NEW.status IN ('done', 'failed') AND OLD.status <> 'uploading'
           AND NEW.callback_url IS NOT NULL THEN
            INSERT INTO webhook_deliveries (batch_id, url) VALUES (NEW.id, NEW.callback_url)
            ON CONFLICT DO NOTHING;
        END IF;
    END IF;
    PERFORM pg_notify('watermark_batch', NEW.id::text);
    RETURN NULL;
END $$;

CREATE TRIGGER batch_changed AFTER UPDATE ON batches
    FOR EACH ROW EXECUTE FUNCTION batch_changed();

-- An image changed: its start, its end, and the retries in between go into the log.
CREATE FUNCTION image_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        -- Refused at upload (empty, too large, not an image).
        IF NEW.status = 'failed' THEN
            INSERT INTO batch_events (batch_id, kind, image_id, detail)
            VALUES (NEW.batch_id, 'image.failed', NEW.id, NEW.error);
        END IF;
        RETURN NULL;
    END IF;
    IF NEW.attempts > OLD.attempts THEN
        INSERT INTO batch_events (batch_id, kind, image_id, worker, attempt)
        VALUES (NEW.batch_id, 'image.started', NEW.id, NEW.started_by, NEW.attempts);
    END IF;
    IF NEW.status <> OLD.status THEN
        INSERT INTO batch_events (batch_id, kind, image_id, worker, attempt, detail)
        VALUES (NEW.batch_id, 'image.' || NEW.status, NEW.id, NEW.processed_by, NEW.attempts,
                CASE WHEN NEW.status = 'failed' THEN NEW.error
                     ELSE NEW.output_bytes || ' bytes' END);
    ELSIF NEW.status = 'pending'
          AND (NEW.retries > OLD.retries OR NEW.error IS DISTINCT FROM OLD.error) THEN
        INSERT INTO batch_events (batch_id, kind, image_id, worker, attempt, detail)
        VALUES (NEW.batch_id, 'image.retried', NEW.id, NEW.started_by, NEW.attempts, NEW.error);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER image_changed AFTER INSERT OR UPDATE OF attempts, status, retries, error ON images
    FOR EACH ROW EXECUTE FUNCTION image_changed();
