//! The image job's handler and the apalis monitor that runs it. A batch needs no archive job:
//! the statement that records its last image ends it, and its zip is assembled from the results
//! when it is downloaded (`jobs::archive`).

use std::time::{Duration, Instant};

use apalis::prelude::*;
use jobs::db::{self, ImageOutcome};
use jobs::domain::keys;
use jobs::metrics;
use jobs::pipeline::Format;
use jobs::queue::{ProcessImage, PAYLOAD_VERSION};

pub use crate::ctx::Ctx;
use crate::isolate::{Outcome, Request};

/// An image in hand (in `Ctx::in_hand`). [`Held::release`] runs when its handler ends; a
/// handler dropped in the middle (the worker is stopping) leaves its image in the set, to be
/// handed back.
struct Held(jobs::InProgress<jobs::ImageId>, jobs::ImageId);

impl Held {
    fn new(set: &jobs::InProgress<jobs::ImageId>, image: jobs::ImageId) -> Self {
        set.add(image);
        Self(set.clone(), image)
    }

    fn release(self) {
        self.0.remove(self.1);
    }
}

type JobResult = Result<(), BoxDynError>;

/// Runs the image queue under a monitor until `signal`, restarting a worker that dies (a Redis
/// restart, say) under a fresh name.
pub async fn run_monitor(
    ctx: Ctx,
    name: &str,
    concurrency: usize,
    poll: Duration,
    grace: Duration,
    signal: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let image_ctx = ctx.clone();
    let image_name = format!("{name}-images");
    let monitor = Monitor::new()
        .register(move |run| {
            // Polled at `poll`, and woken at once by new jobs and by a finished one.
            let strategy = Strategy::new()
                .stream(image_ctx.wake_images.stream())
                .interval(poll);
            WorkerBuilder::new(format!("{image_name}-{run}"))
                .backend(PollWith::new(image_ctx.queues.image_backend(), strategy))
                .concurrency(concurrency)
                .data(image_ctx.clone())
                .build(process_image)
        })
        .should_restart(|worker, error| {
            let restarts = worker.restarts();
            tracing::warn!(worker = worker.name(), restarts, error = %error, "queue worker stopped; restarting");
            // Back off a little so that a Redis outage does not become a busy loop. The hook is
            // synchronous: `block_in_place` hands this thread's other tasks (heartbeats, images
            // finishing, the dispatcher) to another thread while it sleeps.
            let pause = Duration::from_millis((200 * (restarts as u64 + 1)).min(3000));
            tokio::task::block_in_place(|| std::thread::sleep(pause));
            true
        })
        .shutdown_timeout(grace);
    monitor
        .run_with_signal(async move {
            signal.await;
            Ok(())
        })
        .await?;
    Ok(())
}

/// Processes one image: fetch, process in a child process, store, count. A file that cannot be
/// processed fails alone, with its reason. A transient error (storage or database unreachable)
/// is returned so the job runs again after a backoff, without counting against the image; an
/// attempt that crashed or hung counts, and after `MAX_IMAGE_ATTEMPTS` of those the image fails.
pub async fn process_image(job: ProcessImage, ctx: Data<Ctx>) -> JobResult {
    if job.v != PAYLOAD_VERSION {
        tracing::error!(
            version = job.v,
            "dropping a ProcessImage job of an unknown payload version"
        );
        return Ok(());
    }
    let Some(work) = db::start_image(&ctx.db, job.image, &ctx.worker).await? else {
        return Ok(()); // already done, failed, or its batch is gone: nothing to do
    };
    let held = Held::new(&ctx.in_hand, job.image);
    metrics::IMAGES_IN_FLIGHT.inc();
    let started = Instant::now();
    let result = process_started(&ctx, &job, &work).await;
    metrics::IMAGES_IN_FLIGHT.dec();
    metrics::IMAGE_SECONDS.observe(started.elapsed().as_secs_f64());
    held.release();
    // Slots are free: refill the window in Redis when images wait in Postgres, after every
    // `concurrency` images (the window holds more than that in waiting jobs, and a newcomer's
    // first image goes to the front of the queue whatever waits there), and fetch the next
    // image now rather than at the next poll.
    let finished = ctx
        .finished_since_dispatch
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        + 1;
    if ctx.backlog.load(std::sync::atomic::Ordering::Relaxed)
        && !ctx.settings.dispatch_fifo
        && finished >= ctx.concurrency
    {
        ctx.dispatch_now.notify_one();
    }
    ctx.wake_images.signal();
    result
}

async fn process_started(ctx: &Ctx, job: &ProcessImage, work: &db::ImageWork) -> JobResult {
    let max_attempts = ctx.settings.max_image_attempts as i32;
    if work.lost_attempts() >= max_attempts {
        let last = db::image_error(&ctx.db, job.image)
            .await?
            .unwrap_or_else(|| "the worker stopped while processing it".into());
        let reason = format!("gave up after {max_attempts} attempts; last problem: {last}");
        return finish(ctx, job, ImageOutcome::Failed { reason }).await;
    }
    match run_pipeline(ctx, work).await {
        Ok(Outcome::Done(processed)) => finish(ctx, job, ImageOutcome::Done(processed)).await,
        Ok(Outcome::Failed(reason)) => finish(ctx, job, ImageOutcome::Failed { reason }).await,
        Ok(Outcome::Lost(why)) => {
            tracing::warn!(image = %job.image, attempt = work.attempts, problem = %why, "an attempt at an image was lost");
            metrics::IMAGE_RETRIES.with_label_values(&["lost"]).inc();
            db::note_image_error(&ctx.db, job.image, &why, false).await?;
            if work.lost_attempts() + 1 >= max_attempts {
                let reason = format!("gave up after {max_attempts} attempts; last problem: {why}");
                return finish(ctx, job, ImageOutcome::Failed { reason }).await;
            }
            Err(why.into())
        }
        Err(transient) => {
            let message = transient.to_string();
            tracing::warn!(image = %job.image, attempt = work.attempts, error = %message, "image will be retried");
            metrics::IMAGE_RETRIES
                .with_label_values(&["transient"])
                .inc();
            db::note_image_error(&ctx.db, job.image, &message, true).await?;
            Err(transient)
        }
    }
}

/// The attempt's outcome, its result stored when there is one, or a transient error.
async fn run_pipeline(
    ctx: &Ctx,
    work: &db::ImageWork,
) -> Result<Outcome<db::Processed>, BoxDynError> {
    let input = match ctx
        .storage
        .get(&keys::original(work.batch, work.image))
        .await
    {
        Ok(bytes) => bytes,
        Err(e) if e.is_not_found() => {
            return Ok(Outcome::Failed(
                "the uploaded file is missing from storage".into(),
            ))
        }
        Err(e) => return Err(e.into()),
    };
    let uses_logo = work
        .pipeline
        .as_array()
        .is_some_and(|steps| steps.iter().any(|s| s["logo"] == "uploaded"));
    let logo = if uses_logo {
        match ctx.logos.get(&ctx.storage, work.batch).await {
            Ok(bytes) => Some(bytes),
            Err(e) if e.is_not_found() => {
                return Ok(Outcome::Failed(
                    "the batch's logo is missing from storage".into(),
                ))
            }
            Err(e) => return Err(e.into()),
        }
    } else {
        None
    };
    let started = Instant::now();
    let key = work.batch.to_string();
    let request = Request {
        key: &key,
        pipeline: &work.pipeline,
        logo,
        input,
    };
    let output = match ctx.pool.process(request).await {
        Outcome::Done(output) => output,
        Outcome::Failed(reason) => return Ok(Outcome::Failed(reason)),
        Outcome::Lost(why) => return Ok(Outcome::Lost(why)),
    };
    let path = output.path;
    let key = keys::output(work.batch, work.image, output.format.ext());
    let size = output.bytes.len() as i64;
    ctx.storage
        .put(&key, output.bytes.into(), output.format.mime())
        .await?;
    tracing::debug!(batch = %work.batch, image = %work.image, path, ms = started.elapsed().as_millis() as u64, "image processed");
    Ok(Outcome::Done(db::Processed {
        output_format: output.format.as_str().to_owned(),
        output_bytes: size,
        width: output.width,
        height: output.height,
    }))
}

async fn finish(ctx: &Ctx, job: &ProcessImage, outcome: ImageOutcome) -> JobResult {
    let image = job.image;
    let ttl = ctx.settings.result_ttl();
    let finished = db::finish_image(&ctx.db, image, &outcome, &ctx.worker, ttl).await?;
    if matches!(
        finished,
        db::Finished::Counted | db::Finished::Completed(..)
    ) {
        let label = match outcome {
            ImageOutcome::Done(_) => "done",
            ImageOutcome::Failed { .. } => "failed",
        };
        metrics::IMAGES_FINISHED.with_label_values(&[label]).inc();
    }
    match finished {
        db::Finished::Completed(batch, status) => {
            // The last image of the batch: it has ended, and its link works now. The length of
            // its zip is noted for the statistics, off the image's path.
            metrics::BATCHES_FINISHED
                .with_label_values(&[status.as_str()])
                .inc();
            tracing::info!(%batch, %status, "batch finished");
            if status == jobs::BatchStatus::Done {
                let db = ctx.db.clone();
                tokio::spawn(async move {
                    if let Err(e) = jobs::archive::note_length(&db, batch).await {
                        tracing::debug!(%batch, error = %e, "could not note the zip's length");
                    }
                });
            }
        }
        db::Finished::Abandoned => {
            // Its upload was refused while this image was processed: the upload's clean-up may
            // have deleted the batch's objects before this result was stored, so delete it here.
            if let ImageOutcome::Done(processed) = &outcome {
                if let Some(format) = Format::parse(&processed.output_format) {
                    ctx.storage
                        .delete(&keys::output(job.batch, image, format.ext()))
                        .await?;
                }
            }
        }
        db::Finished::Counted | db::Finished::Already => {}
    }
    Ok(())
}
