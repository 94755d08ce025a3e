//! Request ids and the access log. Every request gets an id (`X-Request-Id`: the one a proxy
//! sent, when it is short and plain, else a fresh one), returned in the answer and carried by
//! every log line of the request; each answer is logged at `info` with its route, status and
//! time (health checks and scrapes at `debug`). Query strings are never logged.

use std::time::Duration;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, Response};
use tower_http::request_id::{MakeRequestId, RequestId};
use tracing::Span;

pub const REQUEST_ID: &str = "x-request-id";

/// Makes a fresh id for a request that came without a fit one.
#[derive(Clone, Copy, Default)]
pub struct Ids;

impl MakeRequestId for Ids {
    fn make_request_id<B>(&mut self, _request: &axum::http::Request<B>) -> Option<RequestId> {
        let id = uuid_simple();
        HeaderValue::from_str(&id).ok().map(RequestId::new)
    }
}

/// A random id of 32 hex digits.
fn uuid_simple() -> String {
    jobs::BatchId::new().0.simple().to_string()
}

/// Whether an incoming id is fit to keep: short, and only letters, digits, `-`, `_`, `.`.
pub fn plain_id(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Drops an incoming `X-Request-Id` that is not [`plain_id`], so that a fresh one is made.
pub fn drop_unfit_id(mut request: Request) -> Request {
    if let Some(value) = request.headers().get(REQUEST_ID) {
        if !plain_id(value) {
            request.headers_mut().remove(REQUEST_ID);
        }
    }
    request
}

/// The span every log line of a request is in: its id, method and route.
pub fn span(request: &axum::http::Request<axum::body::Body>) -> Span {
    let id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str)
        .unwrap_or("unmatched");
    tracing::info_span!(
        "request",
        id = %id,
        method = %request.method(),
        route = %route,
        path = %request.uri().path(),
    )
}

/// The access log line of an answer.
pub fn log<B>(response: &Response<B>, latency: Duration, _span: &Span) {
    let status = response.status().as_u16();
    let ms = format_args!("{:.1}", latency.as_secs_f64() * 1000.0);
    if response.extensions().get::<Quiet>().is_some() {
        tracing::debug!(status, %ms, "answered");
    } else {
        tracing::info!(status, %ms, "answered");
    }
}

/// Marks an answer whose access log line goes at `debug` (health checks and metrics scrapes,
/// which come every few seconds).
#[derive(Clone, Copy, Debug)]
pub struct Quiet;

/// Marks the answer [`Quiet`].
pub async fn quiet(mut response: axum::response::Response) -> axum::response::Response {
    response.extensions_mut().insert(Quiet);
    response
}

/// Counts each answer in `watermark_http_requests_total` and times it in
/// `watermark_http_request_seconds`, by route pattern (never the ids in a path) and method.
pub async fn count(request: Request, next: axum::middleware::Next) -> axum::response::Response {
    use jobs::metrics::{HTTP_REQUESTS, HTTP_SECONDS};
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let method: &'static str = match request.method().as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    };
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let status = response.status();
    HTTP_REQUESTS
        .with_label_values(&[route.as_str(), method, status.as_str()])
        .inc();
    HTTP_SECONDS
        .with_label_values(&[route.as_str(), method])
        .observe(started.elapsed().as_secs_f64());
    response
}
