//! Every Postgres query of the system. Postgres is the source of truth: every state change of a
//! batch or an image happens here, guarded so that running any job twice never counts twice.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{FromRow, Row};

use crate::domain::{BatchId, BatchStatus, ImageId, ImageStatus, OwnerId};
use crate::owners::{LimitHit, Quota};

pub type Db = PgPool;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Whether a database error is worth retrying: the server unreachable, restarting, or the pool
/// exhausted, as opposed to a statement or configuration it refuses (fatal).
pub fn is_retryable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(io) => !crate::certificate_refused(io),
        sqlx::Error::Tls(tls) => !crate::certificate_refused(tls.as_ref()),
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
        // A connection closed before the server answered the TLS request: sqlx reads no byte and
        // reports the zero it started with as the server's answer.
        sqlx::Error::Protocol(message) => {
            message.starts_with("unexpected response from SSLRequest: 0x00")
        }
        // 57P: the server is shutting down or starting up; 08: the connection failed;
        // 40001/40P01: serialization failure or deadlock.
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            c.starts_with("57P") || c.starts_with("08") || c == "40001" || c == "40P01"
        }),
        _ => false,
    }
}

/// Connects and applies the migrations (idempotent; concurrent starts wait on a lock).
pub async fn connect(url: &str, pool_size: u32) -> Result<Db, sqlx::Error> {
    let pool = PgPoolOptions::new()
        .max_connections(pool_size)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await?;
    MIGRATOR.run(&pool).await?;
    Ok(pool)
}

/// A batch as the pages and the API show it.
#[derive(Debug, Clone, FromRow)]
pub struct Batch {
    pub id: BatchId,
    #[sqlx(try_from = "String")]
    pub status: BatchStatus,
    pub pipeline: serde_json::Value,
    pub total: i32,
    pub done_count: i32,
    pub failed_count: i32,
    pub error: Option<String>,
    pub archive_bytes: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// One image of a batch, as the pages and the API show it.
#[derive(Debug, Clone, FromRow)]
pub struct Image {
    pub id: ImageId,
    pub position: i32,
    pub name: String,
    #[sqlx(try_from = "String")]
    pub status: ImageStatus,
    pub error: Option<String>,
    pub output_format: Option<String>,
    pub processed_by: Option<String>,
    pub attempts: i32,
}

/// A file received with an upload, ready to be recorded.
#[derive(Debug, Clone)]
pub struct NewImage {
    pub id: ImageId,
    pub name: String,
    pub input_format: Option<String>,
    pub input_bytes: i64,
    /// `Some(reason)` when the file was refused at upload (empty, too large, not an image).
    pub rejected: Option<String>,
}

/// Opens a batch of `owner` in `uploading`. With `Some(pipeline)` its images are recorded one by
/// one as they are stored ([`add_images`]) and processed while the rest of the upload arrives;
/// with `None` they are recorded at the end ([`record_upload`]).
pub async fn create_batch(
    db: &Db,
    id: BatchId,
    owner: OwnerId,
    pipeline: Option<&serde_json::Value>,
) -> Result<(), sqlx::Error> {
    insert_batch(db, id, owner, pipeline).await
}

/// [`create_batch`] within the owner's `quota`: under its lock, the batch is made only when the
/// owner may make one more (batches per minute); otherwise nothing is written and the limit hit
/// is returned.
pub async fn create_batch_within(
    db: &Db,
    id: BatchId,
    quota: &Quota,
    pipeline: Option<&serde_json::Value>,
) -> Result<Result<(), LimitHit>, sqlx::Error> {
    let mut tx = db.begin().await?;
    if let Err(hit) = quota.new_batch(&mut tx).await? {
        tx.rollback().await?;
        return Ok(Err(hit));
    }
    insert_batch(&mut *tx, id, quota.owner, pipeline).await?;
    tx.commit().await?;
    Ok(Ok(()))
}

async fn insert_batch<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    id: BatchId,
    owner: OwnerId,
    pipeline: Option<&serde_json::Value>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO batches (id, status, owner_id, pipeline, queued_at)
         VALUES ($1, 'uploading', $2, $3, CASE WHEN $4 THEN now() END)",
    )
    .bind(id)
    .bind(owner)
    .bind(pipeline.unwrap_or(&serde_json::Value::Null))
    .bind(pipeline.is_some())
    .execute(executor)
    .await?;
    Ok(())
}

/// What files add to an owner's usage: the images to process (refused files are not) and the
/// bytes received (all of them).
fn adds<'a>(images: impl Iterator<Item = &'a NewImage>) -> (i64, i64) {
    images.fold((0, 0), |(n, bytes), i| {
        (n + i64::from(i.rejected.is_none()), bytes + i.input_bytes)
    })
}

/// Records stored (or refused) files of a batch still uploading, each at its position, and
/// counts them in the batch's total, so that the dispatcher can send them to workers at once.
/// The batch stays `uploading` (so it cannot complete early) until [`finish_upload`].
pub async fn add_images(
    db: &Db,
    batch: BatchId,
    images: &[(usize, NewImage)],
) -> Result<(), sqlx::Error> {
    add_images_within(db, batch, images, None)
        .await?
        .map_err(|hit| sqlx::Error::Protocol(format!("no quota, yet {hit:?}")))
}

/// [`add_images`], within the owner's `quota` when there is one: under its lock, the images are
/// recorded only when the owner may have them queued and may send their bytes; otherwise
/// nothing is written and the limit hit is returned.
pub async fn add_images_within(
    db: &Db,
    batch: BatchId,
    images: &[(usize, NewImage)],
    quota: Option<&Quota>,
) -> Result<Result<(), LimitHit>, sqlx::Error> {
    let mut tx = db.begin().await?;
    if let Some(quota) = quota {
        let (adding, bytes) = adds(images.iter().map(|(_, i)| i));
        if let Err(hit) = quota.adding(&mut tx, adding, bytes).await? {
            tx.rollback().await?;
            return Ok(Err(hit));
        }
    }
    insert_images(&mut tx, batch, images.iter().map(|(p, i)| (*p, i))).await?;
    let refused = images.iter().filter(|(_, i)| i.rejected.is_some()).count();
    let bytes: i64 = images.iter().map(|(_, i)| i.input_bytes).sum();
    let updated = sqlx::query(
        "UPDATE batches SET total = total + $2, failed_count = failed_count + $3,
                            bytes_in = bytes_in + $4, updated_at = now()
         WHERE id = $1 AND status = 'uploading'",
    )
    .bind(batch)
    .bind(images.len() as i32)
    .bind(refused as i32)
    .bind(bytes)
    .execute(&mut *tx)
    .await?;
    if updated.rows_affected() != 1 {
        // The reconciler gave up on this upload meanwhile.
        tx.rollback().await?;
        return Err(sqlx::Error::RowNotFound);
    }
    tx.commit().await?;
    Ok(Ok(()))
}

/// Ends the upload of a batch whose images were recorded one by one: `uploading -> queued`, or
/// `processing` when some are finished already, then on to `done` (or `failed`) at once when all
/// are ([`complete`]). The fan-in stays exact: [`finish_image`] completes only batches past
/// `uploading`, and this completes the batch when every image finished before the upload did.
/// `callback_url` (checked) is where the batch's status is POSTed when it ends
/// (`jobs::webhook`); `ttl` is how long its results are kept once it is done.
pub async fn finish_upload(
    db: &Db,
    batch: BatchId,
    total: usize,
    callback_url: Option<&str>,
    ttl: Duration,
) -> Result<Recorded, sqlx::Error> {
    let mut tx = db.begin().await?;
    let status: Option<String> = sqlx::query_scalar(
        "UPDATE batches SET updated_at = now(), callback_url = $3,
                status = CASE WHEN done_count + failed_count > 0 THEN 'processing'
                              ELSE 'queued' END
         WHERE id = $1 AND status = 'uploading' AND total = $2
         RETURNING status",
    )
    .bind(batch)
    .bind(total as i32)
    .bind(callback_url)
    .fetch_optional(&mut *tx)
    .await?;
    let mut status: BatchStatus = status
        .ok_or(sqlx::Error::RowNotFound)?
        .parse()
        .map_err(|e: String| sqlx::Error::Decode(e.into()))?;
    if let Some(ended) = complete(&mut *tx, batch, ttl).await? {
        status = ended;
    }
    tx.commit().await?;
    Ok(Recorded { status })
}

/// Ends a batch whose every image is done or failed (and which is no longer receiving files):
/// `done` when at least one image was processed, else `failed` with the reason; its results are
/// kept for `ttl`. The zip needs no building: the download assembles it from the results
/// (`archive`). Nothing changes for a batch that is not complete: `None`.
pub async fn complete<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
    batch: BatchId,
    ttl: Duration,
) -> Result<Option<BatchStatus>, sqlx::Error> {
    let status: Option<String> = sqlx::query_scalar(
        "UPDATE batches SET status = CASE WHEN done_count > 0 THEN 'done' ELSE 'failed' END,
                error = CASE WHEN done_count > 0 THEN error
                             ELSE 'none of the files could be processed' END,
                finished_at = now(), expires_at = now() + make_interval(secs => $2),
                updated_at = now()
         WHERE id = $1 AND status IN ('queued', 'processing', 'archiving')
           AND done_count + failed_count = total
         RETURNING status",
    )
    .bind(batch)
    .bind(ttl.as_secs_f64())
    .fetch_optional(executor)
    .await?;
    status
        .map(|s| s.parse().map_err(|e: String| sqlx::Error::Decode(e.into())))
        .transpose()
}

/// Inserts images in one statement: `pending`, or `failed` with their reason when refused.
async fn insert_images<'a>(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    batch: BatchId,
    images: impl Iterator<Item = (usize, &'a NewImage)>,
) -> Result<(), sqlx::Error> {
    let mut ids = Vec::new();
    let mut positions = Vec::new();
    let mut names = Vec::new();
    let mut formats = Vec::new();
    let mut sizes = Vec::new();
    let mut reasons = Vec::new();
    for (position, img) in images {
        ids.push(img.id);
        positions.push(position as i32);
        names.push(img.name.as_str());
        formats.push(img.input_format.as_deref());
        sizes.push(img.input_bytes);
        reasons.push(img.rejected.as_deref());
    }
    sqlx::query(
        "INSERT INTO images (id, batch_id, position, name, input_format, input_bytes, status,
                             error, finished_at)
         SELECT id, $1, position, name, format, size,
                CASE WHEN reason IS NULL THEN 'pending' ELSE 'failed' END,
                reason, CASE WHEN reason IS NOT NULL THEN now() END
         FROM UNNEST($2::uuid[], $3::int4[], $4::text[], $5::text[], $6::int8[], $7::text[])
              AS t(id, position, name, format, size, reason)",
    )
    .bind(batch)
    .bind(ids)
    .bind(positions)
    .bind(names)
    .bind(formats)
    .bind(sizes)
    .bind(reasons)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// What became of an upload once it was recorded.
#[derive(Debug)]
pub struct Recorded {
    /// `queued`, `processing` (some images are finished already), or `done` / `failed` when no
    /// image is left to process (all were processed during the upload, or every file was
    /// refused).
    pub status: BatchStatus,
}

/// Records every file of the upload and moves the batch `uploading -> queued`, in one
/// transaction, and on to `failed` at once when every file was refused ([`complete`]).
/// `callback_url` and `ttl` as for [`finish_upload`].
pub async fn record_upload(
    db: &Db,
    batch: BatchId,
    pipeline: &serde_json::Value,
    images: &[NewImage],
    callback_url: Option<&str>,
    ttl: Duration,
) -> Result<Recorded, sqlx::Error> {
    record_upload_within(db, batch, pipeline, images, callback_url, ttl, None)
        .await?
        .map_err(|hit| sqlx::Error::Protocol(format!("no quota, yet {hit:?}")))
}

/// [`record_upload`], within the owner's `quota` when there is one: under its lock, the files
/// are recorded only when the owner may have their images queued and may send their bytes;
/// otherwise nothing is written and the limit hit is returned.
pub async fn record_upload_within(
    db: &Db,
    batch: BatchId,
    pipeline: &serde_json::Value,
    images: &[NewImage],
    callback_url: Option<&str>,
    ttl: Duration,
    quota: Option<&Quota>,
) -> Result<Result<Recorded, LimitHit>, sqlx::Error> {
    let mut tx = db.begin().await?;
    if let Some(quota) = quota {
        let (adding, bytes) = adds(images.iter());
        if let Err(hit) = quota.adding(&mut tx, adding, bytes).await? {
            tx.rollback().await?;
            return Ok(Err(hit));
        }
    }
    let failed = images.iter().filter(|i| i.rejected.is_some()).count() as i32;
    insert_images(&mut tx, batch, images.iter().enumerate()).await?;
    let total = images.len() as i32;
    let bytes: i64 = images.iter().map(|i| i.input_bytes).sum();
    let updated = sqlx::query(
        "UPDATE batches SET status = 'queued', pipeline = $2, total = $3, failed_count = $4,
                            callback_url = $5, bytes_in = $6, queued_at = now(),
                            updated_at = now()
         WHERE id = $1 AND status = 'uploading'",
    )
    .bind(batch)
    .bind(pipeline)
    .bind(total)
    .bind(failed)
    .bind(callback_url)
    .bind(bytes)
    .execute(&mut *tx)
    .await?;
    if updated.rows_affected() != 1 {
        // The reconciler gave up on this upload meanwhile; keep nothing of it.
        tx.rollback().await?;
        return Err(sqlx::Error::RowNotFound);
    }
    let status = match complete(&mut *tx, batch, ttl).await? {
        Some(ended) => ended,
        None => BatchStatus::Queued,
    };
    tx.commit().await?;
    Ok(Ok(Recorded { status }))
}

/// Reports progress on uploads still being received, so the reconciler leaves them alone.
pub async fn touch_uploads(db: &Db, batches: &[BatchId]) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE batches SET updated_at = now() WHERE id = ANY($1) AND status = 'uploading'",
    )
    .bind(batches)
    .execute(db)
    .await?;
    Ok(())
}

/// First step in dropping a refused or broken upload: the batch ends `failed` and expired, so no
/// worker starts or counts another of its images, and should deleting its objects fail now, the
/// purge deletes them at its next run. Workers that were processing one of its images delete
/// what they stored ([`Finished::Abandoned`]).
pub async fn abandon_upload(db: &Db, batch: BatchId) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE batches SET status = 'failed', error = 'the upload was refused or broke off',
                finished_at = now(), expires_at = now(), updated_at = now()
         WHERE id = $1 AND status = 'uploading'",
    )
    .bind(batch)
    .execute(db)
    .await?;
    Ok(())
}

/// Deletes a batch that never finished uploading (the request was refused or broke off), once
/// its objects are gone.
pub async fn delete_batch(db: &Db, batch: BatchId) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM batches WHERE id = $1")
        .bind(batch)
        .execute(db)
        .await?;
    Ok(())
}

const BATCH_COLUMNS: &str =
    "id, status, pipeline, total, done_count, failed_count, error, archive_bytes,
                             created_at, finished_at, expires_at";

pub async fn get_batch(db: &Db, batch: BatchId) -> Result<Option<Batch>, sqlx::Error> {
    sqlx::query_as::<_, Batch>(sqlx::AssertSqlSafe(format!(
        "SELECT {BATCH_COLUMNS} FROM batches WHERE id = $1"
    )))
    .bind(batch)
    .fetch_optional(db)
    .await
}

/// The first `limit` images of a batch, in order.
pub async fn list_images(db: &Db, batch: BatchId, limit: i64) -> Result<Vec<Image>, sqlx::Error> {
    sqlx::query_as::<_, Image>(
        "SELECT id, position, name, status, error, output_format, processed_by, attempts
         FROM images WHERE batch_id = $1 ORDER BY position LIMIT $2",
    )
    .bind(batch)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// What a worker needs to process one image.
#[derive(Debug, Clone)]
pub struct ImageWork {
    pub batch: BatchId,
    pub image: ImageId,
    pub pipeline: serde_json::Value,
    /// Starts of this image so far, this one included.
    pub attempts: i32,
    /// Earlier starts that ended in a transient error (and so were not the image's fault).
    pub retries: i32,
}

impl ImageWork {
    /// Earlier starts that never came back: the worker crashed, was killed, or hung on it.
    pub fn lost_attempts(&self) -> i32 {
        self.attempts - 1 - self.retries
    }
}

/// Claims one attempt at a pending image for `worker`: counts the attempt (and notes when it
/// started, and by whom), moves its batch `queued -> processing`. `None` when there is nothing to do (already done or failed, or the batch is no
/// longer being processed).
pub async fn start_image(
    db: &Db,
    image: ImageId,
    worker: &str,
) -> Result<Option<ImageWork>, sqlx::Error> {
    // One statement (one round trip, atomic as a transaction would be).
    let row = sqlx::query(
        "WITH started AS (
             UPDATE images i SET attempts = i.attempts + 1, started_at = now(), started_by = $2
             FROM batches b
             WHERE i.id = $1 AND i.status = 'pending' AND b.id = i.batch_id
               AND b.status IN ('uploading', 'open', 'queued', 'processing')
             RETURNING i.batch_id, i.attempts, i.retries, b.pipeline
         ), moved AS (
             UPDATE batches SET status = 'processing', updated_at = now()
             WHERE id = (SELECT batch_id FROM started) AND status = 'queued'
         )
         SELECT batch_id, attempts, retries, pipeline FROM started",
    )
    .bind(image)
    .bind(worker)
    .fetch_optional(db)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    Ok(Some(ImageWork {
        batch: row.try_get("batch_id")?,
        image,
        pipeline: row.try_get("pipeline")?,
        attempts: row.try_get("attempts")?,
        retries: row.try_get("retries")?,
    }))
}

/// The result of an image, stored.
#[derive(Debug, Clone)]
pub struct Processed {
    pub output_format: String,
    pub output_bytes: i64,
    pub width: u32,
    pub height: u32,
}

/// How one image ended, as it is recorded.
#[derive(Debug, Clone)]
pub enum ImageOutcome {
    Done(Processed),
    Failed { reason: String },
}

/// What [`finish_image`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// The image was counted; its batch goes on.
    Counted,
    /// The image was counted and was its batch's last: the batch has ended (`done`, or `failed`
    /// when no image could be processed).
    Completed(BatchId, BatchStatus),
    /// The image was finished already (by an earlier attempt): nothing changed.
    Already,
    /// The image's batch is gone or ended without it (a refused upload): what this attempt
    /// stored should be deleted.
    Abandoned,
}

/// Moves an image `pending -> done|failed` (only if it was pending and its batch is still being
/// received or processed) and bumps its batch's counters in the same statement; the one that
/// counts a batch's last image (past its upload) ends the batch, `done` (or `failed` when no
/// image could be processed), its results kept for `ttl`.
pub async fn finish_image(
    db: &Db,
    image: ImageId,
    outcome: &ImageOutcome,
    worker: &str,
    ttl: Duration,
) -> Result<Finished, sqlx::Error> {
    let (status, error, ext, bytes, width, height) = match outcome {
        ImageOutcome::Done(p) => (
            ImageStatus::Done,
            None,
            Some(p.output_format.as_str()),
            Some(p.output_bytes),
            Some(p.width as i32),
            Some(p.height as i32),
        ),
        ImageOutcome::Failed { reason } => (
            ImageStatus::Failed,
            Some(reason.as_str()),
            None,
            None,
            None,
            None,
        ),
    };
    let (done, failed) = match status {
        ImageStatus::Done => (1, 0),
        _ => (0, 1),
    };
    // One statement (one round trip, atomic as a transaction would be): the image, then its
    // batch's counters; the update that counts the last image ends the batch (as `complete`
    // does; every expression here reads the row as it was before this update).
    let row = sqlx::query(
        "WITH finished AS (
             UPDATE images i SET status = $2, error = $3, output_format = $4, output_bytes = $5,
                                 width = $6, height = $7, processed_by = $8, finished_at = now()
             FROM batches b
             WHERE i.id = $1 AND i.status = 'pending' AND b.id = i.batch_id
               AND b.status IN ('uploading', 'open', 'queued', 'processing')
             RETURNING i.batch_id
         ), counted AS (
             SELECT id, done_count + failed_count + 1 = total
                        AND status IN ('queued', 'processing') AS last
             FROM batches WHERE id = (SELECT batch_id FROM finished)
         )
         UPDATE batches b SET done_count = done_count + $9, failed_count = failed_count + $10,
                updated_at = now(),
                status = CASE WHEN NOT c.last THEN status
                              WHEN done_count + $9 > 0 THEN 'done' ELSE 'failed' END,
                error = CASE WHEN c.last AND done_count + $9 = 0
                             THEN 'none of the files could be processed' ELSE error END,
                finished_at = CASE WHEN c.last THEN now() ELSE finished_at END,
                expires_at = CASE WHEN c.last THEN now() + make_interval(secs => $11)
                                  ELSE expires_at END
         FROM counted c
         WHERE b.id = c.id
         RETURNING b.id, c.last AS completed, b.status",
    )
    .bind(image)
    .bind(status.as_str())
    .bind(error)
    .bind(ext)
    .bind(bytes)
    .bind(width)
    .bind(height)
    .bind(worker)
    .bind(done)
    .bind(failed)
    .bind(ttl.as_secs_f64())
    .fetch_optional(db)
    .await?;
    let Some(row) = row else {
        // Gone with its batch, or its batch ended without it: abandoned. Otherwise finished
        // by another attempt.
        let live: Option<bool> = sqlx::query_scalar(
            "SELECT b.status NOT IN ('failed', 'cancelled', 'expired')
             FROM images i JOIN batches b ON b.id = i.batch_id WHERE i.id = $1",
        )
        .bind(image)
        .fetch_optional(db)
        .await?;
        return Ok(match live {
            Some(true) => Finished::Already,
            _ => Finished::Abandoned,
        });
    };
    Ok(if row.try_get("completed")? {
        let status: String = row.try_get("status")?;
        Finished::Completed(
            row.try_get("id")?,
            status
                .parse()
                .map_err(|e: String| sqlx::Error::Decode(e.into()))?,
        )
    } else {
        Finished::Counted
    })
}

/// An image that goes into the zip, or a failure that goes into its report.
#[derive(Debug, Clone, FromRow)]
pub struct ArchiveEntry {
    pub id: ImageId,
    pub name: String,
    #[sqlx(try_from = "String")]
    pub status: ImageStatus,
    pub error: Option<String>,
    pub output_format: Option<String>,
    pub output_bytes: Option<i64>,
}

/// Every image of a batch, in order, as its zip lists them.
pub async fn archive_entries(db: &Db, batch: BatchId) -> Result<Vec<ArchiveEntry>, sqlx::Error> {
    sqlx::query_as::<_, ArchiveEntry>(
        "SELECT id, name, status, error, output_format, output_bytes FROM images
         WHERE batch_id = $1 ORDER BY position",
    )
    .bind(batch)
    .fetch_all(db)
    .await
}

/// Records the length of a finished batch's zip (the statistics' zip bytes).
pub async fn record_zip_length(db: &Db, batch: BatchId, bytes: u64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE batches SET archive_bytes = $2 WHERE id = $1")
        .bind(batch)
        .bind(bytes as i64)
        .execute(db)
        .await?;
    Ok(())
}

/// Ends a batch as `failed` with a reason (nothing could be produced), starting the TTL so the
/// purge deletes what it left. Only from an unfinished state.
pub async fn mark_failed(
    db: &Db,
    batch: BatchId,
    reason: &str,
    ttl: Duration,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE batches SET status = 'failed', error = $2, finished_at = now(),
                expires_at = now() + make_interval(secs => $3), updated_at = now()
         WHERE id = $1 AND status IN ('uploading', 'open', 'queued', 'processing', 'archiving')",
    )
    .bind(batch)
    .bind(reason)
    .bind(ttl.as_secs_f64())
    .execute(db)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// The reason a cancelled batch shows.
pub const CANCELLED_REASON: &str = "cancelled by its owner";

/// What [`cancel_batch`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancel {
    /// The batch is cancelled now.
    Cancelled,
    /// It was cancelled already: nothing changed.
    Already,
    /// It had ended already (`done`, `failed` or `expired`): nothing changed.
    Finished(BatchStatus),
    /// No such batch (or one still being received in a single request, whose id nobody has).
    NotFound,
}

/// Cancels a batch in one transaction: the batch `cancelled` (with `cancelled_at` and the reason
/// [`CANCELLED_REASON`]; its purge due at once, `expires_at = now()`), and its pending images
/// `cancelled`, so that none of them starts and a result still being made is discarded
/// ([`start_image`] and [`finish_image`] only take images of batches being processed). The
/// status trigger logs `batch.cancelled` and makes the webhook's delivery. Idempotent.
pub async fn cancel_batch(db: &Db, batch: BatchId) -> Result<Cancel, sqlx::Error> {
    let mut tx = db.begin().await?;
    let status: Option<String> =
        sqlx::query_scalar("SELECT status FROM batches WHERE id = $1 FOR UPDATE")
            .bind(batch)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(status) = status else {
        return Ok(Cancel::NotFound);
    };
    let status: BatchStatus = status
        .parse()
        .map_err(|e: String| sqlx::Error::Decode(e.into()))?;
    match status {
        BatchStatus::Cancelled => return Ok(Cancel::Already),
        BatchStatus::Done | BatchStatus::Failed | BatchStatus::Expired => {
            return Ok(Cancel::Finished(status))
        }
        BatchStatus::Uploading => return Ok(Cancel::NotFound),
        BatchStatus::Open
        | BatchStatus::Queued
        | BatchStatus::Processing
        | BatchStatus::Archiving => {}
    }
    sqlx::query(
        "UPDATE images SET status = 'cancelled', finished_at = now()
         WHERE batch_id = $1 AND status = 'pending'",
    )
    .bind(batch)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE batches SET status = 'cancelled', cancelled_at = now(), error = $2,
                finished_at = now(), expires_at = now(), updated_at = now()
         WHERE id = $1",
    )
    .bind(batch)
    .bind(CANCELLED_REASON)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Cancel::Cancelled)
}

/// The cancelled batches whose files the purge has not deleted yet (`expired_at` NULL), oldest
/// first, at most `limit`.
pub async fn cancelled_to_purge(db: &Db, limit: i64) -> Result<Vec<BatchId>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM batches
         WHERE status = 'cancelled' AND expired_at IS NULL AND expires_at <= now()
         ORDER BY expires_at LIMIT $1",
    )
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Notes that a cancelled batch's files are deleted (its status stays `cancelled`).
pub async fn cancelled_purged(db: &Db, batch: BatchId) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE batches SET expired_at = now() WHERE id = $1 AND status = 'cancelled'")
        .bind(batch)
        .execute(db)
        .await?;
    Ok(())
}

/// A batch being purged: its row stays locked until [`finish_purge`], so that no other replica
/// purges it at the same time.
pub struct Purge {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    pub batch: BatchId,
}

/// Locks the finished batch whose TTL ran out first (skipping `skip` and any batch another
/// replica is purging) and counts one purge of it (`batches.purge_runs`).
pub async fn begin_purge(db: &Db, skip: &[BatchId]) -> Result<Option<Purge>, sqlx::Error> {
    let mut tx = db.begin().await?;
    let batch: Option<BatchId> = sqlx::query_scalar(
        "UPDATE batches SET purge_runs = purge_runs + 1
         WHERE id = (SELECT id FROM batches
                     WHERE status IN ('done', 'failed') AND expires_at <= now()
                       AND NOT (id = ANY($1))
                     ORDER BY expires_at LIMIT 1
                     FOR UPDATE SKIP LOCKED)
         RETURNING id",
    )
    .bind(skip)
    .fetch_optional(&mut *tx)
    .await?;
    Ok(batch.map(|batch| Purge { tx, batch }))
}

/// Ends a purge: `done|failed -> expired` once its objects are deleted (`deleted`), or only
/// keeps the count when they could not all be deleted (the next purge tries again).
pub async fn finish_purge(purge: Purge, deleted: bool) -> Result<(), sqlx::Error> {
    let mut tx = purge.tx;
    if deleted {
        sqlx::query(
            "UPDATE batches SET status = 'expired', expired_at = now(), updated_at = now()
             WHERE id = $1",
        )
        .bind(purge.batch)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// Claims one tick of a cron job for this replica: true for exactly one caller per tick.
pub async fn claim_tick(
    db: &Db,
    job: &str,
    fire_at: DateTime<Utc>,
    by: &str,
) -> Result<bool, sqlx::Error> {
    let claimed = sqlx::query(
        "INSERT INTO cron_ticks (job, fire_at, claimed_by) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING RETURNING 1",
    )
    .bind(job)
    .bind(fire_at)
    .bind(by)
    .fetch_optional(db)
    .await?;
    Ok(claimed.is_some())
}

/// Forgets claimed ticks older than `age` (they only guard against double runs of recent ticks).
pub async fn forget_ticks(db: &Db, age: Duration) -> Result<u64, sqlx::Error> {
    let r = sqlx::query("DELETE FROM cron_ticks WHERE fire_at < now() - make_interval(secs => $1)")
        .bind(age.as_secs_f64())
        .execute(db)
        .await?;
    Ok(r.rows_affected())
}

/// Pending images whose job went to Redis longer than `stale` ago (Redis lost it, or it waits
/// behind a crash): hands them back to the dispatcher, which enqueues them again. Returns how
/// many.
pub async fn release_stale_images(db: &Db, stale: Duration) -> Result<u64, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE images SET enqueued_at = NULL
         WHERE status = 'pending' AND enqueued_at < now() - make_interval(secs => $1)",
    )
    .bind(stale.as_secs_f64())
    .execute(db)
    .await?;
    Ok(r.rows_affected())
}

/// Batches whose every image is done or failed but which did not end (the statement that
/// counted the last image ends its batch, so this finds only batches left `archiving` by an
/// earlier version, which built the zip in a job): ends them as [`complete`] does. Returns how
/// many.
pub async fn complete_stuck(db: &Db, ttl: Duration) -> Result<u64, sqlx::Error> {
    let ids: Vec<BatchId> = sqlx::query_scalar(
        "SELECT id FROM batches
         WHERE status IN ('queued', 'processing', 'archiving') AND done_count + failed_count = total",
    )
    .fetch_all(db)
    .await?;
    let mut n = 0;
    for id in ids {
        if complete(db, id, ttl).await?.is_some() {
            n += 1;
        }
    }
    Ok(n)
}

/// Uploads that broke off (`uploading` with no progress reported for `stale`: the `web` that
/// received them died): marks them failed and returns them so their objects can be deleted.
pub async fn fail_stale_uploads(
    db: &Db,
    stale: Duration,
    ttl: Duration,
) -> Result<Vec<BatchId>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE batches SET status = 'failed', error = 'the upload was interrupted',
                finished_at = now(), expires_at = now() + make_interval(secs => $2),
                updated_at = now()
         WHERE status = 'uploading' AND updated_at < now() - make_interval(secs => $1)
         RETURNING id",
    )
    .bind(stale.as_secs_f64())
    .bind(ttl.as_secs_f64())
    .fetch_all(db)
    .await
}

/// One entry of a batch's event log (`batch_events`, written mostly by triggers: see the
/// migration `20261130000001`).
#[derive(Debug, Clone, FromRow, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Event {
    pub at: DateTime<Utc>,
    /// `batch.uploaded`, `image.started`, `image.done`, `image.failed`, `image.retried`,
    /// `batch.archived`, `batch.failed`, `batch.downloaded`, `batch.expired`,
    /// `webhook.delivered`, `webhook.failed`.
    pub kind: String,
    /// The image's name, for image events.
    pub image: Option<String>,
    pub worker: Option<String>,
    pub attempt: Option<i32>,
    /// A reason, a size, an HTTP status.
    pub detail: Option<String>,
}

/// The event log of a batch, oldest first, at most `limit` entries.
pub async fn batch_events(db: &Db, batch: BatchId, limit: i64) -> Result<Vec<Event>, sqlx::Error> {
    sqlx::query_as::<_, Event>(
        "SELECT e.at, e.kind, i.name AS image, e.worker, e.attempt, e.detail
         FROM batch_events e LEFT JOIN images i ON i.id = e.image_id
         WHERE e.batch_id = $1 ORDER BY e.id LIMIT $2",
    )
    .bind(batch)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Adds an event the triggers do not write (a download, a webhook delivery).
pub async fn record_event(
    db: &Db,
    batch: BatchId,
    kind: &str,
    detail: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO batch_events (batch_id, kind, detail) VALUES ($1, $2, $3)")
        .bind(batch)
        .bind(kind)
        .bind(detail)
        .execute(db)
        .await?;
    Ok(())
}

/// A worker is live while it reported within this many seconds (it reports every
/// [`HEARTBEAT_SECONDS`]).
pub const LIVE_WORKER_SECONDS: i64 = 30;
/// How often a worker reports to the `workers` table.
pub const HEARTBEAT_SECONDS: u64 = 5;

/// The cluster's state, as `web`'s metrics and the monitor show it.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    pub batches: Vec<(BatchStatus, i64)>,
    /// Images not finished yet, in batches still being received or processed.
    pub images_pending: i64,
    pub workers_live: i64,
    pub webhooks_pending: i64,
}

/// Reads [`Cluster`] in one statement.
pub async fn cluster(db: &Db) -> Result<Cluster, sqlx::Error> {
    let row = sqlx::query(
        "SELECT
           (SELECT array_agg(status) FROM (SELECT status FROM batches GROUP BY status
                                           ORDER BY status) s) AS statuses,
           (SELECT array_agg(n) FROM (SELECT count(*) AS n FROM batches GROUP BY status
                                      ORDER BY status) s) AS counts,
           (SELECT count(*) FROM images i JOIN batches b ON b.id = i.batch_id
            WHERE i.status = 'pending'
              AND b.status IN ('uploading', 'open', 'queued', 'processing')) AS images_pending,
           (SELECT count(*) FROM workers WHERE stopped_at IS NULL
              AND last_seen > now() - make_interval(secs => $1)) AS workers_live,
           (SELECT count(*) FROM webhook_deliveries WHERE status = 'pending') AS webhooks_pending",
    )
    .bind(LIVE_WORKER_SECONDS as f64)
    .fetch_one(db)
    .await?;
    let statuses: Vec<String> = row.try_get::<Option<_>, _>("statuses")?.unwrap_or_default();
    let counts: Vec<i64> = row.try_get::<Option<_>, _>("counts")?.unwrap_or_default();
    Ok(Cluster {
        batches: statuses
            .into_iter()
            .zip(counts)
            .filter_map(|(s, n)| s.parse().ok().map(|s| (s, n)))
            .collect(),
        images_pending: row.try_get("images_pending")?,
        workers_live: row.try_get("workers_live")?,
        webhooks_pending: row.try_get("webhooks_pending")?,
    })
}

/// What a worker reports about itself every [`HEARTBEAT_SECONDS`].
#[derive(Debug, Clone)]
pub struct WorkerReport {
    pub name: String,
    pub host: String,
    pub pid: i32,
    pub concurrency: i32,
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub in_flight: i32,
    pub images_done: i64,
    pub images_failed: i64,
}

/// Writes a worker's report (`last_seen` = now); a worker that starts again under the same name
/// starts its row afresh.
pub async fn worker_seen(db: &Db, report: &WorkerReport) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO workers (name, host, pid, concurrency, version, started_at, last_seen,
                              stopped_at, in_flight, images_done, images_failed)
         VALUES ($1, $2, $3, $4, $5, $6, now(), NULL, $7, $8, $9)
         ON CONFLICT (name) DO UPDATE SET host = $2, pid = $3, concurrency = $4, version = $5,
             started_at = $6, last_seen = now(), stopped_at = NULL, in_flight = $7,
             images_done = $8, images_failed = $9",
    )
    .bind(&report.name)
    .bind(&report.host)
    .bind(report.pid)
    .bind(report.concurrency)
    .bind(&report.version)
    .bind(report.started_at)
    .bind(report.in_flight)
    .bind(report.images_done)
    .bind(report.images_failed)
    .execute(db)
    .await?;
    Ok(())
}

/// Marks a worker stopped (it stopped cleanly).
pub async fn worker_stopped(db: &Db, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE workers SET stopped_at = now(), in_flight = 0 WHERE name = $1")
        .bind(name)
        .execute(db)
        .await?;
    Ok(())
}

/// A worker as the monitor shows it.
#[derive(Debug, Clone, FromRow, serde::Serialize)]
pub struct WorkerRow {
    pub name: String,
    pub host: String,
    pub concurrency: i32,
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub in_flight: i32,
    pub images_done: i64,
    pub images_failed: i64,
}

/// The live workers, by name.
pub async fn live_workers(db: &Db) -> Result<Vec<WorkerRow>, sqlx::Error> {
    sqlx::query_as::<_, WorkerRow>(
        "SELECT name, host, concurrency, version, started_at, last_seen, in_flight, images_done,
                images_failed
         FROM workers WHERE stopped_at IS NULL AND last_seen > now() - make_interval(secs => $1)
         ORDER BY name",
    )
    .bind(LIVE_WORKER_SECONDS as f64)
    .fetch_all(db)
    .await
}

/// Cheap liveness check for `/readyz`.
pub async fn ping(db: &Db) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(db).await?;
    Ok(())
}

/// Remembers the last problem of a pending image (the reason shown if it gives up). A
/// `transient` problem (storage or database unreachable) counts the attempt as a retry, which is
/// not held against the image; any other counts as a lost attempt.
pub async fn note_image_error(
    db: &Db,
    image: ImageId,
    error: &str,
    transient: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE images SET error = $2, retries = retries + CASE WHEN $3 THEN 1 ELSE 0 END
         WHERE id = $1 AND status = 'pending'",
    )
    .bind(image)
    .bind(error)
    .bind(transient)
    .execute(db)
    .await?;
    Ok(())
}

/// Hands images this worker held back to the dispatcher when it stops before finishing them;
/// their attempts count as retries, not against the images.
pub async fn hand_back(db: &Db, images: &[ImageId]) -> Result<u64, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE images SET enqueued_at = NULL, retries = retries + 1,
                           error = 'its worker stopped before finishing it'
         WHERE id = ANY($1) AND status = 'pending'",
    )
    .bind(images)
    .execute(db)
    .await?;
    Ok(r.rows_affected())
}

/// The last problem noted for a pending image.
pub async fn image_error(db: &Db, image: ImageId) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT error FROM images WHERE id = $1")
        .bind(image)
        .fetch_optional(db)
        .await
        .map(Option::flatten)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_errors_are_the_passing_ones() {
        assert!(is_retryable(&sqlx::Error::PoolTimedOut));
        assert!(is_retryable(&sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused
        ))));
        assert!(!is_retryable(&sqlx::Error::RowNotFound));
        assert!(!is_retryable(&sqlx::Error::ColumnNotFound("status".into())));
        // A server that closes the connection at once (a proxy cut, Postgres going down).
        // As sqlx words it, with where it was raised.
        assert!(is_retryable(&sqlx::Error::Protocol(
            "unexpected response from SSLRequest: 0x00 (sqlx_postgres::connection::tls:95)".into()
        )));
        assert!(!is_retryable(&sqlx::Error::Protocol(
            "unknown message type: 'x'".into()
        )));
    }
}
