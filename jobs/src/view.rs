//! A batch as the outside world sees it: the JSON of `GET /api/batches/{id}`, the waiting page,
//! the live stream and the webhook body are all this one shape.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::db::{self, Db};
use crate::{BatchId, BatchStatus, ImageStatus};

/// What the API, the waiting page and the webhooks show of a batch.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BatchView {
    pub id: BatchId,
    pub status: BatchStatus,
    pub total: i32,
    pub done: i32,
    pub failed: i32,
    /// The images, in order: the first [`IMAGES_IN_VIEW`] (1,000) of them; the rest are paged
    /// through `images_url`.
    pub images: Vec<ImageView>,
    /// Where the batch's images are listed page by page (`GET /api/batches/{id}/images`); the
    /// next page after `images` when they do not hold them all.
    pub images_url: String,
    /// Where the zip is downloaded (relative to the site), once the batch is done.
    pub download_url: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    /// The pipeline in words ("Watermark (tiled, 50 % opacity), then Resize…").
    pub steps: String,
}

/// One image of a batch: its name as uploaded, its status, and why it failed.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ImageView {
    pub name: String,
    pub status: ImageStatus,
    pub error: Option<String>,
}

/// Most images a batch's view lists (the rest are paged: `GET /api/batches/{id}/images`), so
/// that the status of a batch of 10,000 stays small.
pub const IMAGES_IN_VIEW: i64 = 1000;

/// Loads a batch, with the list of its images or without it (`images` left empty). `None` when
/// there is no such batch; an expired batch is returned with its status (callers say 410).
pub async fn load(
    db: &Db,
    id: BatchId,
    with_images: bool,
) -> Result<Option<BatchView>, sqlx::Error> {
    let Some(batch) = db::get_batch(db, id).await? else {
        return Ok(None);
    };
    let images = if with_images && batch.status != BatchStatus::Expired {
        db::list_images(db, id, IMAGES_IN_VIEW).await?
    } else {
        Vec::new()
    };
    let images_listed = images.len();
    let last_position = images.last().map(|i| i.position);
    let steps = crate::tasks::Pipeline::parse(&batch.pipeline)
        .map(|p| p.describe())
        .unwrap_or_default();
    Ok(Some(BatchView {
        id,
        status: batch.status,
        total: batch.total,
        done: batch.done_count,
        failed: batch.failed_count,
        images: images
            .into_iter()
            .map(|i| {
                let status = i.status;
                ImageView {
                    name: i.name,
                    status,
                    // A pending image's error is a transient problem being retried, not news.
                    error: (status == ImageStatus::Failed).then_some(i.error).flatten(),
                }
            })
            .collect(),
        images_url: match last_position {
            Some(last) if images_listed < batch.total as usize => {
                format!("/api/batches/{id}/images?after={last}")
            }
            _ => format!("/api/batches/{id}/images"),
        },
        download_url: (batch.status == BatchStatus::Done)
            .then(|| format!("/batches/{id}/download")),
        expires_at: batch.expires_at,
        created_at: batch.created_at,
        finished_at: batch.finished_at,
        error: batch.error,
        steps,
    }))
}
