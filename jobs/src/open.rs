//! Open batches: a batch created empty (`open`), which takes its files over many requests, each
//! file recorded and dispatched as soon as it is stored, until it is closed (by its client, or by
//! the reconciler once it has been idle for `OPEN_BATCH_IDLE_SECONDS`). A client names each file
//! (`client_id`), so that sending a file again after a dropped connection finds the image made
//! the first time instead of adding another; the request that creates a batch may carry an
//! `Idempotency-Key`, which does the same for the batch.

use std::time::Duration;

use sqlx::{FromRow, Row};

use crate::db::{self, Db, NewImage};
use crate::domain::{BatchId, BatchStatus, ImageId, ImageStatus, OwnerId};
use crate::owners::{self, LimitHit, Limits};

/// What creating an open batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// A new batch.
    Created(BatchId),
    /// The batch an earlier request with the same `Idempotency-Key` made (and its status now).
    Replayed(BatchId, BatchStatus),
}

/// Why a batch could not be created or a file not added.
#[derive(Debug)]
pub enum Refused {
    /// An owner's limit.
    Limit(LimitHit),
    /// The batch is not open any more (closed, cancelled, finished): its status.
    NotOpen(BatchStatus),
    /// The batch holds `MAX_FILES_PER_BATCH` files already.
    TooManyFiles(u32),
    /// The file would take the batch beyond `MAX_BATCH_BYTES`.
    TooManyBytes(u64),
    /// No such batch.
    NoBatch,
    Db(sqlx::Error),
}

impl From<sqlx::Error> for Refused {
    fn from(e: sqlx::Error) -> Self {
        Self::Db(e)
    }
}

fn status(s: String) -> Result<BatchStatus, sqlx::Error> {
    s.parse().map_err(|e: String| sqlx::Error::Decode(e.into()))
}

/// Creates an open batch of `owner` with its (validated) pipeline, counting it toward the owner's
/// batches per minute under the owner's lock. With an `idempotency_key` that this owner used
/// already, nothing is created: the earlier batch is returned (whatever its state now).
pub async fn create(
    db: &Db,
    owner: OwnerId,
    limits: &Limits,
    pipeline: &serde_json::Value,
    callback_url: Option<&str>,
    idempotency_key: Option<&str>,
) -> Result<Opened, Refused> {
    let mut tx = db.begin().await?;
    owners::lock(&mut tx, owner).await?;
    if let Some(key) = idempotency_key {
        let earlier: Option<(BatchId, String)> = sqlx::query_as(
            "SELECT id, status FROM batches WHERE owner_id = $1 AND idempotency_key = $2",
        )
        .bind(owner)
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((id, s)) = earlier {
            tx.commit().await?;
            return Ok(Opened::Replayed(id, status(s)?));
        }
    }
    let usage = owners::usage(&mut *tx, owner).await?;
    limits.check_new_batch(&usage).map_err(Refused::Limit)?;
    let id = BatchId::new();
    sqlx::query(
        "INSERT INTO batches (id, status, owner_id, pipeline, callback_url, idempotency_key,
                              queued_at)
         VALUES ($1, 'open', $2, $3, $4, $5, now())",
    )
    .bind(id)
    .bind(owner)
    .bind(pipeline)
    .bind(callback_url)
    .bind(idempotency_key)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Opened::Created(id))
}

/// An open batch (or one that was), as the requests that add to it need it.
#[derive(Debug, Clone)]
pub struct Target {
    pub id: BatchId,
    pub status: BatchStatus,
    pub owner: Option<OwnerId>,
    /// Whether the owner is an API key (only that key, or an admin, may add to the batch); else
    /// the batch's id is the capability.
    pub owned_by_key: bool,
    pub total: i32,
    pub bytes_in: i64,
}

/// The batch `id` with its owner, or `None`.
pub async fn target(db: &Db, id: BatchId) -> Result<Option<Target>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT b.status, b.owner_id, coalesce(o.kind = 'key', false) AS by_key, b.total,
                b.bytes_in
         FROM batches b LEFT JOIN owners o ON o.id = b.owner_id WHERE b.id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(Target {
        id,
        status: status(row.try_get("status")?)?,
        owner: row.try_get("owner_id")?,
        owned_by_key: row.try_get("by_key")?,
        total: row.try_get("total")?,
        bytes_in: row.try_get("bytes_in")?,
    }))
}

/// An image of a batch as its client named it.
#[derive(Debug, Clone, FromRow)]
pub struct ClientImage {
    pub id: ImageId,
    pub position: i32,
    pub name: String,
    #[sqlx(try_from = "String")]
    pub status: ImageStatus,
    pub error: Option<String>,
}

/// The image of `batch` that its client named `client_id`, if it was added already.
pub async fn find_image(
    db: &Db,
    batch: BatchId,
    client_id: &str,
) -> Result<Option<ClientImage>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, position, name, status, error FROM images
         WHERE batch_id = $1 AND client_id = $2",
    )
    .bind(batch)
    .bind(client_id)
    .fetch_optional(db)
    .await
}

/// What adding a file did.
#[derive(Debug, Clone)]
pub enum Added {
    /// Recorded now, at this position (pending, or failed when the file was refused).
    New(ClientImage),
    /// A file with this client id was added before: that image (what was stored this time
    /// should be deleted).
    Again(ClientImage),
}

/// The batch limits of an open batch.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_files: u32,
    pub max_bytes: u64,
}

/// Records a stored (or refused) file of an open batch as its next image, in one transaction
/// under the owner's lock (then the batch's): the batch must still be open and within its
/// limits, and the owner within its queued images and bytes per day. Nothing is recorded when
/// something refuses it (the caller deletes what it stored).
pub async fn add_image(
    db: &Db,
    batch: BatchId,
    owner: Option<(OwnerId, Limits)>,
    limits: BatchLimits,
    client_id: &str,
    image: &NewImage,
) -> Result<Added, Refused> {
    let mut tx = db.begin().await?;
    let usage = match owner {
        Some((owner, _)) => {
            owners::lock(&mut tx, owner).await?;
            Some(owners::usage(&mut *tx, owner).await?)
        }
        None => None,
    };
    let row = sqlx::query("SELECT status, total, bytes_in FROM batches WHERE id = $1 FOR UPDATE")
        .bind(batch)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(Refused::NoBatch)?;
    let batch_status = status(row.try_get("status")?)?;
    let total: i32 = row.try_get("total")?;
    let bytes_in: i64 = row.try_get("bytes_in")?;
    if let Some(earlier) = sqlx::query_as::<_, ClientImage>(
        "SELECT id, position, name, status, error FROM images
         WHERE batch_id = $1 AND client_id = $2",
    )
    .bind(batch)
    .bind(client_id)
    .fetch_optional(&mut *tx)
    .await?
    {
        tx.commit().await?;
        return Ok(Added::Again(earlier));
    }
    if batch_status != BatchStatus::Open {
        return Err(Refused::NotOpen(batch_status));
    }
    if total as u64 >= limits.max_files as u64 {
        return Err(Refused::TooManyFiles(limits.max_files));
    }
    if bytes_in as u64 + image.input_bytes as u64 > limits.max_bytes {
        return Err(Refused::TooManyBytes(limits.max_bytes));
    }
    if let (Some((_, owner_limits)), Some(usage)) = (owner, usage) {
        let adding = i64::from(image.rejected.is_none());
        owner_limits
            .check_images(&usage, adding)
            .and_then(|()| owner_limits.check_bytes(&usage, image.input_bytes))
            .map_err(Refused::Limit)?;
    }
    let position = total;
    let row = sqlx::query(
        "INSERT INTO images (id, batch_id, position, name, input_format, input_bytes, status,
                             error, finished_at, client_id)
         VALUES ($1, $2, $3, $4, $5, $6,
                 CASE WHEN $7::text IS NULL THEN 'pending' ELSE 'failed' END,
                 $7, CASE WHEN $7::text IS NOT NULL THEN now() END, $8)
         RETURNING status",
    )
    .bind(image.id)
    .bind(batch)
    .bind(position)
    .bind(&image.name)
    .bind(image.input_format.as_deref())
    .bind(image.input_bytes)
    .bind(image.rejected.as_deref())
    .bind(client_id)
    .fetch_one(&mut *tx)
    .await?;
    let image_status: String = row.try_get("status")?;
    sqlx::query(
        "UPDATE batches SET total = total + 1,
                failed_count = failed_count + CASE WHEN $2 THEN 1 ELSE 0 END,
                bytes_in = bytes_in + $3, updated_at = now()
         WHERE id = $1",
    )
    .bind(batch)
    .bind(image.rejected.is_some())
    .bind(image.input_bytes)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Added::New(ClientImage {
        id: image.id,
        position,
        name: image.name.clone(),
        status: image_status
            .parse()
            .map_err(|e: String| sqlx::Error::Decode(e.into()))?,
        error: image.rejected.clone(),
    }))
}

/// Closes an open batch: it takes no more files, and moves on to `queued` (`processing` when
/// some images are finished already), or ends at once (`done`, or `failed`) when every image is
/// finished ([`db::complete`]); an empty batch fails with `empty_reason`. A batch that is not
/// open is left as it is. Returns the batch's status after, `None` when there is no such batch.
pub async fn close(
    db: &Db,
    batch: BatchId,
    ttl: Duration,
    empty_reason: &str,
) -> Result<Option<BatchStatus>, sqlx::Error> {
    let mut tx = db.begin().await?;
    let row: Option<(String, i32)> =
        sqlx::query_as("SELECT status, total FROM batches WHERE id = $1 FOR UPDATE")
            .bind(batch)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((now, total)) = row else {
        return Ok(None);
    };
    let now = status(now)?;
    if now != BatchStatus::Open {
        tx.commit().await?;
        return Ok(Some(now));
    }
    let moved: String = if total == 0 {
        sqlx::query_scalar(
            "UPDATE batches SET status = 'failed', error = $2, finished_at = now(),
                    expires_at = now() + make_interval(secs => $3), updated_at = now()
             WHERE id = $1 RETURNING status",
        )
        .bind(batch)
        .bind(empty_reason)
        .bind(ttl.as_secs_f64())
        .fetch_one(&mut *tx)
        .await?
    } else {
        sqlx::query_scalar(
            "UPDATE batches SET updated_at = now(),
                    status = CASE WHEN done_count + failed_count > 0 THEN 'processing'
                                  ELSE 'queued' END
             WHERE id = $1 RETURNING status",
        )
        .bind(batch)
        .fetch_one(&mut *tx)
        .await?
    };
    let mut after = status(moved)?;
    if let Some(ended) = db::complete(&mut *tx, batch, ttl).await? {
        after = ended;
    }
    tx.commit().await?;
    Ok(Some(after))
}

/// What [`close_idle`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IdleReport {
    /// Closed with their files.
    pub closed: usize,
    /// Failed: no file was ever added.
    pub failed_empty: usize,
}

/// Closes the open batches that had no activity (no file added, no image finished) for `idle`:
/// those with files move on as [`close`] does; empty ones fail with a reason.
pub async fn close_idle(db: &Db, idle: Duration, ttl: Duration) -> Result<IdleReport, sqlx::Error> {
    let ids: Vec<(BatchId, i32)> = sqlx::query_as(
        "SELECT id, total FROM batches
         WHERE status = 'open' AND updated_at < now() - make_interval(secs => $1)",
    )
    .bind(idle.as_secs_f64())
    .fetch_all(db)
    .await?;
    let mut report = IdleReport::default();
    let reason = format!(
        "no file was added within {} of opening the batch (OPEN_BATCH_IDLE_SECONDS)",
        crate::config::human_duration(idle.as_secs())
    );
    for (id, total) in ids {
        if close(db, id, ttl, &reason).await?.is_some() {
            if total == 0 {
                report.failed_empty += 1;
            } else {
                report.closed += 1;
            }
        }
    }
    Ok(report)
}

/// One image of a page of a batch's images.
#[derive(Debug, Clone, FromRow, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PagedImage {
    /// Its place in the batch (from 0): pass the last one as `after` for the next page.
    pub position: i32,
    pub name: String,
    #[sqlx(try_from = "String")]
    pub status: ImageStatus,
    pub error: Option<String>,
    /// The client's id of the file, for files added to an open batch.
    pub file_id: Option<String>,
}

/// The images of `batch` after position `after` (all when `None`), at most `limit`, in order.
pub async fn images_page(
    db: &Db,
    batch: BatchId,
    after: Option<i32>,
    limit: i64,
) -> Result<Vec<PagedImage>, sqlx::Error> {
    sqlx::query_as(
        "SELECT position, name, status,
                CASE WHEN status = 'failed' THEN error END AS error, client_id AS file_id
         FROM images WHERE batch_id = $1 AND position > $2 ORDER BY position LIMIT $3",
    )
    .bind(batch)
    .bind(after.unwrap_or(-1))
    .bind(limit)
    .fetch_all(db)
    .await
}

/// The limits `owner` was given (its `OWNER_MAX_*` overrides), or `None` when there is no such
/// owner.
pub async fn owner_limits(
    db: &Db,
    owner: OwnerId,
) -> Result<Option<owners::OwnerLimits>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT max_queued_images, max_batches_per_minute, max_bytes_per_day
         FROM owners WHERE id = $1",
    )
    .bind(owner)
    .fetch_optional(db)
    .await?;
    row.map(|row| {
        Ok(owners::OwnerLimits {
            max_queued_images: row.try_get("max_queued_images")?,
            max_batches_per_minute: row.try_get("max_batches_per_minute")?,
            max_bytes_per_day: row.try_get("max_bytes_per_day")?,
        })
    })
    .transpose()
}
