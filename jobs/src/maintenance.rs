//! The two cron jobs: the purge (delete every object of batches past their TTL, then mark them
//! expired) and the reconciler (repair what a crash or a lost Redis left behind). Both are
//! idempotent; the worker runs each tick on exactly one replica (see `db::claim_tick`).

use std::time::Duration;

use crate::db::{self, Db};
use crate::domain::keys;
use crate::storage::Storage;

/// What one purge run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PurgeReport {
    pub batches: usize,
    pub objects: usize,
}

/// Deletes the objects of every batch whose TTL has run out and marks it expired. Each batch is
/// locked while it is purged, so replicas that purge at the same moment never purge the same
/// batch. A batch whose objects could not all be deleted stays as it is and is tried again on
/// the next run.
/// An error is the database's (a storage failure only leaves its batch for the next run); see
/// [`db::is_retryable`].
pub async fn purge(db: &Db, storage: &Storage) -> Result<PurgeReport, sqlx::Error> {
    let mut report = PurgeReport::default();
    let mut failed = Vec::new();
    while let Some(purge) = db::begin_purge(db, &failed).await? {
        let batch = purge.batch;
        match storage.delete_prefix(&keys::batch_prefix(batch)).await {
            Ok(n) => {
                db::finish_purge(purge, true).await?;
                report.batches += 1;
                report.objects += n;
                tracing::info!(%batch, objects = n, "purged an expired batch");
            }
            Err(e) => {
                db::finish_purge(purge, false).await?;
                failed.push(batch);
                tracing::warn!(%batch, error = %e, "could not purge a batch; will retry");
            }
        }
    }
    Ok(report)
}

/// What one reconciler run repaired.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReconcileReport {
    pub images_requeued: usize,
    pub batches_completed: usize,
    pub uploads_failed: usize,
    /// Open batches closed after OPEN_BATCH_IDLE_SECONDS without activity (with their files).
    pub open_closed: usize,
    /// Open batches failed after OPEN_BATCH_IDLE_SECONDS without a file.
    pub open_failed: usize,
}

/// Thresholds of the reconciler.
#[derive(Debug, Clone, Copy)]
pub struct ReconcileSettings {
    /// A pending image whose job went to Redis longer ago than this is enqueued again.
    pub stale_after: Duration,
    /// An upload that has not finished after this long is failed and its objects deleted.
    pub upload_stale_after: Duration,
    /// An open batch without activity for this long is closed (failed when empty).
    pub open_idle_after: Duration,
    pub result_ttl: Duration,
}

pub async fn reconcile(
    db: &Db,
    storage: &Storage,
    settings: ReconcileSettings,
) -> Result<ReconcileReport, sqlx::Error> {
    let mut report = ReconcileReport::default();

    let released = db::release_stale_images(db, settings.stale_after).await?;
    if released > 0 {
        report.images_requeued = released as usize;
        tracing::warn!(
            images = released,
            "handed stale image jobs back to the dispatcher"
        );
    }

    let completed = db::complete_stuck(db, settings.result_ttl).await?;
    if completed > 0 {
        report.batches_completed = completed as usize;
        tracing::warn!(
            batches = completed,
            "ended batches whose images were all finished"
        );
    }

    for batch in
        db::fail_stale_uploads(db, settings.upload_stale_after, settings.result_ttl).await?
    {
        if let Err(e) = storage.delete_prefix(&keys::batch_prefix(batch)).await {
            tracing::warn!(%batch, error = %e, "could not delete a broken upload's objects yet; the purge will");
        }
        report.uploads_failed += 1;
        tracing::warn!(%batch, "failed an upload that never finished");
    }

    let idle = crate::open::close_idle(db, settings.open_idle_after, settings.result_ttl).await?;
    if idle != Default::default() {
        report.open_closed = idle.closed;
        report.open_failed = idle.failed_empty;
        tracing::info!(
            closed = idle.closed,
            failed_empty = idle.failed_empty,
            "closed open batches left idle"
        );
    }
    Ok(report)
}
