//! The router: every route, its body limits and pace, and the headers every answer carries.

use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::extract::Request;
use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put, MethodRouter};
use axum::Router;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

use crate::state::AppState;
use crate::{access, api, live, monitor, open, openapi, pages, preview};

/// The body of a small form (the monitor's sign-in).
pub const MAX_FORM_BYTES: usize = 4 * 1024;
/// The body of a request that carries nothing (GET, and POSTs without a form).
pub const MAX_TINY_BYTES: usize = 1024;

/// `route` with a body of at most `limit` bytes: a body whose `Content-Length` says it is
/// larger is refused (413) before a byte of it is read, and one that grows larger as it arrives
/// (chunked) is cut at the limit by the extractors that read it (413 too).
fn limited(route: MethodRouter<AppState>, limit: usize) -> MethodRouter<AppState> {
    route
        .layer::<_, std::convert::Infallible>(axum::middleware::map_request(
            move |r: Request| async move { declared(r, limit) },
        ))
        .layer(DefaultBodyLimit::max(limit))
}

/// A route that reads no body: [`MAX_TINY_BYTES`].
fn tiny(route: MethodRouter<AppState>) -> MethodRouter<AppState> {
    limited(route, MAX_TINY_BYTES)
}

/// Refuses a request whose `Content-Length` is over `limit`.
#[allow(clippy::result_large_err)]
fn declared(request: Request, limit: usize) -> Result<Request, Response> {
    let length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match length {
        Some(n) if n > limit as u64 => {
            Err(api::ApiError(crate::error::AppError::TooLarge(format!(
                "the body is larger than this route's limit of {}",
                crate::format::human_bytes(limit as u64)
            )))
            .into_response())
        }
        _ => Ok(request),
    }
}

pub fn router(state: AppState) -> Router {
    // Upload bodies must keep a pace (UPLOAD_MIN_BYTES_PER_SECOND over UPLOAD_WINDOW_SECONDS).
    let window = Duration::from_secs(state.settings.upload_window_seconds);
    let min_rate = state.settings.upload_min_bytes_per_second;
    let paced = axum::middleware::map_request(move |request: Request| async move {
        crate::pace::pace(request, window, min_rate)
    });
    // Every route has its own body limit (see [`limited`]); uploads alone have none here, being
    // counted and limited as they stream (MAX_BATCH_BYTES), never buffered.
    let upload = |route: MethodRouter<AppState>| route.layer(DefaultBodyLimit::disable());
    Router::new()
        .route("/", tiny(get(pages::index)))
        .route("/batches", upload(post(pages::submit).layer(paced.clone())))
        .route("/batches/{id}", tiny(get(pages::batch)))
        .route("/batches/{id}/download", tiny(get(pages::download)))
        .route("/static/app.js", tiny(get(pages::script)))
        .route("/static/app.css", tiny(get(pages::style)))
        .route("/api/batches/{id}/stream", tiny(get(live::stream)))
        .route(
            "/api/preview",
            limited(
                post(preview::preview).layer(paced.clone()),
                preview::MAX_BODY_BYTES,
            ),
        )
        .route("/api/batches", upload(post(api::submit).layer(paced.clone())))
        // The choices, JSON or multipart with a logo: the logo's limit and the fields' budget.
        .route(
            "/api/batches/open",
            limited(post(open::create), jobs::pipeline::MAX_LOGO_BYTES + 1024 * 1024),
        )
        // One file, counted and limited as it streams (MAX_FILE_BYTES, MAX_BATCH_BYTES).
        .route(
            "/api/batches/{id}/files/{file_id}",
            upload(put(open::put_file).layer(paced)),
        )
        .route("/api/batches/{id}/close", tiny(post(open::close)))
        .route("/api/batches/{id}/images", tiny(get(open::images)))
        .route("/api/batches/{id}", tiny(get(api::status)))
        .route("/api/batches/{id}/cancel", tiny(post(api::cancel)))
        .route("/api/batches/{id}/events", tiny(get(api::events)))
        .route("/api/tasks", tiny(get(api::tasks)))
        .route("/api/usage", tiny(get(api::usage)))
        .route("/api/stats", tiny(get(monitor::stats_api)))
        .route("/api/monitor", tiny(get(monitor::monitor_api)))
        .route("/api/openapi.json", tiny(get(openapi::document)))
        .route("/api/docs", tiny(get(openapi::docs)))
        .route("/monitor", tiny(get(monitor::page)))
        .route("/monitor/sign-in", limited(post(monitor::sign_in), MAX_FORM_BYTES))
        .route("/monitor/sign-out", tiny(post(monitor::sign_out)))
        .route("/static/monitor.js", tiny(get(pages::monitor_script)))
        .route("/static/monitor.css", tiny(get(pages::monitor_style)))
        .merge(
            Router::new()
                .route("/healthz", tiny(get(api::healthz)))
                .route("/readyz", tiny(get(api::readyz)))
                .route("/metrics", tiny(get(api::metrics)))
                .route_layer(axum::middleware::map_response(access::quiet)),
        )
        .fallback(pages::no_route)
        .method_not_allowed_fallback(pages::wrong_method)
        // Whatever no route limits otherwise (the fallbacks): a tiny body.
        .layer(DefaultBodyLimit::max(MAX_TINY_BYTES))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; \
                 object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
            ),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(axum::middleware::from_fn(access::count))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(access::span)
                .on_request(())
                .on_response(access::log),
        )
        .layer(PropagateRequestIdLayer::new(HeaderName::from_static(
            access::REQUEST_ID,
        )))
        .layer(SetRequestIdLayer::new(
            HeaderName::from_static(access::REQUEST_ID),
            access::Ids,
        ))
        .layer(axum::middleware::map_request(|r| async move {
            access::drop_unfit_id(r)
        }))
        .with_state(state)
}
