//! The worker's row in the `workers` table: written at start and every
//! [`jobs::db::HEARTBEAT_SECONDS`] after (images in flight, images done and failed since it
//! started), and marked stopped when it stops. The monitor and the `watermark_workers_live`
//! metric read it; a worker that stops reporting drops off after
//! [`jobs::db::LIVE_WORKER_SECONDS`].

use std::time::Duration;

use chrono::Utc;
use jobs::db::{self, WorkerReport};
use jobs::metrics;

use crate::ctx::Ctx;

/// Reports until the task is aborted.
pub async fn run(ctx: Ctx, host: String, concurrency: usize) {
    let mut report = WorkerReport {
        name: ctx.worker.to_string(),
        host,
        pid: std::process::id() as i32,
        concurrency: concurrency as i32,
        version: env!("CARGO_PKG_VERSION").into(),
        started_at: Utc::now(),
        in_flight: 0,
        images_done: 0,
        images_failed: 0,
    };
    let mut every = tokio::time::interval(Duration::from_secs(db::HEARTBEAT_SECONDS));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        report.in_flight = ctx.in_hand.ids().len() as i32;
        report.images_done = metrics::IMAGES_FINISHED.with_label_values(&["done"]).get() as i64;
        report.images_failed = metrics::IMAGES_FINISHED
            .with_label_values(&["failed"])
            .get() as i64;
        if let Err(e) = db::worker_seen(&ctx.db, &report).await {
            tracing::debug!(error = %e, "cannot report to the workers table");
        }
    }
}

/// Marks the worker stopped, so that the monitor drops it at once.
pub async fn stopped(ctx: &Ctx) {
    if let Err(e) = db::worker_stopped(&ctx.db, &ctx.worker).await {
        tracing::debug!(error = %e, "cannot mark the worker stopped");
    }
}
