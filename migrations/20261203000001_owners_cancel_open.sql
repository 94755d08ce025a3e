-- Many people at once (issue 17): every batch has an owner, an API key or an anonymous client
-- address, which the dispatcher shares the workers between and whose limits are enforced; a
-- batch can be cancelled; and a batch can be open, taking its files over many requests.

-- Who batches belong to. A key (`kind = 'key'`) is shown once at creation: only its visible
-- prefix and the SHA-256 of the whole key are kept. An anonymous owner (`kind = 'address'`) is
-- a client address, an IPv4 address or an IPv6 /64, made on its first submission. The limits
-- left NULL are the server's defaults (OWNER_MAX_* settings).
CREATE TABLE owners (
    id                     uuid PRIMARY KEY,
    kind                   text NOT NULL CHECK (kind IN ('key', 'address')),
    prefix                 text UNIQUE,
    key_hash               bytea,
    address                text UNIQUE,
    label                  text NOT NULL DEFAULT '',
    scopes                 text[] NOT NULL DEFAULT '{}',
    weight                 real NOT NULL DEFAULT 1 CHECK (weight > 0 AND weight <= 1000),
    max_queued_images      integer CHECK (max_queued_images > 0),
    max_batches_per_minute integer CHECK (max_batches_per_minute > 0),
    max_bytes_per_day      bigint CHECK (max_bytes_per_day > 0),
    created_at             timestamptz NOT NULL DEFAULT now(),
    last_used_at           timestamptz,
    revoked_at             timestamptz,
    CHECK ((kind = 'key') = (prefix IS NOT NULL AND key_hash IS NOT NULL)),
    CHECK ((kind = 'address') = (address IS NOT NULL)),
    CHECK (scopes <@ ARRAY['submit', 'read', 'admin']::text[])
);

-- Batches made before owners existed keep a NULL owner: the dispatcher counts them as one owner.
ALTER TABLE batches ADD COLUMN owner_id uuid REFERENCES owners (id);
-- The client's `Idempotency-Key` of the request that created the batch: replayed by the same
-- owner, it answers with this batch instead of making another.
ALTER TABLE batches ADD COLUMN idempotency_key text;
-- Bytes of the files received for the batch so far (what counts toward the owner's bytes per day).
ALTER TABLE batches ADD COLUMN bytes_in bigint NOT NULL DEFAULT 0;
ALTER TABLE batches ADD COLUMN cancelled_at timestamptz;

CREATE UNIQUE INDEX batches_idempotency ON batches (owner_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX batches_owner ON batches (owner_id, created_at);

-- `open`: a batch taking its files over many requests until it is closed (its images are
-- processed as they arrive, as for `uploading`). `cancelled`: stopped by its owner; its files
-- are deleted at once, and again by the purge should a worker store a result late.
ALTER TABLE batches DROP CONSTRAINT batches_status_check;
ALTER TABLE batches ADD CONSTRAINT batches_status_check CHECK (status IN
    ('uploading', 'open', 'queued', 'processing', 'archiving', 'done', 'failed', 'cancelled',
     'expired'));

-- The client's own id of a file added to an open batch: sending the same file again (a retry
-- after a dropped connection) finds it instead of adding it twice.
ALTER TABLE images ADD COLUMN client_id text;
CREATE UNIQUE INDEX images_client_id ON images (batch_id, client_id) WHERE client_id IS NOT NULL;

ALTER TABLE images DROP CONSTRAINT images_status_check;
ALTER TABLE images ADD CONSTRAINT images_status_check CHECK (status IN
    ('pending', 'done', 'failed', 'cancelled'));

DROP INDEX batches_unfinished;
CREATE INDEX batches_unfinished ON batches (status, updated_at)
    WHERE status IN ('uploading', 'open', 'queued', 'processing', 'archiving');

-- What the purge looks for: finished batches past their TTL, and cancelled ones whose files it
-- has not deleted yet (their status stays `cancelled`; `expired_at` says the purge is done).
DROP INDEX batches_expiry;
CREATE INDEX batches_expiry ON batches (expires_at)
    WHERE status IN ('done', 'failed') OR (status = 'cancelled' AND expired_at IS NULL);

CREATE OR REPLACE FUNCTION batch_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        IF OLD.status IN ('uploading', 'open')
           AND NEW.status IN ('queued', 'processing', 'archiving') THEN
            INSERT INTO batch_events (batch_id, kind, detail)
            VALUES (NEW.id, 'batch.uploaded', NEW.total || ' files');
        ELSIF NEW.status = 'done' THEN
            INSERT INTO batch_events (batch_id, kind, detail)
            VALUES (NEW.id, 'batch.archived', NEW.archive_bytes || ' bytes');
        ELSIF NEW.status = 'failed' THEN
            INSERT INTO batch_events (batch_id, kind, detail)
            VALUES (NEW.id, 'batch.failed', NEW.error);
        ELSIF NEW.status = 'cancelled' THEN
            INSERT INTO batch_events (batch_id, kind, detail)
            VALUES (NEW.id, 'batch.cancelled', NEW.error);
        ELSIF NEW.status = 'expired' THEN
            INSERT INTO batch_events (batch_id, kind) VALUES (NEW.id, 'batch.expired');
        END IF;
        -- Not for an upload refused or broken off: its sender never got the batch's id.
        IF NEW.status IN ('done', 'failed', 'cancelled') AND OLD.status <> 'uploading'
           AND NEW.callback_url IS NOT NULL THEN
            INSERT INTO webhook_deliveries (batch_id, url) VALUES (NEW.id, NEW.callback_url)
            ON CONFLICT DO NOTHING;
        END IF;
    END IF;
    PERFORM pg_notify('watermark_batch', NEW.id::text);
    RETURN NULL;
END $$;

-- As before, but the images of a cancelled batch are not logged one by one (the batch's own
-- `batch.cancelled` says it).
CREATE OR REPLACE FUNCTION image_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        -- Refused at upload (empty, too large, not an image).
        IF NEW.status = 'failed' THEN
            INSERT INTO batch_events (batch_id, kind, image_id, detail)
            VALUES (NEW.batch_id, 'image.failed', NEW.id, NEW.error);
        END IF;
        RETURN NULL;
    END IF;
    IF NEW.status = 'cancelled' THEN
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
