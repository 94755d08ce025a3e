//! The batch as the API and the waiting page show it ([`jobs::view`]), loaded from an id in a
//! path: 404 when unknown, 410 once expired.

pub use jobs::view::{BatchView, ImageView};

use crate::error::AppError;
use crate::state::AppState;

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
    let id: jobs::BatchId = id.parse().map_err(|_| AppError::NotFound)?;
    let view = jobs::view::load(&state.db, id, with_images)
        .await?
        .ok_or(AppError::NotFound)?;
    if view.status == jobs::BatchStatus::Expired {
        return Err(AppError::Gone);
    }
    Ok(view)
}
