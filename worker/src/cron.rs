//! The purge and the reconciler on cron schedules. Every replica schedules them; each tick runs
//! on exactly one replica, the one whose claim of the tick in Postgres succeeds.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DurationRound, TimeDelta, Utc};
use jobs::metrics;
use tokio_cron_scheduler::{Job, JobScheduler};

use crate::ctx::Ctx;

/// When the crons run (`PURGE_SCHEDULE`, `RECONCILE_SCHEDULE`: cron expressions with seconds),
/// and after how long the reconciler deems a job lost (`RECONCILE_AFTER_SECONDS`).
#[derive(Debug, Clone)]
pub struct Schedules {
    pub purge: String,
    pub reconcile: String,
    pub reconcile_after: Duration,
}

pub async fn start(schedules: &Schedules, ctx: Ctx) -> anyhow::Result<JobScheduler> {
    let scheduler = JobScheduler::new().await?;
    let reconcile = jobs::maintenance::ReconcileSettings {
        stale_after: schedules.reconcile_after,
        upload_stale_after: ctx.settings.upload_stale(),
        open_idle_after: ctx.settings.open_batch_idle(),
        result_ttl: ctx.settings.result_ttl(),
    };
    let ctx = Arc::new(ctx);

    let purge_ctx = ctx.clone();
    scheduler
        .add(
            Job::new_async(schedules.purge.as_str(), move |_, _| {
                let ctx = purge_ctx.clone();
                Box::pin(async move {
                    if !claim(&ctx, "purge").await {
                        return;
                    }
                    match jobs::maintenance::purge(&ctx.db, &ctx.storage).await {
                        Ok(r) => {
                            metrics::PURGE_RUNS.with_label_values(&["ok"]).inc();
                            metrics::PURGED_BATCHES.inc_by(r.batches as u64);
                            if r.batches > 0 {
                                tracing::info!(
                                    batches = r.batches,
                                    objects = r.objects,
                                    "purge done"
                                )
                            }
                        }
                        Err(e) => {
                            metrics::PURGE_RUNS.with_label_values(&["error"]).inc();
                            tracing::warn!(error = %e, "purge failed; the next tick tries again")
                        }
                    }
                    let _ = jobs::db::forget_ticks(&ctx.db, Duration::from_secs(86_400)).await;
                })
            })
            .map_err(|e| anyhow::anyhow!("PURGE_SCHEDULE is not a valid cron expression: {e}"))?,
        )
        .await?;

    let rec_ctx = ctx.clone();
    scheduler
        .add(Job::new_async(schedules.reconcile.as_str(), move |_, _| {
            let ctx = rec_ctx.clone();
            Box::pin(async move {
                if !claim(&ctx, "reconcile").await {
                    return;
                }
                match jobs::maintenance::reconcile(&ctx.db, &ctx.storage, reconcile).await {
                    Ok(r) => {
                        metrics::RECONCILE_RUNS.with_label_values(&["ok"]).inc();
                        if r != Default::default() {
                            tracing::info!(?r, "reconciler repaired");
                        }
                    }
                    Err(e) => {
                        metrics::RECONCILE_RUNS.with_label_values(&["error"]).inc();
                        tracing::warn!(error = %e, "reconciler failed; the next tick tries again")
                    }
                }
            })
        })
        .map_err(|e| anyhow::anyhow!("RECONCILE_SCHEDULE is not a valid cron expression: {e}"))?)
        .await?;

    scheduler.start().await?;
    Ok(scheduler)
}

/// Claims the tick `job` fired for, named by the current second of this replica's clock: of the
/// replicas whose clocks agree within that second, exactly one gets it and runs the job. Replicas
/// whose clocks disagree by more name different ticks and may each run it; the purge's row locks
/// keep that safe.
async fn claim(ctx: &Ctx, job: &str) -> bool {
    let now = Utc::now();
    let tick = now.duration_trunc(TimeDelta::seconds(1)).unwrap_or(now);
    match jobs::db::claim_tick(&ctx.db, job, tick, &ctx.worker).await {
        Ok(claimed) => claimed,
        Err(e) => {
            tracing::warn!(job, error = %e, "cannot claim a cron tick");
            false
        }
    }
}

pub async fn stop(mut scheduler: JobScheduler) {
    if let Err(e) = scheduler.shutdown().await {
        tracing::warn!(error = %e, "cron scheduler did not stop cleanly");
    }
}
