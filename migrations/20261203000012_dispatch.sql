-- Fair dispatch (`jobs::dispatch`): owners take turns by stride scheduling. Each owner's pass
-- grows by 1 / weight with every image of it pushed to Redis, and the next image goes to the
-- owner with the smallest pass. The batches of no owner (made before owners existed) count as
-- one owner, kept under the nil UUID, so there is no foreign key. One row per owner ever served.
CREATE TABLE dispatch_passes (
    owner_id uuid PRIMARY KEY,
    pass     double precision NOT NULL
);

-- Archive jobs are gone (a batch's zip is streamed at download): nothing waits for one.
DROP INDEX IF EXISTS batches_archive_waiting;
