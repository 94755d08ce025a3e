//! The batch as the API and the waiting page show it.

use chrono::{DateTime, Utc};
use serde::Serialize;

use jobs::{BatchId, BatchStatus, ImageStatus};

use crate::error::AppError;
use crate::state::AppState;

/// What the API and the waiting page show of a batch.
#[derive(Debug, Serialize)]
pub struct BatchView {
    pub id: BatchId,
    pub status: BatchStatus,
    pub total: i32,
    pub done: i32,
    pub failed: i32,
    pub images: Vec<ImageView>,
    pub download_url: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    pub steps: String,
}

#[derive(Debug, Serialize)]
pub struct ImageView {
    pub name: String,
    pub status: ImageStatus,
    pub error: Option<String>,
}

/// Loads a batch for display: 404 when unknown, 410 once expired.
pub async fn load_view(state: &AppState, id: &str) -> Result<BatchView, AppError> {
    load_view_with(state, id, true).await
}

/// [`load_view`], with the list of images or without it (`images` left empty).
pub async fn load_view_with(
    state: &AppState,
    id: &str,
    with_images: bool,
) -> Result<BatchView, AppError> {
    let id: BatchId = id.parse().map_err(|_| AppError::NotFound)?;
    let batch = jobs::db::get_batch(&state.db, id)
        .await?
        .ok_or(AppError::NotFound)?;
    if batch.status == BatchStatus::Expired {
        return Err(AppError::Gone);
    }
    let images = if with_images {
        jobs::db::list_images(&state.db, id).await?
    } else {
        Vec::new()
    };
    let steps = jobs::tasks::Pipeline::parse(&batch.pipeline)
        .map(|p| p.describe())
        .unwrap_or_default();
    Ok(BatchView {
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
    })
}
