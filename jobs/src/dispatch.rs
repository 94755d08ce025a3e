//! Postgres decides what is in Redis. A recorded image waits in Postgres until a dispatcher
//! pushes its job; at most `window` image jobs are in Redis at once (waiting, scheduled for a
//! retry, or running), so a backlog of any size stays in Postgres and never reaches the
//! apalis-redis limit on jobs due at once (about 8,000 kill every worker). Batches go out in the
//! order they were queued.
//!
//! Archive jobs go the same way: a batch whose images are all done or failed waits in
//! `archiving` with `archive_enqueued_at` unset until a dispatch pushes its job.
//!
//! The dispatcher also notices when Redis has lost its data (the epoch key is gone: a restart
//! without persistence, a `FLUSHALL`, a failover to an empty replica) and hands every image and
//! archive that Redis held back to the queue at once, instead of waiting for the reconciler.
//!
//! Dispatchers run in every worker and in `web` (right after a batch is recorded); a Postgres
//! advisory lock makes them take turns.

use std::collections::BTreeMap;
use std::sync::Arc;

use sqlx::Row;

use crate::db::Db;
use crate::domain::{BatchId, ImageId};
use crate::queue::Queues;

/// Key of the advisory lock the dispatchers take turns on (any constant unique to this system).
const DISPATCH_LOCK: i64 = 0x776d_6469_7370_6174; // "wmdispat"

/// What one dispatch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Dispatched {
    /// Image jobs pushed to Redis.
    pub images: usize,
    /// Archive jobs pushed (for batches that just completed, or again after a loss).
    pub archives: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Queue(#[from] crate::queue::QueueError),
}

impl DispatchError {
    /// Whether trying again later may succeed (see [`crate::db::is_retryable`]).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Db(e) => crate::db::is_retryable(e),
            Self::Queue(e) => e.is_retryable(),
        }
    }
}

/// Pushes waiting images to Redis while fewer than `window` image jobs are there. Jobs are pushed
/// before the transaction that marks them enqueued commits: should the commit fail, they are
/// pushed again later, and running an image twice is harmless, whereas the other order could
/// lose them.
pub async fn dispatch(db: &Db, queues: &Queues, window: u32) -> Result<Dispatched, DispatchError> {
    let mut report = Dispatched::default();
    let mut tx = db.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(DISPATCH_LOCK)
        .execute(&mut *tx)
        .await?;

    if !queues.epoch_present().await? {
        let forgotten = sqlx::query(
            "UPDATE images SET enqueued_at = NULL
             WHERE status = 'pending' AND enqueued_at IS NOT NULL",
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let archives = sqlx::query(
            "UPDATE batches SET archive_enqueued_at = NULL
             WHERE status = 'archiving' AND archive_enqueued_at IS NOT NULL",
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        queues.set_epoch().await?;
        if forgotten > 0 || archives > 0 {
            tracing::warn!(
                images = forgotten,
                archives,
                "Redis lost its jobs; enqueueing them again from Postgres"
            );
        }
    }

    let archives: Vec<BatchId> = sqlx::query_scalar(
        "UPDATE batches SET archive_enqueued_at = now()
         WHERE status = 'archiving' AND archive_enqueued_at IS NULL
         RETURNING id",
    )
    .fetch_all(&mut *tx)
    .await?;
    for batch in &archives {
        queues.enqueue_archive(*batch).await?;
    }
    report.archives = archives.len();

    let in_redis: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM images WHERE status = 'pending' AND enqueued_at IS NOT NULL",
    )
    .fetch_one(&mut *tx)
    .await?;
    let room = i64::from(window) - in_redis;
    if room > 0 {
        let rows = sqlx::query(
            "UPDATE images SET enqueued_at = now()
             WHERE id IN (
                 SELECT i.id FROM images i JOIN batches b ON b.id = i.batch_id
                 WHERE i.status = 'pending' AND i.enqueued_at IS NULL
                   AND b.status IN ('uploading', 'open', 'queued', 'processing')
                 ORDER BY b.queued_at, b.id, i.position
                 LIMIT $1)
             RETURNING batch_id, id",
        )
        .bind(room)
        .fetch_all(&mut *tx)
        .await?;
        let mut by_batch: BTreeMap<BatchId, Vec<ImageId>> = BTreeMap::new();
        for row in &rows {
            by_batch
                .entry(row.try_get("batch_id")?)
                .or_default()
                .push(row.try_get("id")?);
        }
        for (batch, images) in by_batch {
            queues.enqueue_images(batch, &images).await?;
        }
        report.images = rows.len();
    }
    tx.commit().await?;
    Ok(report)
}

/// Dispatches in the background soon after being asked. Requests made while a dispatch runs
/// coalesce into one more dispatch, so an upload can ask after every image it stores.
#[derive(Clone)]
pub struct Soon(Arc<tokio::sync::Notify>);

impl Soon {
    /// Starts the background task (on the current Tokio runtime).
    pub fn spawn(db: Db, queues: Queues, window: u32) -> Self {
        let notify = Arc::new(tokio::sync::Notify::new());
        let wanted = notify.clone();
        tokio::spawn(async move {
            loop {
                wanted.notified().await;
                if let Err(e) = dispatch(&db, &queues, window).await {
                    // The images wait in Postgres; the workers' dispatchers send them.
                    tracing::warn!(error = %e, "could not dispatch now; the workers will");
                }
            }
        });
        Self(notify)
    }

    pub fn request(&self) {
        self.0.notify_one();
    }
}
