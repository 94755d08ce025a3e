//! The two job handlers and the apalis monitor that runs them.

use std::time::{Duration, Instant};

use apalis::prelude::*;
use futures::{StreamExt, TryStreamExt};
use jobs::db::{self, ImageOutcome};
use jobs::domain::keys;
use jobs::metrics;
use jobs::names::unique_entry_names;
use jobs::pipeline::Format;
use jobs::queue::{BuildArchive, ProcessImage, PAYLOAD_VERSION};

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

/// Results fetched at once while a zip is built.
const ARCHIVE_FETCHES: usize = 8;

/// Runs both queues under one monitor until `signal`, restarting a worker that dies (a Redis
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
    let archive_ctx = ctx.clone();
    let archive_name = format!("{name}-archives");
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
        .register(move |run| {
            let strategy = Strategy::new()
                .stream(archive_ctx.wake_archives.stream())
                .interval(poll);
            WorkerBuilder::new(format!("{archive_name}-{run}"))
                .backend(PollWith::new(archive_ctx.queues.archive_backend(), strategy))
                .data(archive_ctx.clone())
                .build(build_archive)
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
    // A slot is free: fetch the next image now rather than at the next poll.
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
    let finished = db::finish_image(&ctx.db, image, &outcome, &ctx.worker).await?;
    if matches!(finished, db::Finished::Counted | db::Finished::Completed(_)) {
        let label = match outcome {
            ImageOutcome::Done(_) => "done",
            ImageOutcome::Failed { .. } => "failed",
        };
        metrics::IMAGES_FINISHED.with_label_values(&[label]).inc();
    }
    match finished {
        db::Finished::Completed(batch) => {
            // The last image of the batch: its archive job goes out now. Should that fail, the
            // batch waits in Postgres and the next dispatch sends it.
            let window = ctx.settings.dispatch_window;
            if let Err(e) = jobs::dispatch::dispatch(&ctx.db, &ctx.queues, window).await {
                tracing::warn!(%batch, error = %e, "could not dispatch the archive now; the dispatcher will");
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

/// Streams the zip of `results` (named `names`, in order) and the report of `failures` into
/// `upload`.
async fn write_archive(
    mut results: impl futures::Stream<Item = Result<bytes::Bytes, jobs::storage::StorageError>> + Unpin,
    names: &[String],
    failures: &[(String, String)],
    upload: &mut jobs::storage::Upload,
) -> JobResult {
    let mut zip = jobs::archive::ArchiveWriter::new();
    let mut names = names.iter();
    while let Some(bytes) = results.try_next().await? {
        let name = names.next().expect("one name per result");
        zip.add_image(name, &bytes)?;
        upload.push(&zip.take()).await?;
    }
    if !failures.is_empty() {
        zip.add_report(failures)?;
    }
    upload.push(&zip.finish()?).await?;
    Ok(())
}

/// Builds the zip of a complete batch, stores it, and marks the batch done (or failed, when no
/// image could be processed). Running it twice is harmless.
pub async fn build_archive(job: BuildArchive, ctx: Data<Ctx>) -> JobResult {
    let batch = job.batch;
    archive(job, ctx).await.inspect_err(|e| {
        metrics::ARCHIVES.with_label_values(&["retried"]).inc();
        tracing::warn!(%batch, error = %e, "building the archive failed; it will be retried");
    })
}

async fn archive(job: BuildArchive, ctx: Data<Ctx>) -> JobResult {
    if job.v != PAYLOAD_VERSION {
        tracing::error!(
            version = job.v,
            "dropping a BuildArchive job of an unknown payload version"
        );
        return Ok(());
    }
    let batch = job.batch;
    let Some(row) = db::get_batch(&ctx.db, batch).await? else {
        return Ok(());
    };
    if row.status != jobs::BatchStatus::Archiving {
        return Ok(());
    }
    let started = Instant::now();
    let entries = db::archive_entries(&ctx.db, batch).await?;
    let done: Vec<_> = entries
        .iter()
        .filter_map(|e| {
            let format = e.output_format.as_deref().and_then(Format::parse)?;
            (e.status == jobs::ImageStatus::Done).then_some((e, format))
        })
        .collect();
    let failures: Vec<(String, String)> = entries
        .iter()
        .filter(|e| e.status == jobs::ImageStatus::Failed)
        .map(|e| {
            (
                e.name.clone(),
                e.error.clone().unwrap_or_else(|| "unknown reason".into()),
            )
        })
        .collect();
    let ttl = ctx.settings.result_ttl();
    if done.is_empty() {
        if db::mark_failed(&ctx.db, batch, "none of the files could be processed", ttl).await? {
            metrics::ARCHIVES.with_label_values(&["failed"]).inc();
        }
        tracing::info!(%batch, "batch failed: no file could be processed");
        return Ok(());
    }

    let names = unique_entry_names(done.iter().map(|(e, f)| (e.name.as_str(), *f)));
    // Results are fetched several at a time, in order, while the zip takes them one by one and
    // goes to storage in parts as it grows: no temporary file, at most three parts in memory.
    let keys: Vec<String> = done
        .iter()
        .map(|(entry, format)| keys::output(batch, entry.id, format.ext()))
        .collect();
    let storage = ctx.storage.clone();
    let fetched = futures::stream::iter(keys)
        .map(move |key| {
            let storage = storage.clone();
            async move { storage.get(&key).await }
        })
        .buffered(ARCHIVE_FETCHES);
    // The smallest parts, so that the first goes up while the rest is still being fetched.
    let mut upload = ctx
        .storage
        .upload(keys::archive(batch), "application/zip")
        .part_size(jobs::storage::MIN_PART_SIZE);
    let bytes = match write_archive(fetched, &names, &failures, &mut upload).await {
        Ok(()) => upload.finish().await?,
        Err(e) => {
            upload.abort().await;
            return Err(e);
        }
    };
    if db::mark_archived(&ctx.db, batch, bytes as i64, ttl).await? {
        metrics::ARCHIVES.with_label_values(&["done"]).inc();
        metrics::ARCHIVE_SECONDS.observe(started.elapsed().as_secs_f64());
        tracing::info!(%batch, images = done.len(), failed = failures.len(), bytes,
            ms = started.elapsed().as_millis() as u64, "batch archived");
    }
    Ok(())
}
