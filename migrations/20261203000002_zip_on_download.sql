-- A batch's zip is no longer built and stored by a job: the download assembles it from the
-- results (`jobs::archive`). The statement that records a batch's last image ends the batch,
-- `done` (or `failed` when no image could be processed), so `archiving` is left only by earlier
-- versions (the reconciler ends such batches). `archive_bytes` is the zip's length, noted by the
-- worker that ended the batch; the `batch.archived` event ("zip ready") says how many images it
-- holds.

CREATE OR REPLACE FUNCTION batch_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        IF OLD.status IN ('uploading', 'open')
           AND NEW.status IN ('queued', 'processing', 'archiving') THEN
            INSERT INTO batch_events (batch_id, kind, detail)
            VALUES (NEW.id, 'batch.uploaded', NEW.total || ' files');
        ELSIF NEW.status = 'done' THEN
            INSERT INTO batch_events (batch_id, kind, detail)
            VALUES (NEW.id, 'batch.archived', NEW.done_count || ' images');
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
