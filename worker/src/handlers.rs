//! The two job handlers and the apalis monitor that runs them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use apalis::prelude::*;
use jobs::db::{self, Db, ImageOutcome};
use jobs::domain::keys;
use jobs::names::unique_entry_names;
use jobs::pipeline::{process_until, Format};
use jobs::queue::{BuildArchive, ProcessImage, Queues, PAYLOAD_VERSION};
use jobs::storage::Storage;
use jobs::tasks::Pipeline;

/// What every handler needs; cheap to clone.
#[derive(Clone)]
pub struct Ctx {
    pub db: Db,
    pub storage: Storage,
    pub queues: Queues,
    pub settings: Arc<jobs::Settings>,
    pub worker: Arc<str>,
}

type JobResult = Result<(), BoxDynError>;

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
            WorkerBuilder::new(format!("{image_name}-{run}"))
                .backend(image_ctx.queues.image_backend().poll_with_interval(poll))
                .concurrency(concurrency)
                .data(image_ctx.clone())
                .build(process_image)
        })
        .register(move |run| {
            WorkerBuilder::new(format!("{archive_name}-{run}"))
                .backend(archive_ctx.queues.archive_backend().poll_with_interval(poll))
                .data(archive_ctx.clone())
                .build(build_archive)
        })
        .should_restart(|worker, error| {
            let restarts = worker.restarts();
            tracing::warn!(worker = worker.name(), restarts, error = %error, "queue worker stopped; restarting");
            // Back off a little so that a Redis outage does not become a busy loop.
            std::thread::sleep(Duration::from_millis((200 * (restarts as u64 + 1)).min(3000)));
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

/// Processes one image: fetch, decode, apply the batch's steps, encode, store, count. A file
/// that cannot be processed fails alone, with its reason; a transient error (storage or database
/// unreachable) is returned so the job runs again later.
pub async fn process_image(job: ProcessImage, ctx: Data<Ctx>) -> JobResult {
    if job.v != PAYLOAD_VERSION {
        tracing::error!(
            version = job.v,
            "dropping a ProcessImage job of an unknown payload version"
        );
        return Ok(());
    }
    let Some(work) = db::start_image(&ctx.db, job.image).await? else {
        return Ok(()); // already done, failed, or its batch is gone: nothing to do
    };
    let max_attempts = ctx.settings.max_image_attempts as i32;
    if work.attempts > max_attempts {
        let last = db::image_error(&ctx.db, job.image)
            .await?
            .unwrap_or_else(|| "it stopped the worker".into());
        let reason = format!("gave up after {max_attempts} attempts; last problem: {last}");
        return finish(&ctx, job.image, ImageOutcome::Failed { reason }).await;
    }
    match run_pipeline(&ctx, &work).await {
        Ok(outcome) => finish(&ctx, job.image, outcome).await,
        Err(transient) => {
            let message = transient.to_string();
            tracing::warn!(image = %job.image, attempt = work.attempts, error = %message, "image will be retried");
            db::note_image_error(&ctx.db, job.image, &message).await?;
            Err(transient)
        }
    }
}

/// The image's outcome, or a transient error.
async fn run_pipeline(ctx: &Ctx, work: &db::ImageWork) -> Result<ImageOutcome, BoxDynError> {
    let failed = |reason: String| Ok(ImageOutcome::Failed { reason });
    let pipeline = match Pipeline::parse(&work.pipeline) {
        Ok(p) => p,
        Err(e) => {
            return failed(format!(
                "the batch's processing steps are no longer valid: {e}"
            ))
        }
    };
    let input = match ctx
        .storage
        .get(&keys::original(work.batch, work.image))
        .await
    {
        Ok(bytes) => bytes,
        Err(e) if e.is_not_found() => {
            return failed("the uploaded file is missing from storage".into())
        }
        Err(e) => return Err(e.into()),
    };
    let limits = ctx.settings.image_limits();
    let timeout = ctx.settings.image_timeout();
    let deadline = Instant::now() + timeout;
    let started = Instant::now();
    let task = tokio::task::spawn_blocking(move || {
        process_until(&input, &pipeline, &limits, Some(deadline))
    });
    let output = match tokio::time::timeout(timeout + Duration::from_secs(1), task).await {
        Err(_) => return failed(jobs::pipeline::ProcessError::TimedOut.to_string()),
        Ok(Err(join)) => {
            tracing::error!(image = %work.image, error = %join, "image processing panicked");
            return failed("the image made the processor crash".into());
        }
        Ok(Ok(Err(e))) => return failed(e.to_string()),
        Ok(Ok(Ok(output))) => output,
    };
    let key = keys::output(work.batch, work.image, output.format.ext());
    let size = output.bytes.len() as i64;
    ctx.storage
        .put(&key, output.bytes.into(), output.format.mime())
        .await?;
    tracing::debug!(batch = %work.batch, image = %work.image, ms = started.elapsed().as_millis() as u64, "image processed");
    Ok(ImageOutcome::Done {
        output_format: output.format.as_str().to_owned(),
        output_bytes: size,
        width: output.width,
        height: output.height,
    })
}

async fn finish(ctx: &Ctx, image: jobs::ImageId, outcome: ImageOutcome) -> JobResult {
    if let Some(batch) = db::finish_image(&ctx.db, image, &outcome, &ctx.worker).await? {
        // The last image of the batch: the zip is next. Should Redis be unreachable now, the
        // reconciler enqueues it later.
        if let Err(e) = ctx.queues.enqueue_archive(batch).await {
            tracing::warn!(%batch, error = %e, "could not enqueue the archive; the reconciler will");
        }
    }
    Ok(())
}

/// Builds the zip of a complete batch, stores it, and marks the batch done (or failed, when no
/// image could be processed). Running it twice is harmless.
pub async fn build_archive(job: BuildArchive, ctx: Data<Ctx>) -> JobResult {
    let batch = job.batch;
    archive(job, ctx).await.inspect_err(|e| {
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
    if row.status() != jobs::BatchStatus::Archiving {
        return Ok(());
    }
    let started = Instant::now();
    let entries = db::archive_entries(&ctx.db, batch).await?;
    let done: Vec<_> = entries
        .iter()
        .filter_map(|e| {
            let format = e.output_format.as_deref().and_then(Format::parse)?;
            (e.status == "done").then_some((e, format))
        })
        .collect();
    let failures: Vec<(String, String)> = entries
        .iter()
        .filter(|e| e.status == "failed")
        .map(|e| {
            (
                e.name.clone(),
                e.error.clone().unwrap_or_else(|| "unknown reason".into()),
            )
        })
        .collect();
    let ttl = ctx.settings.result_ttl();
    if done.is_empty() {
        db::mark_failed(&ctx.db, batch, "none of the files could be processed", ttl).await?;
        tracing::info!(%batch, "batch failed: no file could be processed");
        return Ok(());
    }

    let names = unique_entry_names(done.iter().map(|(e, f)| (e.name.as_str(), *f)));
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("result.zip");
    let mut zip = jobs::archive::ArchiveWriter::create(&path)?;
    for ((entry, format), name) in done.iter().zip(&names) {
        let bytes = ctx
            .storage
            .get(&keys::output(batch, entry.id, format.ext()))
            .await?;
        tokio::task::block_in_place(|| zip.add_image(name, &bytes))?;
    }
    tokio::task::block_in_place(|| -> std::io::Result<()> {
        if !failures.is_empty() {
            zip.add_report(&failures)?;
        }
        zip.finish()
    })?;
    let bytes = ctx
        .storage
        .put_file(&keys::archive(batch), &path, "application/zip")
        .await?;
    if db::mark_archived(&ctx.db, batch, bytes as i64, ttl).await? {
        tracing::info!(%batch, images = done.len(), failed = failures.len(), bytes,
            ms = started.elapsed().as_millis() as u64, "batch archived");
    }
    Ok(())
}
