//! The dispatcher loop every worker runs: keeps Redis fed from Postgres (see
//! `jobs::dispatch`) after every `concurrency` images this worker finishes and every poll
//! interval, notices a Redis that lost its data, and trims finished jobs and dead workers'
//! metadata from Redis.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::ctx::Ctx;

/// How often finished jobs are trimmed from Redis, and how many per queue at most each time.
const TRIM_EVERY: Duration = Duration::from_secs(5);
const TRIM_MAX: usize = 5000;
/// How often the metadata of dead workers is deleted (it takes a scan of the keyspace).
const TIDY_EVERY: Duration = Duration::from_secs(30);

pub async fn run(ctx: Ctx, interval: Duration) {
    let policy = ctx.settings.dispatch_policy();
    let mut failing: Option<String> = None;
    let mut last_trim = Instant::now();
    let mut last_tidy = Instant::now();
    loop {
        ctx.finished_since_dispatch.store(0, Ordering::Relaxed);
        match jobs::dispatch::dispatch(&ctx.db, &ctx.queues, policy).await {
            Ok(report) => {
                ctx.backlog.store(report.waiting, Ordering::Relaxed);
                if failing.take().is_some() {
                    tracing::info!("dispatching again");
                }
                if report.images > 0 {
                    tracing::debug!(
                        images = report.images,
                        window = report.window,
                        "dispatched jobs"
                    );
                }
            }
            Err(e) => {
                ctx.backlog.store(true, Ordering::Relaxed);
                let message = e.to_string();
                // One line per distinct problem, not one per attempt.
                if failing.as_deref() != Some(message.as_str()) {
                    tracing::warn!(error = %message, "cannot dispatch jobs; retrying");
                    failing = Some(message);
                }
            }
        }
        if last_trim.elapsed() >= TRIM_EVERY {
            last_trim = Instant::now();
            match ctx.queues.trim_finished(TRIM_MAX).await {
                Ok(n) if n > 0 => tracing::debug!(jobs = n, "trimmed finished jobs from Redis"),
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "cannot trim finished jobs"),
            }
        }
        if last_tidy.elapsed() >= TIDY_EVERY {
            last_tidy = Instant::now();
            if let Err(e) = ctx.queues.forget_dead_workers().await {
                tracing::debug!(error = %e, "cannot tidy dead workers");
            }
        }
        // Until the interval is up, or an image finished here (a request made during the
        // dispatch above is kept, so none is lost).
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = ctx.dispatch_now.notified() => {}
        }
    }
}
