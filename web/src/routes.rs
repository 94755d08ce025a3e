//! The router: every route, its body limits and pace, and the headers every answer carries.

use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderName, HeaderValue};
use axum::routing::{get, post, put};
use axum::Router;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

use crate::state::AppState;
use crate::{access, api, live, monitor, open, openapi, pages, preview};

pub fn router(state: AppState) -> Router {
    // Upload bodies must keep a pace (UPLOAD_MIN_BYTES_PER_SECOND over UPLOAD_WINDOW_SECONDS).
    let window = Duration::from_secs(state.settings.upload_window_seconds);
    let min_rate = state.settings.upload_min_bytes_per_second;
    let paced = axum::middleware::map_request(move |request: axum::extract::Request| async move {
        crate::pace::pace(request, window, min_rate)
    });
    Router::new()
        .route("/", get(pages::index))
        .route("/batches", post(pages::submit).layer(paced.clone()))
        .route("/batches/{id}", get(pages::batch))
        .route("/batches/{id}/download", get(pages::download))
        .route("/static/app.js", get(pages::script))
        .route("/static/app.css", get(pages::style))
        .route("/api/batches/{id}/stream", get(live::stream))
        .route("/api/preview", post(preview::preview).layer(paced.clone()))
        .route("/api/batches", post(api::submit).layer(paced.clone()))
        .route("/api/batches/open", post(open::create))
        .route(
            "/api/batches/{id}/files/{file_id}",
            put(open::put_file).layer(paced),
        )
        .route("/api/batches/{id}/close", post(open::close))
        .route("/api/batches/{id}/images", get(open::images))
        .route("/api/batches/{id}", get(api::status))
        .route("/api/batches/{id}/events", get(api::events))
        .route("/api/tasks", get(api::tasks))
        .route("/api/stats", get(monitor::stats_api))
        .route("/api/monitor", get(monitor::monitor_api))
        .route("/api/openapi.json", get(openapi::document))
        .route("/api/docs", get(openapi::docs))
        .route("/monitor", get(monitor::page))
        .route("/monitor/sign-in", post(monitor::sign_in))
        .route("/monitor/sign-out", post(monitor::sign_out))
        .route("/static/monitor.js", get(pages::monitor_script))
        .route("/static/monitor.css", get(pages::monitor_style))
        .merge(
            Router::new()
                .route("/healthz", get(api::healthz))
                .route("/readyz", get(api::readyz))
                .route("/metrics", get(api::metrics))
                .route_layer(axum::middleware::map_response(access::quiet)),
        )
        .fallback(pages::no_route)
        .method_not_allowed_fallback(pages::wrong_method)
        // Uploads are counted and limited as they stream (MAX_BATCH_BYTES), not buffered.
        .layer(DefaultBodyLimit::disable())
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
