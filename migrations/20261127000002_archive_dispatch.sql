-- Archive jobs go through the dispatcher too: a batch in `archiving` whose archive job is not in
-- Redis (`archive_enqueued_at IS NULL`) gets one from the next dispatch, so a crash between the
-- commit that completes a batch and the push of its archive job loses nothing.

ALTER TABLE batches ADD COLUMN archive_enqueued_at timestamptz;

-- Batches already archiving had their job pushed the old way.
UPDATE batches SET archive_enqueued_at = updated_at WHERE status = 'archiving';

CREATE INDEX batches_archive_waiting ON batches (queued_at)
    WHERE status = 'archiving' AND archive_enqueued_at IS NULL;
