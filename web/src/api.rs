//! The JSON API: submit a batch, follow it, list the tasks; and the health checks.

use axum::extract::multipart::MultipartRejection;
use axum::extract::{FromRequestParts, Multipart, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use crate::error::AppError;
use crate::state::AppState;
use crate::upload;
use crate::view::{load_view_with, BatchView};

/// An [`AppError`] answered as JSON: `{"error": {"code": "not_found", "message": "…"}}`, with
/// `Retry-After` when trying again later makes sense.
pub struct ApiError(pub AppError);

impl<E: Into<AppError>> From<E> for ApiError {
    fn from(e: E) -> Self {
        Self(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.0.status();
        let mut body = json!({
            "error": { "code": self.0.code(), "message": self.0.user_message() }
        });
        if matches!(self.0, AppError::Gone) {
            body["status"] = json!("expired");
        }
        let mut response = (status, Json(body)).into_response();
        self.0.add_retry_after(&mut response);
        response
    }
}

/// `Path` whose refusal is answered as an API error.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// `Query` whose refusal is answered as an API error.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// Whether the client asked for JSON (`Accept: application/json`) rather than a page: routes
/// shared by browsers and API clients (the download) answer their errors in kind.
pub fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("application/json") && !accept.contains("text/html"))
}

/// `POST /api/batches`: multipart with `files` (one or more) and an optional `pipeline` (JSON).
pub async fn submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    let received = upload::receive(&state, &headers, multipart?).await?;
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
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<StatusQuery>,
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

/// `GET /metrics`: `web`'s metrics and the cluster's state read from Postgres, in Prometheus's
/// text format. Should Postgres not answer, the process's own metrics are still served.
pub async fn metrics(State(state): State<AppState>) -> Response {
    if let Err(e) = jobs::metrics::observe_cluster(&state.db).await {
        tracing::warn!(error = %e, "metrics: cannot read the cluster's state from Postgres");
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            jobs::metrics::CONTENT_TYPE,
        )],
        jobs::metrics::render(),
    )
        .into_response()
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

/// Most events `GET /api/batches/{id}/events` returns (a batch of 200 images that each needed
/// a few attempts stays well under it).
pub const MAX_EVENTS: i64 = 5000;

/// `GET /api/batches/{id}/events`: everything that happened to the batch, oldest first.
pub async fn events(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id: jobs::BatchId = id.parse().map_err(|_| AppError::NotFound)?;
    if jobs::db::get_batch(&state.db, id).await?.is_none() {
        return Err(AppError::NotFound.into());
    }
    let events = jobs::db::batch_events(&state.db, id, MAX_EVENTS).await?;
    Ok(Json(json!({ "id": id, "events": events })))
}
