-- Postgres decides what is in Redis. An image waits here (`enqueued_at IS NULL`) until a
-- dispatcher pushes its job, keeping at most DISPATCH_WINDOW image jobs in Redis at once; a lost
-- Redis is repaired by clearing `enqueued_at` of the images it held.
--
-- `attempts` counts every start of an image; `retries` counts the starts that ended in a
-- transient error (storage or database unreachable). The difference is the number of attempts
-- that never came back (the worker crashed, was killed, or the processor hung): that is what
-- MAX_IMAGE_ATTEMPTS bounds.

ALTER TABLE images ADD COLUMN retries integer NOT NULL DEFAULT 0;

CREATE INDEX images_waiting ON images (batch_id, position)
    WHERE status = 'pending' AND enqueued_at IS NULL;

-- How many times a purge started deleting a batch's objects: 1 for every expired batch when the
-- purge runs once per tick across replicas (more only after a failed delete was tried again).
ALTER TABLE batches ADD COLUMN purge_runs integer NOT NULL DEFAULT 0;
