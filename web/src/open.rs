//! Open batches over the API: `POST /api/batches/open` creates an empty batch with its choices;
//! `PUT /api/batches/{id}/files/{file_id}` adds one file (the raw body), stored as it streams and
//! processed at once; `POST /api/batches/{id}/close` says that no more will come. A file sent
//! again under the same `file_id` (a retry after a dropped connection) finds the image made the
//! first time; a creation replayed with the same `Idempotency-Key` finds the same batch. So a
//! client with thousands of files sends them a few at a time, and a bad link costs it only the
//! files in flight.

use axum::body::Body;
use axum::extract::{FromRequest, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use jobs::domain::keys;
use jobs::names::display_name;
use jobs::open::{self, Added, BatchLimits, ClientImage, Opened, Refused};
use jobs::owners::Scope;
use jobs::{BatchId, BatchStatus, ImageId, ImageStatus};

use crate::api::{ApiError, ApiPath, ApiQuery, ErrorBody};
use crate::choices::Choices;
use crate::error::AppError;
use crate::format::human_bytes;
use crate::owner::Peer;
use crate::state::AppState;
use crate::upload::{self, Chunks};
use crate::view::BatchView;

/// Largest body of `POST /api/batches/open` (its pipeline and callback URL).
pub const MAX_OPEN_BODY: usize = 64 * 1024;
/// Longest `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY: usize = 255;
/// Most images one page of `GET /api/batches/{id}/images` lists (and the default).
pub const MAX_PAGE: i64 = 1000;

/// The body of `POST /api/batches/open`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenRequest {
    /// The steps, as for `POST /api/batches` (`GET /api/tasks` lists them); the default
    /// watermark when left out. (A logo comes only with the multipart form of this request.)
    #[schema(value_type = Option<Vec<Object>>)]
    pub pipeline: Option<serde_json::Value>,
    /// Where the batch's status is POSTed when it ends (needs `WEBHOOK_SECRET` on the server).
    pub callback_url: Option<String>,
}

/// The answer to `POST /api/batches/open`.
#[derive(Debug, Serialize, ToSchema)]
pub struct OpenedBatch {
    pub id: BatchId,
    /// `open` for a new batch; a replay (same `Idempotency-Key`) says what the batch is now.
    pub status: BatchStatus,
    /// `/api/batches/{id}/files`: `PUT` each file to `{files_url}/{file_id}?name=<name>`.
    pub files_url: String,
    /// `/api/batches/{id}/close`: `POST` once every file is in.
    pub close_url: String,
    /// `/api/batches/{id}`: the status as JSON.
    pub status_url: String,
    /// `/batches/{id}`: the waiting page.
    pub page_url: String,
}

/// One file of an open batch, as `PUT /api/batches/{id}/files/{file_id}` answers it.
#[derive(Debug, Serialize, ToSchema)]
pub struct AddedFile {
    pub file_id: String,
    /// Its place in the batch (from 0).
    pub position: i32,
    pub name: String,
    /// `pending` (it is being processed), `done`, or `failed` (with `error`) when the file was
    /// refused (empty, too large, not an image) or could not be processed.
    pub status: ImageStatus,
    pub error: Option<String>,
}

impl AddedFile {
    fn new(file_id: &str, image: ClientImage) -> Self {
        Self {
            file_id: file_id.to_owned(),
            position: image.position,
            name: image.name,
            status: image.status,
            error: (image.status == ImageStatus::Failed)
                .then_some(image.error)
                .flatten(),
        }
    }
}

/// `POST /api/batches/open`.
#[utoipa::path(
    post,
    path = "/api/batches/open",
    tag = "batches",
    summary = "Open a batch to add files to over many requests",
    description = "Creates an empty batch (`open`) with its processing; add each file with `PUT {files_url}/{file_id}` (several at once), then `POST {close_url}`. Its images are processed as they arrive. With an `Idempotency-Key`, a replay by the same owner answers `200` with the batch the first request made instead of making another. Counts toward the owner's batches per minute. An open batch idle for `OPEN_BATCH_IDLE_SECONDS` is closed by the server (failed when it has no file).",
    params(("Idempotency-Key" = Option<String>, Header, description = "Any string of up to 255 visible ASCII characters, unique per batch the client means")),
    request_body(content = OpenRequest, description = "JSON; or, as the browser form sends it, multipart/form-data with the one-request upload's fields but no files (`form`, `task`, `<task>.<param>`, `pipeline`, `logo`, `callback_url`)"),
    responses(
        (status = 201, description = "The batch is open", body = OpenedBatch),
        (status = 200, description = "A replay: the batch an earlier request with this `Idempotency-Key` made", body = OpenedBatch),
        (status = 400, description = "A bad pipeline, callback_url, body or Idempotency-Key (`bad_request`)", body = ErrorBody),
        (status = 401, description = "No key where one is needed, or an unknown or revoked key (`unauthorized`)", body = ErrorBody),
        (status = 403, description = "The key lacks the `submit` scope (`forbidden`)", body = ErrorBody),
        (status = 413, description = "The body is over 64 KiB (`too_large`)", body = ErrorBody),
        (status = 429, description = "Over the owner's batches per minute (`rate_limited`)", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds after which to try again"))),
        (status = 503, description = "A dependency is down (`unavailable`)", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds after which to try again"))),
        (status = 500, description = "Something went wrong on our side (`internal`)", body = ErrorBody),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    Peer(peer): Peer,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let headers = request.headers().clone();
    let owner = crate::owner::resolve_for(&state, &headers, peer, Scope::Submit).await?;
    let key = idempotency_key(&headers)?;
    let multipart = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("multipart/form-data"));
    let (choices, callback, logo) = if multipart {
        let form = axum::extract::Multipart::from_request(request, &state)
            .await
            .map_err(AppError::from)?;
        form_choices(&state, form).await?
    } else {
        json_choices(&state, request.into_body()).await?
    };
    let pipeline = choices.resolve()?.to_json();
    let limits = owner.limits.resolve(&state.settings);
    let opened = open::create(
        &state.db,
        owner.id,
        &limits,
        &pipeline,
        callback.as_deref(),
        key.as_deref(),
    )
    .await
    .map_err(refused)?;
    let (code, id, status) = match opened {
        Opened::Created(id) => {
            if let Some(logo) = logo {
                if let Err(e) = state
                    .storage
                    .put(&keys::logo(id), logo.into(), "application/octet-stream")
                    .await
                {
                    // No file can come to a batch without its logo: it fails, and the purge
                    // deletes it.
                    let _ = jobs::db::mark_failed(
                        &state.db,
                        id,
                        "its logo could not be stored",
                        state.settings.result_ttl(),
                    )
                    .await;
                    return Err(AppError::from(e).into());
                }
            }
            jobs::metrics::BATCHES_SUBMITTED.inc();
            tracing::info!(batch = %id, "batch opened");
            (StatusCode::CREATED, id, BatchStatus::Open)
        }
        Opened::Replayed(id, status) => (StatusCode::OK, id, status),
    };
    Ok((
        code,
        Json(OpenedBatch {
            id,
            status,
            files_url: format!("/api/batches/{id}/files"),
            close_url: format!("/api/batches/{id}/close"),
            status_url: format!("/api/batches/{id}"),
            page_url: format!("/batches/{id}"),
        }),
    )
        .into_response())
}

/// The choices of a batch, its callback URL and its logo (checked), as the creation gives them.
type Chosen = (Choices, Option<String>, Option<Vec<u8>>);

/// The JSON body: `{"pipeline": [...], "callback_url": "…"}`, both optional.
async fn json_choices(state: &AppState, body: Body) -> Result<Chosen, AppError> {
    let body = axum::body::to_bytes(body, MAX_OPEN_BODY)
        .await
        .map_err(|e| {
            if e.to_string().contains("length limit") {
                AppError::TooLarge(format!(
                    "the body is larger than {}: it holds only the pipeline and a callback_url",
                    human_bytes(MAX_OPEN_BODY as u64)
                ))
            } else {
                AppError::BadRequest(format!("the body could not be read: {e}"))
            }
        })?;
    let request: OpenRequest = if body.iter().all(u8::is_ascii_whitespace) {
        OpenRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            AppError::BadRequest(format!(
                "the body is not the JSON expected ({{\"pipeline\": [...], \"callback_url\": \
                 \"…\"}}, both optional): {e}"
            ))
        })?
    };
    let mut choices = Choices::default();
    if let Some(pipeline) = &request.pipeline {
        choices.set("pipeline", pipeline.to_string());
    }
    let callback = match &request.callback_url {
        Some(url) => upload::callback_url(&state.settings, url)?,
        None => None,
    };
    Ok((choices, callback, None))
}

/// Most parts of the form's body, and most bytes of its text parts together.
const MAX_FORM_FIELDS: usize = 256;

/// The browser form's choices, as multipart (the same fields as `POST /batches` sends before its
/// files: `form`, `task`, `<task>.<param>`, `pipeline`, `logo`, `callback_url`), without files.
async fn form_choices(
    state: &AppState,
    mut form: axum::extract::Multipart,
) -> Result<Chosen, AppError> {
    let bad = |e: axum::extract::multipart::MultipartError| {
        AppError::BadRequest(format!("the form could not be read: {}", e.body_text()))
    };
    let mut choices = Choices::default();
    let mut callback = None;
    let mut logo: Option<Vec<u8>> = None;
    let mut fields = 0;
    let mut text_bytes = 0;
    while let Some(mut field) = form.next_field().await.map_err(bad)? {
        fields += 1;
        if fields > MAX_FORM_FIELDS {
            return Err(AppError::TooLarge(format!(
                "too many fields: at most {MAX_FORM_FIELDS}"
            )));
        }
        let name = field.name().unwrap_or_default().to_owned();
        let limit = if name == "logo" {
            jobs::pipeline::MAX_LOGO_BYTES
        } else {
            MAX_OPEN_BODY
        };
        let mut buf = Vec::new();
        while let Some(chunk) = field.chunk().await.map_err(bad)? {
            buf.extend_from_slice(&chunk);
            if name != "logo" {
                text_bytes += chunk.len();
            }
            if buf.len() > limit || text_bytes > MAX_OPEN_BODY {
                return Err(AppError::TooLarge(if name == "logo" {
                    format!(
                        "the logo is larger than the limit of {}",
                        human_bytes(jobs::pipeline::MAX_LOGO_BYTES as u64)
                    )
                } else {
                    format!(
                        "the choices are larger than {} together",
                        human_bytes(MAX_OPEN_BODY as u64)
                    )
                }));
            }
        }
        match name.as_str() {
            "files" | "file" => {
                return Err(AppError::BadRequest(
                    "an open batch takes its files one by one: PUT each to \
                     /api/batches/{id}/files/{file_id}"
                        .into(),
                ))
            }
            "logo" if buf.is_empty() => {}
            "logo" => {
                // Its header only (type and size): `web` never decodes a logo.
                jobs::pipeline::check_logo(&buf).map_err(AppError::BadRequest)?;
                choices.logo = true;
                logo = Some(buf);
            }
            other => {
                let value = String::from_utf8(buf).map_err(|_| {
                    AppError::BadRequest(format!("the field {other:?} is not valid UTF-8"))
                })?;
                if other == "callback_url" {
                    callback = upload::callback_url(&state.settings, &value)?;
                } else if Choices::is_text(other) {
                    choices.set(other, value);
                }
            }
        }
    }
    Ok((choices, callback, logo))
}

/// The `Idempotency-Key` header, if any: 1–255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, AppError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| {
            !k.is_empty()
                && k.len() <= MAX_IDEMPOTENCY_KEY
                && k.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or_else(|| {
            AppError::BadRequest(format!(
                "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
            ))
        })?;
    Ok(Some(key.to_owned()))
}

/// The query of `PUT /api/batches/{id}/files/{file_id}`.
#[derive(Debug, Deserialize)]
pub struct FileQuery {
    /// The file's name, as the zip and the status show it (the `file_id` when left out).
    pub name: Option<String>,
}

/// Whether `file_id` is a client's file id: 1–64 of `A-Z a-z 0-9 _ -`.
pub fn valid_file_id(file_id: &str) -> bool {
    (1..=64).contains(&file_id.len())
        && file_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The batch `id` for a request that changes it (adds a file, closes it): 404 when unknown, 410
/// once expired; and only its key (or an admin key) may change a batch that a key made, while
/// the id of an anonymous batch is the capability.
async fn target_for_change(
    state: &AppState,
    headers: &HeaderMap,
    peer: std::net::IpAddr,
    id: &str,
) -> Result<open::Target, AppError> {
    let id: BatchId = id.parse().map_err(|_| AppError::NotFound)?;
    let target = open::target(&state.db, id)
        .await?
        .ok_or(AppError::NotFound)?;
    if target.status == BatchStatus::Expired {
        return Err(AppError::Gone);
    }
    if target.owned_by_key {
        let owner = crate::owner::resolve_for(state, headers, peer, Scope::Submit).await?;
        crate::owner::may_change(&owner, target.owner, true, "change it")?;
    }
    Ok(target)
}

/// `PUT /api/batches/{id}/files/{file_id}`.
#[utoipa::path(
    put,
    path = "/api/batches/{id}/files/{file_id}",
    tag = "batches",
    summary = "Add one file to an open batch",
    description = "The body is the file itself (any `Content-Type`), streamed to storage; its type is read from its content. The image is processed at once. Sending the same `file_id` again is harmless: the answer is the image made the first time (`200`). A file that is empty, too large (`MAX_FILE_BYTES`) or not an image fails alone, with its reason (`201`, status `failed`). Only the batch's key (or an admin key) may add to a batch a key made; the id of an anonymous batch is the capability.",
    params(
        ("id" = String, Path, format = Uuid, description = "The batch's id"),
        ("file_id" = String, Path, description = "The client's id of the file: 1–64 of `A-Z a-z 0-9 _ -`, unique in the batch"),
        ("name" = Option<String>, Query, description = "The file's name, as the zip and the status show it (the `file_id` when left out)"),
    ),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The file"),
    responses(
        (status = 201, description = "The file was added", body = AddedFile),
        (status = 200, description = "A file with this `file_id` was added before: that image", body = AddedFile),
        (status = 400, description = "A bad `file_id` or a body that could not be read (`bad_request`)", body = ErrorBody),
        (status = 401, description = "No key, or an unknown or revoked key, for a batch a key made (`unauthorized`)", body = ErrorBody),
        (status = 403, description = "The batch belongs to another key (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No batch with this id (`not_found`)", body = ErrorBody),
        (status = 408, description = "The file came too slowly (`too_slow`)", body = ErrorBody),
        (status = 409, description = "The batch is closed, cancelled or finished (`finished`)", body = ErrorBody),
        (status = 410, description = "The batch has expired (`expired`)", body = ErrorBody),
        (status = 413, description = "The batch holds MAX_FILES_PER_BATCH files, or this file would take it over MAX_BATCH_BYTES (`too_large`)", body = ErrorBody),
        (status = 429, description = "Over the owner's images queued or bytes per day (`rate_limited`)", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds after which to try again"))),
        (status = 503, description = "A dependency is down or too many uploads at once (`unavailable`, `busy`)", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds after which to try again"))),
        (status = 500, description = "Something went wrong on our side (`internal`)", body = ErrorBody),
    )
)]
pub async fn put_file(
    State(state): State<AppState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    ApiPath((id, file_id)): ApiPath<(String, String)>,
    ApiQuery(query): ApiQuery<FileQuery>,
    body: Body,
) -> Result<Response, ApiError> {
    let target = target_for_change(&state, &headers, peer, &id).await?;
    if !valid_file_id(&file_id) {
        return Err(AppError::BadRequest(
            "file_id must be 1 to 64 of A-Z, a-z, 0-9, _ and -".into(),
        )
        .into());
    }
    let mut chunks = BodyChunks::new(body, 0);
    if let Some(earlier) = open::find_image(&state.db, target.id, &file_id).await? {
        // Sent again: read what came (so the connection can serve the next request) and say
        // what was made of it the first time.
        while chunks.chunk().await?.is_some() {}
        return Ok((StatusCode::OK, Json(AddedFile::new(&file_id, earlier))).into_response());
    }
    let settings = &state.settings;
    if target.status != BatchStatus::Open {
        return Err(not_open(target.status).into());
    }
    if target.total as u64 >= settings.max_files_per_batch as u64 {
        return Err(too_many_files(settings.max_files_per_batch).into());
    }
    let room = settings
        .max_batch_bytes
        .saturating_sub(target.bytes_in.max(0) as u64);
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > room) {
        return Err(upload::too_large_batch(settings.max_batch_bytes).into());
    }
    let Ok(slot) = state.upload_slots.clone().try_acquire_owned() else {
        tracing::warn!("refusing a file: every upload slot is taken");
        return Err(AppError::Busy(format!(
            "{} uploads are arriving already, the most this server takes at once; please try \
             again in a few seconds",
            settings.max_concurrent_uploads
        ))
        .into());
    };
    chunks.limit = room;
    let name = display_name(query.name.as_deref().unwrap_or(&file_id));
    // On a task of its own, like the one-request upload: should the client go away, the body
    // ends in an error and what was stored of the file is still deleted.
    let task_state = state.clone();
    let work = async move {
        let added = add_file(&task_state, &target, &file_id, name, chunks).await;
        drop(slot);
        added
    };
    let response = tokio::spawn(tracing::Instrument::instrument(
        work,
        tracing::Span::current(),
    ))
    .await
    .map_err(|e| AppError::Internal(e.into()))??;
    Ok(response)
}

async fn add_file(
    state: &AppState,
    target: &open::Target,
    file_id: &str,
    name: String,
    mut chunks: BodyChunks,
) -> Result<Response, AppError> {
    let settings = &state.settings;
    let image = upload::store_file(state, target.id, ImageId::new(), name, &mut chunks).await?;
    let stored = image.rejected.is_none();
    let owner = match target.owner {
        Some(owner) => open::owner_limits(&state.db, owner)
            .await?
            .map(|limits| (owner, limits.resolve(settings))),
        None => None,
    };
    let limits = BatchLimits {
        max_files: settings.max_files_per_batch,
        max_bytes: settings.max_batch_bytes,
    };
    let added = open::add_image(&state.db, target.id, owner, limits, file_id, &image).await;
    let forget = |why: &'static str| async move {
        if stored {
            let key = keys::original(target.id, image.id);
            if let Err(e) = state.storage.delete(&key).await {
                tracing::warn!(batch = %target.id, error = %e, why, "could not delete a file not added; the purge will");
            }
        }
    };
    match added {
        Ok(Added::New(recorded)) => {
            if recorded.status == ImageStatus::Pending {
                state.dispatch.request();
            }
            tracing::debug!(batch = %target.id, position = recorded.position, "file added");
            Ok((StatusCode::CREATED, Json(AddedFile::new(file_id, recorded))).into_response())
        }
        Ok(Added::Again(earlier)) => {
            forget("sent twice at once").await;
            Ok((StatusCode::OK, Json(AddedFile::new(file_id, earlier))).into_response())
        }
        Err(e) => {
            forget("refused").await;
            Err(refused(e))
        }
    }
}

fn not_open(status: BatchStatus) -> AppError {
    AppError::Finished(format!(
        "this batch is {status}, so it takes no more files{}",
        if status.is_final() || status == BatchStatus::Cancelled {
            ""
        } else {
            " (it was closed)"
        }
    ))
}

fn too_many_files(max: u32) -> AppError {
    AppError::TooLarge(format!(
        "too many files: at most {max} per batch (MAX_FILES_PER_BATCH)"
    ))
}

fn refused(e: Refused) -> AppError {
    match e {
        Refused::Limit(hit) => AppError::RateLimited {
            message: hit.message(),
            retry_after: hit.retry_after(),
        },
        Refused::NotOpen(status) => not_open(status),
        Refused::TooManyFiles(max) => too_many_files(max),
        Refused::TooManyBytes(max) => upload::too_large_batch(max),
        Refused::NoBatch => AppError::NotFound,
        Refused::Db(e) => e.into(),
    }
}

/// The body of a `PUT`, at most `limit` bytes (what the batch still has room for).
struct BodyChunks {
    stream: axum::body::BodyDataStream,
    seen: u64,
    limit: u64,
}

impl BodyChunks {
    fn new(body: Body, limit: u64) -> Self {
        Self {
            stream: body.into_data_stream(),
            seen: 0,
            limit,
        }
    }
}

impl Chunks for BodyChunks {
    async fn chunk(&mut self) -> Result<Option<axum::body::Bytes>, AppError> {
        match self.stream.next().await {
            None => Ok(None),
            Some(Ok(chunk)) => {
                self.seen += chunk.len() as u64;
                if self.limit > 0 && self.seen > self.limit {
                    return Err(AppError::TooLarge(
                        "this file would take the batch over its limit (MAX_BATCH_BYTES)".into(),
                    ));
                }
                Ok(Some(chunk))
            }
            Some(Err(e)) => {
                if crate::pace::too_slow(&e) {
                    return Err(AppError::Timeout(
                        "the file arrived too slowly, so it was stopped; please send it again"
                            .into(),
                    ));
                }
                Err(AppError::BadRequest(format!(
                    "the file could not be read: {e}"
                )))
            }
        }
    }
}

/// `POST /api/batches/{id}/close`.
#[utoipa::path(
    post,
    path = "/api/batches/{id}/close",
    tag = "batches",
    summary = "Close an open batch",
    description = "No more files will come: the batch moves on (`queued` or `processing`), or ends at once (`done`, or `failed`) when every image is finished already; a batch closed without any file fails. Closing again is harmless (`200`, the batch as it is).",
    params(("id" = String, Path, format = Uuid, description = "The batch's id")),
    responses(
        (status = 200, description = "The batch, closed", body = BatchView),
        (status = 401, description = "No key, or an unknown or revoked key, for a batch a key made (`unauthorized`)", body = ErrorBody),
        (status = 403, description = "The batch belongs to another key (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No batch with this id (`not_found`)", body = ErrorBody),
        (status = 409, description = "The batch was cancelled (`finished`)", body = ErrorBody),
        (status = 410, description = "The batch has expired (`expired`)", body = ErrorBody),
        (status = 503, description = "A dependency is down (`unavailable`)", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds after which to try again"))),
        (status = 500, description = "Something went wrong on our side (`internal`)", body = ErrorBody),
    )
)]
pub async fn close(
    State(state): State<AppState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<BatchView>, ApiError> {
    let target = target_for_change(&state, &headers, peer, &id).await?;
    let status = open::close(
        &state.db,
        target.id,
        state.settings.result_ttl(),
        "the batch was closed without any file",
    )
    .await?
    .ok_or(AppError::NotFound)?;
    if status == BatchStatus::Cancelled {
        return Err(AppError::Finished("this batch was cancelled".into()).into());
    }
    if target.status == BatchStatus::Open {
        tracing::info!(batch = %target.id, files = target.total, %status, "batch closed");
    }
    Ok(Json(crate::view::load_view(&state, &id).await?))
}

/// The query of `GET /api/batches/{id}/images`.
#[derive(Debug, Deserialize)]
pub struct PageQuery {
    /// Only images after this position (the last `position` of the page before).
    pub after: Option<i32>,
    /// At most this many (1–1000; 1000 when left out).
    pub limit: Option<i64>,
}

/// The answer to `GET /api/batches/{id}/images`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImagePage {
    pub id: BatchId,
    pub images: Vec<open::PagedImage>,
    /// The next page, when this one is full.
    pub next: Option<String>,
}

/// `GET /api/batches/{id}/images?after=&limit=`.
#[utoipa::path(
    get,
    path = "/api/batches/{id}/images",
    tag = "batches",
    summary = "A batch's images, page by page",
    description = "The images in order, from after `after`, at most `limit`: a batch's status lists only its first 1,000.",
    params(
        ("id" = String, Path, format = Uuid, description = "The batch's id"),
        ("after" = Option<i32>, Query, description = "Only images after this position (the last `position` of the page before)"),
        ("limit" = Option<i64>, Query, description = "At most this many, 1–1000 (1000 when left out)"),
    ),
    responses(
        (status = 200, description = "A page of images", body = ImagePage),
        (status = 400, description = "A query that does not parse, or a limit out of 1–1000 (`bad_request`)", body = ErrorBody),
        (status = 404, description = "No batch with this id (`not_found`)", body = ErrorBody),
        (status = 410, description = "The batch has expired (`expired`)", body = ErrorBody),
        (status = 503, description = "A dependency is down (`unavailable`)", body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds after which to try again"))),
        (status = 500, description = "Something went wrong on our side (`internal`)", body = ErrorBody),
    )
)]
pub async fn images(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<ImagePage>, ApiError> {
    let limit = query.limit.unwrap_or(MAX_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(AppError::BadRequest(format!("limit must be 1 to {MAX_PAGE}")).into());
    }
    let id: BatchId = id.parse().map_err(|_| AppError::NotFound)?;
    let target = open::target(&state.db, id)
        .await?
        .ok_or(AppError::NotFound)?;
    if target.status == BatchStatus::Expired {
        return Err(AppError::Gone.into());
    }
    let images = open::images_page(&state.db, id, query.after, limit).await?;
    let next = match images.last() {
        Some(last) if images.len() as i64 == limit => Some(format!(
            "/api/batches/{id}/images?after={}&limit={limit}",
            last.position
        )),
        _ => None,
    };
    Ok(Json(ImagePage { id, images, next }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_ids_are_short_and_plain() {
        for good in ["a", "file-1_B", &"x".repeat(64)] {
            assert!(valid_file_id(good), "{good}");
        }
        for bad in ["", "a/b", "a b", "é", &"x".repeat(65), "..", "a.jpg"] {
            assert!(!valid_file_id(bad), "{bad}");
        }
    }

    #[test]
    fn an_idempotency_key_is_visible_ascii() {
        let mut h = HeaderMap::new();
        assert_eq!(idempotency_key(&h).expect("none"), None);
        h.insert("idempotency-key", "abc-123".parse().expect("a value"));
        assert_eq!(idempotency_key(&h).expect("ok").as_deref(), Some("abc-123"));
        h.insert("idempotency-key", "a b".parse().expect("a value"));
        assert!(idempotency_key(&h).is_err());
        h.insert("idempotency-key", "k".repeat(256).parse().expect("a value"));
        assert!(idempotency_key(&h).is_err());
    }
}
