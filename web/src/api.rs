//! The JSON API: submit a batch, follow it, list the tasks; and the health checks.

use axum::extract::{Multipart, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use jobs::{BatchId, BatchStatus};

use crate::app::AppState;
use crate::error::AppError;
use crate::upload;

/// An [`AppError`] answered as JSON: `{"error": message}`.
pub struct ApiError(pub AppError);

impl<E: Into<AppError>> From<E> for ApiError {
    fn from(e: E) -> Self {
        Self(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.0.status();
        let mut body = json!({ "error": self.0.user_message() });
        if matches!(self.0, AppError::Gone) {
            body["status"] = json!("expired");
        }
        let mut response = (status, Json(body)).into_response();
        if let Some(seconds) = self.0.retry_after() {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

/// `POST /api/batches`: multipart with `files` (one or more) and an optional `pipeline` (JSON).
pub async fn submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    multipart: Multipart,
) -> Result<Response, ApiError> {
    let received = upload::receive(&state, &headers, multipart).await?;
    let id = received.batch;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "id": id,
            "status": received.status,
            "status_url": format!("/api/batches/{id}"),
            "page_url": format!("/batches/{id}"),
        })),
    )
        .into_response())
}

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
    pub status: &'static str,
    pub error: Option<String>,
}

/// Loads a batch for display: 404 when unknown, 410 once expired.
pub async fn load_view(state: &AppState, id: &str) -> Result<BatchView, AppError> {
    load_view_with(state, id, true).await
}

/// [`load_view`], with the list of images or without it (`images` left empty).
async fn load_view_with(
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
                    status: status.as_str(),
                    // A pending image's error is a transient problem being retried, not news.
                    error: (status == jobs::ImageStatus::Failed)
                        .then_some(i.error)
                        .flatten(),
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

/// The query of `GET /api/batches/{id}`.
#[derive(Debug, Deserialize)]
pub struct StatusQuery {
    /// `false` leaves out the list of images (for clients that poll a large batch).
    #[serde(default = "yes")]
    images: bool,
}

fn yes() -> bool {
    true
}

/// `GET /api/batches/{id}[?images=false]`.
pub async fn status(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<StatusQuery>,
) -> Result<Json<BatchView>, ApiError> {
    Ok(Json(load_view_with(&state, &id, query.images).await?))
}

/// `GET /api/tasks`: every registered task with its parameters.
pub async fn tasks() -> Json<serde_json::Value> {
    Json(json!({ "tasks": jobs::tasks::catalogue() }))
}

/// `GET /healthz`: the process is up.
pub async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: 200 when Postgres, Redis and S3 all answer; 503 naming the ones that do not.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let probe = state.probe().await;
    let status = if probe.all_up() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(probe.to_json())).into_response()
}
