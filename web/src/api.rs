//! The JSON API: submit a batch, follow it, list the tasks; and the health checks.

use axum::extract::multipart::MultipartRejection;
use axum::extract::{FromRequestParts, Multipart, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use jobs::owners::Scope;

use crate::error::AppError;
use crate::owner::Peer;
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

/// The body of every error of the API: `{"error": {"code": "…", "message": "…"}}` (the codes
/// are listed in the OpenAPI document, from [`crate::error::CODES`]).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
    /// Only on `410`: the batch's status, `expired`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<jobs::BatchStatus>,
}

/// What went wrong: a stable code for programs and a sentence for people.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// One of the codes listed in `ErrorBody`'s description.
    pub code: String,
    /// What went wrong and, when there is something to do about it, what.
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.0.status();
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.0.code().to_owned(),
                message: self.0.user_message(),
            },
            status: matches!(self.0, AppError::Gone).then_some(jobs::BatchStatus::Expired),
        };
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

/// The answer to `POST /api/batches`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Submitted {
    pub id: jobs::BatchId,
    pub status: jobs::BatchStatus,
    /// `/api/batches/{id}`: the status as JSON.
    pub status_url: String,
    /// `/batches/{id}`: the waiting page.
    pub page_url: String,
}

/// `POST /api/batches`: multipart with `files` (one or more) and an optional `pipeline` (JSON).
#[utoipa::path(
    post,
    path = "/api/batches",
    tag = "batches",
    summary = "Submit a batch of images",
    description = "Multipart: `files` (one or more images), and optionally the processing (`pipeline`, or the form's `task` and `<task>.<param>` fields), a `logo` and a `callback_url`. When `pipeline` (and `logo`) come before the first file, each file is processed as soon as it is stored; sent after files already being processed they are refused (`400`). A refused or broken upload leaves nothing behind. Send an API key as `Authorization: Bearer <key>` (scope `submit`); without one the batch belongs to the client address, when the server takes anonymous submissions (`ANONYMOUS`). The owner's limits (images queued, batches per minute, bytes per day) are checked as the upload arrives: over one, `429 rate_limited` with `Retry-After`.",
    request_body(content = crate::openapi::BatchForm, content_type = "multipart/form-data"),
    security((), ("api key" = [])),
    responses(
        (status = 202, description = "The batch is stored and queued", body = Submitted),
        (status = 400, description = "A bad pipeline, logo, callback_url or file field (`bad_request`)", body = ErrorBody),
        (status = 408, description = "The upload came too slowly (`too_slow`)", body = ErrorBody),
        (status = 401, description = "An unknown or revoked key, or no key when the server takes none without (`unauthorized`)", body = ErrorBody),
        (status = 403, description = "The key lacks the `submit` scope (`forbidden`)", body = ErrorBody),
        (status = 413, description = "A file, the batch or the choices are over a limit (`too_large`)", body = ErrorBody),
        (status = 429, description = "Over one of the owner's limits: images queued, batches per minute or bytes per day (`rate_limited`); nothing of the upload is kept", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds after which the request may succeed"))),
        (status = 503, description = "A dependency is down or too many requests at once (`unavailable`, `busy`)", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds after which to try again"))),
        (status = 500, description = "Something went wrong on our side (`internal`)", body = ErrorBody),
    )
)]
pub async fn submit(
    State(state): State<AppState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    let owner = crate::owner::resolve_for(&state, &headers, peer, Scope::Submit).await?;
    let received = upload::receive(&state, &headers, &owner, multipart?).await?;
    let id = received.batch;
    Ok((
        StatusCode::ACCEPTED,
        Json(Submitted {
            id,
            status: received.status,
            status_url: format!("/api/batches/{id}"),
            page_url: format!("/batches/{id}"),
        }),
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
#[utoipa::path(
    get,
    path = "/api/batches/{id}",
    tag = "batches",
    summary = "A batch's status",
    description = "Its status, counts, each image with its status and error, and `download_url` once the zip is ready. The same JSON is the data of the stream's events and the body of the webhook.",
    params(
        ("id" = String, Path, format = Uuid, description = "The batch's id"),
        ("images" = Option<bool>, Query, description = "`false` leaves the list of images empty (for polling a large batch); default `true`"),
    ),
    responses(
        (status = 200, description = "The batch", body = BatchView),
        (status = 400, description = "A query that does not parse (`bad_request`)", body = ErrorBody),
        (status = 404, description = "No batch with this id (`not_found`)", body = ErrorBody),
        (status = 410, description = "The batch has expired (`expired`, with `status`)", body = ErrorBody),
        (status = 503, description = "A dependency is down or too many requests at once (`unavailable`, `busy`)", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds after which to try again"))),
        (status = 500, description = "Something went wrong on our side (`internal`)", body = ErrorBody),
    )
)]
pub async fn status(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<StatusQuery>,
) -> Result<Json<BatchView>, ApiError> {
    Ok(Json(load_view_with(&state, &id, query.images).await?))
}

/// Who asked, in the answer to `GET /api/usage`.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageOwner {
    /// `key` (an API key) or `address` (anonymous, by client address).
    pub kind: jobs::owners::OwnerKind,
    /// The key's label (empty for an anonymous owner).
    pub label: String,
    /// The key's visible prefix (`wm_1a2b3c4d`); never the key itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// An anonymous owner's client address (an IPv6 client by its /64).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The owner's share of the workers against other owners.
    pub weight: f32,
}

/// The answer to `GET /api/usage`.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageAnswer {
    pub owner: UsageOwner,
    pub usage: jobs::owners::Usage,
    /// The owner's limits (its own, else the server's defaults).
    pub limits: jobs::owners::Limits,
}

/// `GET /api/usage`: what the owner of the request (its key, or its client address) has used,
/// against its limits.
#[utoipa::path(
    get,
    path = "/api/usage",
    tag = "batches",
    summary = "What you have used, and your limits",
    description = "The owner of the request (the API key sent as `Authorization: Bearer <key>`, or, without one and when the server takes anonymous submissions, the client address), what it has used as its limits count it, and those limits. Images queued count the images of its batches not yet finished; batches count over the last minute and bytes over the last 24 hours, each by the time its batch was created. Needs the `read` scope.",
    security((), ("api key" = [])),
    responses(
        (status = 200, description = "The owner, its usage and its limits", body = UsageAnswer),
        (status = 401, description = "An unknown or revoked key, or no key when the server takes none without (`unauthorized`)", body = ErrorBody),
        (status = 403, description = "The key lacks the `read` scope (`forbidden`)", body = ErrorBody),
        (status = 503, description = "A dependency is down (`unavailable`)", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds after which to try again"))),
        (status = 500, description = "Something went wrong on our side (`internal`)", body = ErrorBody),
    )
)]
pub async fn usage(
    State(state): State<AppState>,
    Peer(peer): Peer,
    headers: HeaderMap,
) -> Result<Json<UsageAnswer>, ApiError> {
    let owner = crate::owner::resolve_for(&state, &headers, peer, Scope::Read).await?;
    let used = jobs::owners::usage(&state.db, owner.id).await?;
    let key = owner.kind == jobs::owners::OwnerKind::Key;
    Ok(Json(UsageAnswer {
        limits: owner.limits.resolve(&state.settings),
        owner: UsageOwner {
            kind: owner.kind,
            label: owner.label,
            prefix: key.then(|| owner.name.clone()),
            address: (!key).then_some(owner.name),
            weight: owner.weight,
        },
        usage: used,
    }))
}

/// `POST /api/batches/{id}/cancel`: stops a batch.
#[utoipa::path(
    post,
    path = "/api/batches/{id}/cancel",
    tag = "batches",
    summary = "Cancel a batch",
    description = "Stops the batch: its status becomes `cancelled` (error \"cancelled by its owner\"), its pending images never start, a result still being made is discarded, and its originals and results are deleted at once (the purge deletes anything left). The event log records `batch.cancelled` and the webhook, if any, is called. Cancelling again answers the same. A batch of an API key may be cancelled with that key or an admin key; an anonymous batch by anyone who has its id (the id is the capability). No body.",
    params(("id" = String, Path, format = Uuid, description = "The batch's id")),
    responses(
        (status = 200, description = "The batch, `cancelled`", body = BatchView),
        (status = 401, description = "An unknown or revoked key, or none where one is needed (`unauthorized`)", body = ErrorBody),
        (status = 403, description = "The batch belongs to another key (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No batch with this id (`not_found`)", body = ErrorBody),
        (status = 409, description = "The batch has ended already: done, failed or expired (`finished`)", body = ErrorBody),
        (status = 413, description = "A request with a body (`too_large`)", body = ErrorBody),
        (status = 503, description = "A dependency is down or too many requests at once (`unavailable`, `busy`)", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds after which to try again"))),
        (status = 500, description = "Something went wrong on our side (`internal`)", body = ErrorBody),
    )
)]
pub async fn cancel(
    State(state): State<AppState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<BatchView>, ApiError> {
    let batch: jobs::BatchId = id.parse().map_err(|_| AppError::NotFound)?;
    let owner = crate::owner::resolve_for(&state, &headers, peer, Scope::Submit).await?;
    let target = jobs::open::target(&state.db, batch)
        .await?
        .ok_or(AppError::NotFound)?;
    crate::owner::may_change(&owner, target.owner, target.owned_by_key, "cancel it")?;
    match jobs::db::cancel_batch(&state.db, batch).await? {
        jobs::db::Cancel::Cancelled => {
            tracing::info!(%batch, "batch cancelled by its owner");
            // Its files go at once (best effort: the purge deletes whatever is left).
            let storage = state.storage.clone();
            tokio::spawn(async move {
                if let Err(e) = storage
                    .delete_prefix(&jobs::domain::keys::batch_prefix(batch))
                    .await
                {
                    tracing::warn!(%batch, error = %e, "could not delete a cancelled batch's files yet; the purge will");
                }
            });
        }
        jobs::db::Cancel::Already => {}
        jobs::db::Cancel::Finished(status) => {
            return Err(AppError::Finished(format!(
                "the batch has ended already ({status}); there is nothing to cancel"
            ))
            .into())
        }
        jobs::db::Cancel::NotFound => return Err(AppError::NotFound.into()),
    }
    Ok(Json(load_view_with(&state, &id, true).await?))
}

/// The answer to `GET /api/tasks`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskList {
    pub tasks: Vec<jobs::tasks::TaskInfo>,
}

/// `GET /api/tasks`: every registered task with its parameters.
#[utoipa::path(
    get,
    path = "/api/tasks",
    tag = "tasks",
    summary = "The tasks a pipeline can use",
    description = "Every registered task with its parameters: name, label, help, type, default and range.",
    responses((status = 200, description = "The tasks", body = TaskList))
)]
pub async fn tasks() -> Json<TaskList> {
    Json(TaskList {
        tasks: jobs::tasks::catalogue(),
    })
}

/// `GET /healthz`: the process is up.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    summary = "Liveness",
    description = "`200 ok` while the process is up.",
    responses((status = 200, description = "Up", body = String, content_type = "text/plain", example = "ok"))
)]
pub async fn healthz() -> &'static str {
    "ok"
}

/// `GET /metrics`: `web`'s metrics and the cluster's state read from Postgres, in Prometheus's
/// text format. Should Postgres not answer, the process's own metrics are still served.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    summary = "Prometheus metrics",
    description = "`web`'s metrics and the cluster's state read from Postgres, in Prometheus's text format (every name is listed in docs/operations.md).",
    responses((status = 200, description = "The metrics", body = String, content_type = "text/plain; version=0.0.4"))
)]
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

/// What `GET /readyz` says of each dependency.
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)] // The schema of `jobs::health`'s JSON, for the OpenAPI document.
pub struct Readiness {
    /// `ok` or `unavailable`.
    postgres: String,
    /// `ok` or `unavailable`.
    redis: String,
    /// `ok` or `unavailable`.
    s3: String,
}

/// `GET /readyz`: 200 when Postgres, Redis and S3 all answer; 503 naming the ones that do not.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    summary = "Readiness",
    description = "Whether Postgres, Redis and S3 answer. Not an API error: the `503` body is the same shape as the `200`'s, naming the dependency that is down.",
    responses(
        (status = 200, description = "Every dependency answers", body = Readiness),
        (status = 503, description = "At least one dependency does not answer", body = Readiness),
    )
)]
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

/// The answer to `GET /api/batches/{id}/events`.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventLog {
    pub id: jobs::BatchId,
    /// Oldest first (5000 at most).
    pub events: Vec<jobs::db::Event>,
}

/// `GET /api/batches/{id}/events`: everything that happened to the batch, oldest first.
#[utoipa::path(
    get,
    path = "/api/batches/{id}/events",
    tag = "batches",
    summary = "A batch's event log",
    description = "Everything that happened to the batch, oldest first: uploaded; each image started, done, failed or retried (with its worker and attempt); archived; downloaded; expired; webhook delivered or failed.",
    params(("id" = String, Path, format = Uuid, description = "The batch's id")),
    responses(
        (status = 200, description = "The events", body = EventLog),
        (status = 404, description = "No batch with this id (`not_found`)", body = ErrorBody),
        (status = 503, description = "A dependency is down or too many requests at once (`unavailable`, `busy`)", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds after which to try again"))),
        (status = 500, description = "Something went wrong on our side (`internal`)", body = ErrorBody),
    )
)]
pub async fn events(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<EventLog>, ApiError> {
    let id: jobs::BatchId = id.parse().map_err(|_| AppError::NotFound)?;
    if jobs::db::get_batch(&state.db, id).await?.is_none() {
        return Err(AppError::NotFound.into());
    }
    let events = jobs::db::batch_events(&state.db, id, MAX_EVENTS).await?;
    Ok(Json(EventLog { id, events }))
}
