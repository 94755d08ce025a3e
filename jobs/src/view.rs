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
    pub images: Vec<ImageView>,
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
        db::list_images(db, id).await?
    } else {
        Vec::new()
    };
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
        download_url: (batch.status == BatchStatus::Done)
            .then(|| format!("/batches/{id}/download")),
        expires_at: batch.expires_at,
        created_at: batch.created_at,
        finished_at: batch.finished_at,
        error: batch.error,
        steps,
    }))
}
