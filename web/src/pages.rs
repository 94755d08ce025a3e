//! The HTML pages: the upload form, the waiting page, the download, and friendly errors.

use askama::Template;
use axum::body::Body;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use chrono::Utc;
use futures::StreamExt;

use jobs::pipeline::Format;
use jobs::tasks::{ParamKind, REGISTRY};
use jobs::BatchStatus;

use crate::error::AppError;
use crate::format::human_bytes;
use crate::state::AppState;
use crate::upload;
use crate::view::{load_view, BatchView};

/// An [`AppError`] answered as an HTML page.
pub struct PageError(pub AppError);

impl<E: Into<AppError>> From<E> for PageError {
    fn from(e: E) -> Self {
        Self(e.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let status = self.0.status();
        let title = match &self.0 {
            AppError::NotFound | AppError::NoRoute(_) => "Not found",
            AppError::MethodNotAllowed => "That did not work",
            AppError::Unauthorized(_) => "Sign in first",
            AppError::Forbidden(_) => "Not allowed",
            AppError::RateLimited { .. } => "Please slow down",
            AppError::Finished(_) => "That batch has ended",
            AppError::Gone => "This batch has expired",
            AppError::BadRequest(_) | AppError::TooLarge(_) | AppError::Timeout(_) => {
                "That did not work"
            }
            AppError::Conflict(_) => "Not ready yet",
            AppError::Unavailable(_) | AppError::Busy(_) => "Please try again in a moment",
            AppError::Internal(_) => "Something went wrong",
        };
        let message = match &self.0 {
            AppError::Gone => format!(
                "Its files were deleted {} after it finished, as promised. Upload the images \
                 again to get a new download.",
                crate::state::kept_for()
            ),
            other => other.user_message(),
        };
        let mut response = render(status, &MessagePage { title, message });
        self.0.add_retry_after(&mut response);
        response
    }
}

pub fn render(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "template failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "something went wrong on our side",
            )
                .into_response()
        }
    }
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage {
    title: &'static str,
    message: String,
}

#[derive(Template)]
#[template(path = "index.html")]
struct IndexPage {
    tasks: Vec<TaskForm>,
    max_files: u32,
    max_file: String,
    max_batch: String,
    max_logo: String,
    max_file_bytes: u64,
    max_batch_bytes: u64,
    max_logo_bytes: usize,
    accepted: &'static str,
    /// The file inputs' `accept`: the types we read, as MIME types and extensions.
    accept: String,
    error: Option<String>,
    /// Webhooks are on (`WEBHOOK_SECRET`): the form offers a `callback_url`.
    webhooks: bool,
}

/// The `accept` of the file inputs: every type we read ([`Format::ALL`]) as its MIME type and
/// its extensions, so that the file chooser offers those only.
pub fn accept_list() -> String {
    let mimes = Format::ALL.iter().map(|f| f.mime().to_owned());
    let exts = Format::ALL
        .iter()
        .flat_map(|f| f.known_exts())
        .map(|e| format!(".{e}"));
    mimes.chain(exts).collect::<Vec<_>>().join(",")
}

struct TaskForm {
    name: &'static str,
    label: &'static str,
    description: &'static str,
    checked: bool,
    fields: Vec<FieldForm>,
}

struct FieldForm {
    id: String,
    form_name: String,
    label: &'static str,
    help: &'static str,
    kind: &'static str,
    min: String,
    max: String,
    step: String,
    value: String,
    checked: bool,
    options: Vec<(&'static str, bool)>,
    maxlength: usize,
}

/// The form, generated from the task registry.
fn index_page(state: &AppState, error: Option<String>) -> IndexPage {
    let tasks = REGISTRY
        .iter()
        .map(|task| TaskForm {
            name: task.name(),
            label: task.label(),
            description: task.description(),
            checked: task.name() == "watermark",
            fields: task
                .params()
                .iter()
                .map(|p| {
                    let mut f = FieldForm {
                        id: format!("{}-{}", task.name(), p.name),
                        form_name: format!("{}.{}", task.name(), p.name),
                        label: p.label,
                        help: p.help,
                        kind: "text",
                        min: String::new(),
                        max: String::new(),
                        step: String::new(),
                        value: String::new(),
                        checked: false,
                        options: Vec::new(),
                        maxlength: 0,
                    };
                    match p.kind {
                        ParamKind::Float {
                            min,
                            max,
                            default,
                            step,
                        } => {
                            (f.kind, f.min, f.max, f.step, f.value) = (
                                "number",
                                min.to_string(),
                                max.to_string(),
                                step.to_string(),
                                default.to_string(),
                            );
                        }
                        ParamKind::Int { min, max, default } => {
                            (f.kind, f.min, f.max, f.step, f.value) = (
                                "number",
                                min.to_string(),
                                max.to_string(),
                                "1".into(),
                                default.to_string(),
                            );
                        }
                        ParamKind::Bool { default } => (f.kind, f.checked) = ("checkbox", default),
                        ParamKind::Choice { options, default } => {
                            f.kind = "select";
                            f.options = options.iter().map(|o| (*o, *o == default)).collect();
                        }
                        ParamKind::Text { max_len, default } => {
                            (f.kind, f.maxlength, f.value) = ("text", max_len, default.into());
                        }
                        ParamKind::Color { default } => {
                            (f.kind, f.value) = ("color", default.into())
                        }
                    }
                    f
                })
                .collect(),
        })
        .collect();
    IndexPage {
        tasks,
        max_files: state.settings.max_files_per_batch,
        max_file: human_bytes(state.settings.max_file_bytes),
        max_batch: human_bytes(state.settings.max_batch_bytes),
        max_logo: human_bytes(jobs::pipeline::MAX_LOGO_BYTES as u64),
        max_file_bytes: state.settings.max_file_bytes,
        max_batch_bytes: state.settings.max_batch_bytes,
        max_logo_bytes: jobs::pipeline::MAX_LOGO_BYTES,
        accepted: jobs::pipeline::ACCEPTED,
        accept: accept_list(),
        error,
        webhooks: state.settings.webhook_secret.is_some(),
    }
}

/// `GET /`.
pub async fn index(State(state): State<AppState>) -> Response {
    render(StatusCode::OK, &index_page(&state, None))
}

/// `POST /batches`: the form. Answers 303 to the waiting page, or the form again with the problem.
pub async fn submit(
    State(state): State<AppState>,
    crate::owner::Peer(peer): crate::owner::Peer,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Response {
    let received = match multipart {
        Ok(multipart) => {
            match crate::owner::resolve_for(&state, &headers, peer, jobs::owners::Scope::Submit)
                .await
            {
                Ok(owner) => upload::receive(&state, &headers, &owner, multipart).await,
                Err(e) => Err(e),
            }
        }
        Err(refused) => Err(refused.into()),
    };
    match received {
        Ok(received) => Redirect::to(&format!("/batches/{}", received.batch)).into_response(),
        Err(e @ (AppError::BadRequest(_) | AppError::TooLarge(_))) => {
            let status = e.status();
            render(status, &index_page(&state, Some(e.user_message())))
        }
        Err(e) => PageError(e).into_response(),
    }
}

#[derive(Template)]
#[template(path = "batch.html")]
struct BatchPage {
    view: BatchView,
    /// The event log, shown folded (the page's script reloads it when opened).
    events: Vec<jobs::db::Event>,
}

/// An event as the page says it, as the script does (`EVENT_TEXT` in `static/app.js`): its
/// time, what happened, and to what.
pub struct EventLine {
    pub at: String,
    pub time: String,
    pub what: String,
    pub about: String,
}

/// What an event's kind means, in words.
fn event_text(kind: &str) -> &str {
    match kind {
        "batch.uploaded" => "uploaded",
        "image.started" => "started",
        "image.done" => "done",
        "image.failed" => "failed",
        "image.retried" => "to be tried again",
        "batch.archived" => "zip ready",
        "batch.failed" => "batch failed",
        "batch.cancelled" => "cancelled",
        "batch.downloaded" => "downloaded",
        "batch.expired" => "expired, files deleted",
        "webhook.delivered" => "webhook delivered",
        "webhook.failed" => "webhook failed",
        other => other,
    }
}

impl BatchPage {
    fn event_lines(&self) -> Vec<EventLine> {
        self.events
            .iter()
            .map(|e| {
                let mut about = Vec::new();
                about.extend(e.image.clone());
                about.extend(e.worker.as_ref().map(|w| format!("by {w}")));
                about.extend(e.attempt.map(|a| format!("attempt {a}")));
                about.extend(e.detail.clone());
                EventLine {
                    at: e.at.to_rfc3339(),
                    time: e.at.format("%H:%M:%S").to_string(),
                    what: event_text(&e.kind).to_owned(),
                    about: about.join(", "),
                }
            })
            .collect()
    }

    fn status_text(&self) -> String {
        status_text(self.view.status).into()
    }

    fn expiry_text(&self) -> String {
        match self.view.expires_at {
            Some(at) => {
                let minutes = (at - Utc::now()).num_minutes().max(0);
                format!(
                    "Available until {} UTC (about {minutes} min from now).",
                    at.format("%H:%M")
                )
            }
            None => String::new(),
        }
    }
}

fn status_text(status: BatchStatus) -> &'static str {
    match status {
        BatchStatus::Uploading | BatchStatus::Open => "Receiving your files…",
        BatchStatus::Queued => "Waiting for a worker…",
        BatchStatus::Processing => "Processing…",
        BatchStatus::Archiving => "Packing the zip…",
        BatchStatus::Done => "Ready.",
        BatchStatus::Failed => "Failed.",
        BatchStatus::Cancelled => "Cancelled.",
        BatchStatus::Expired => "Expired.",
    }
}

/// `GET /batches/{id}`: the waiting page; it updates itself (see `static/app.js`).
pub async fn batch(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let view = load_view(&state, &id).await?;
    let events = jobs::db::batch_events(&state.db, view.id, crate::api::MAX_EVENTS).await?;
    Ok(render(StatusCode::OK, &BatchPage { view, events }))
}

/// `GET /batches/{id}/download`: the zip, streamed from storage. Its errors are a page, or
/// the API's JSON when the client asks for JSON.
#[utoipa::path(
    get,
    path = "/batches/{id}/download",
    tag = "batches",
    summary = "Download a batch's zip",
    description = "The zip of the results (and `FAILED-FILES.txt` when some failed), streamed. Errors are an HTML page, or the API's JSON when the request says `Accept: application/json`.",
    params(("id" = String, Path, format = Uuid, description = "The batch's id")),
    responses(
        (status = 200, description = "The zip", body = Vec<u8>, content_type = "application/zip"),
        (status = 404, description = "No batch with this id (`not_found`)", body = crate::api::ErrorBody),
        (status = 409, description = "The zip is not ready yet (`not_ready`)", body = crate::api::ErrorBody),
        (status = 410, description = "The batch has expired (`expired`, with `status`)", body = crate::api::ErrorBody),
        (status = 503, description = "A dependency is down or too many requests at once (`unavailable`, `busy`)", body = crate::api::ErrorBody, headers(("Retry-After" = u32, description = "Seconds after which to try again"))),
        (status = 500, description = "Something went wrong on our side (`internal`)", body = crate::api::ErrorBody),
    )
)]
pub async fn download(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    match stream_archive(&state, &id).await {
        Ok(response) => response,
        Err(e) if crate::api::wants_json(&headers) => crate::api::ApiError(e).into_response(),
        Err(e) => PageError(e).into_response(),
    }
}

/// The zip, assembled from the batch's results as it is sent (`jobs::archive`): its length is
/// known ahead, and only a few results are read ahead of the one being sent.
async fn stream_archive(state: &AppState, id: &str) -> Result<Response, AppError> {
    let view = load_view(state, id).await?;
    if view.status != BatchStatus::Done {
        return Err(AppError::Conflict(format!(
            "the zip is not ready yet (the batch is {}); this page will have a link when it is",
            view.status
        )));
    }
    let at = view.finished_at.unwrap_or(view.created_at);
    let zip = jobs::archive::BatchZip::load(&state.db, view.id, at).await?;
    let len = zip.len();
    let stream = zip.open(state.storage.clone()).await.map_err(|e| match e {
        jobs::archive::ZipError::Storage(e) if e.is_not_found() => AppError::Internal(
            anyhow::anyhow!("a result of batch {} is missing: {e}", view.id),
        ),
        jobs::archive::ZipError::Storage(e) => e.into(),
        other => AppError::Internal(other.into()),
    })?;
    if let Err(e) = jobs::db::record_event(&state.db, view.id, "batch.downloaded", None).await {
        tracing::warn!(batch = %view.id, error = %e, "could not record a download");
    }
    let batch = view.id;
    let mut sent = 0u64;
    let stream = stream.map(move |piece| match piece {
        Ok(bytes) => {
            sent += bytes.len() as u64;
            jobs::metrics::DOWNLOAD_BYTES.inc_by(bytes.len() as u64);
            if sent == len {
                jobs::metrics::DOWNLOADS
                    .with_label_values(&["complete"])
                    .inc();
            }
            Ok(bytes)
        }
        Err(e) => {
            // The client sees the download break off (fewer bytes than its length), never a
            // wrong zip.
            tracing::error!(%batch, error = %e, "a zip broke off");
            jobs::metrics::DOWNLOADS
                .with_label_values(&["broken"])
                .inc();
            Err(std::io::Error::other(e.to_string()))
        }
    });
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/zip"),
    );
    let short = &view.id.to_string()[..8];
    if let Ok(v) =
        HeaderValue::from_str(&format!("attachment; filename=\"watermarked-{short}.zip\""))
    {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    Ok(response)
}

/// Any path no route takes: the API's JSON under `/api/`, a page elsewhere.
pub async fn no_route(uri: axum::http::Uri) -> Response {
    if is_api(uri.path()) {
        let message = format!("the API has no route {}", uri.path());
        crate::api::ApiError(AppError::NoRoute(message)).into_response()
    } else {
        PageError(AppError::NotFound).into_response()
    }
}

/// A method a route does not take: the API's JSON under `/api/`, a page elsewhere.
pub async fn wrong_method(uri: axum::http::Uri) -> Response {
    if is_api(uri.path()) {
        crate::api::ApiError(AppError::MethodNotAllowed).into_response()
    } else {
        PageError(AppError::MethodNotAllowed).into_response()
    }
}

fn is_api(path: &str) -> bool {
    path == "/api" || path.starts_with("/api/")
}

pub async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../static/app.js"),
    )
}

pub async fn style() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../static/app.css"),
    )
}

pub async fn monitor_script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../static/monitor.js"),
    )
}

pub async fn monitor_style() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../static/monitor.css"),
    )
}
