//! Errors of the web tier: each has a status and a message meant for the user. Internal errors
//! are logged once, with their cause, and shown as an opaque message.

use axum::http::StatusCode;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("no batch with this id")]
    NotFound,
    /// A path that is not part of the API, or a method a path does not take.
    #[error("{0}")]
    NoRoute(String),
    #[error("this path does not take that method")]
    MethodNotAllowed,
    /// A credential is missing, unknown or revoked (the monitor's token, an API key).
    #[error("{0}")]
    Unauthorized(String),
    /// The credential is good but does not allow this (a key without the scope, a batch of
    /// another owner).
    #[error("{0}")]
    Forbidden(String),
    /// An owner's limit is reached: try again after `retry_after` seconds.
    #[error("{message}")]
    RateLimited { message: String, retry_after: u32 },
    /// The batch has ended already, so this no longer applies (cancelling a finished batch,
    /// adding files to a closed one).
    #[error("{0}")]
    Finished(String),
    #[error(
        "this batch has expired: its files were deleted {} after it finished",
        crate::state::kept_for()
    )]
    Gone,
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
    /// The request's body came too slowly.
    #[error("{0}")]
    Timeout(String),
    /// Too many uploads at once: try again in a few seconds.
    #[error("{0}")]
    Busy(String),
    #[error("something went wrong on our side")]
    Internal(#[source] anyhow::Error),
}

/// Every `code` of the API's errors, with its HTTP status and what it means: the OpenAPI
/// document lists them in `ErrorBody`'s description (a test keeps this in step with
/// [`AppError::code`]).
pub const CODES: [(&str, u16, &str); 15] = [
    (
        "bad_request",
        400,
        "the request is wrong (a field, the pipeline, the logo, the query)",
    ),
    (
        "too_slow",
        408,
        "the upload came too slowly (UPLOAD_MIN_BYTES_PER_SECOND)",
    ),
    (
        "too_large",
        413,
        "a file, the batch, the choices or the count of files is over a limit",
    ),
    (
        "unauthorized",
        401,
        "the API key (or the monitoring token) is missing, unknown or revoked",
    ),
    (
        "forbidden",
        403,
        "the key may not do this (a scope it lacks, or a batch it does not own)",
    ),
    (
        "rate_limited",
        429,
        "an owner's limit is reached (images queued, batches per minute, bytes per day); see Retry-After",
    ),
    (
        "finished",
        409,
        "the batch has ended (or is closed) already, so this no longer applies",
    ),
    ("not_found", 404, "no batch with this id"),
    (
        "no_such_route",
        404,
        "no such path under /api (or the monitor is off)",
    ),
    (
        "method_not_allowed",
        405,
        "the path does not take this method",
    ),
    (
        "expired",
        410,
        "the batch's files were deleted after RESULT_TTL_SECONDS",
    ),
    ("not_ready", 409, "the zip is not ready yet"),
    (
        "unavailable",
        503,
        "a dependency (Postgres, Redis, S3) is down; see Retry-After",
    ),
    (
        "busy",
        503,
        "too many uploads or previews at once; see Retry-After",
    ),
    ("internal", 500, "something went wrong on our side (logged)"),
];

impl AppError {
    /// The monitor and the statistics without their token.
    pub fn monitor_token() -> Self {
        Self::Unauthorized(
            "this needs the monitoring token (MONITOR_TOKEN) or an admin key, as \
             `Authorization: Bearer <token>`"
                .into(),
        )
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NotFound | Self::NoRoute(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Finished(_) => StatusCode::CONFLICT,
            Self::Gone => StatusCode::GONE,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Unavailable(_) | Self::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The machine-readable name of the error, in the API's `{"error": {"code": …}}`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::TooLarge(_) => "too_large",
            Self::NotFound => "not_found",
            Self::NoRoute(_) => "no_such_route",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::RateLimited { .. } => "rate_limited",
            Self::Finished(_) => "finished",
            Self::Gone => "expired",
            Self::Conflict(_) => "not_ready",
            Self::Unavailable(_) => "unavailable",
            Self::Timeout(_) => "too_slow",
            Self::Busy(_) => "busy",
            Self::Internal(_) => "internal",
        }
    }

    /// Seconds after which trying again makes sense (`Retry-After`), for answers that say so.
    pub fn retry_after(&self) -> Option<u32> {
        match self {
            Self::Busy(_) => Some(5),
            Self::Unavailable(_) => Some(30),
            Self::RateLimited { retry_after, .. } => Some((*retry_after).max(1)),
            _ => None,
        }
    }

    /// Adds `Retry-After` to `response` when this error says when to try again.
    pub fn add_retry_after(&self, response: &mut axum::response::Response) {
        if let Some(seconds) = self.retry_after() {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
    }

    /// The text shown to the user; logs internal errors (once) on the way.
    pub fn user_message(&self) -> String {
        if let Self::Internal(e) = self {
            tracing::error!(error = ?e, "internal error");
        }
        self.to_string()
    }
}

/// A request the extractors refused (a body that is not multipart, a query that does not
/// parse): the client's mistake, said in axum's words.
impl From<axum::extract::multipart::MultipartRejection> for AppError {
    fn from(e: axum::extract::multipart::MultipartRejection) -> Self {
        Self::BadRequest(format!("the upload could not be read: {}", e.body_text()))
    }
}

impl From<axum::extract::rejection::QueryRejection> for AppError {
    fn from(e: axum::extract::rejection::QueryRejection) -> Self {
        Self::BadRequest(e.body_text())
    }
}

impl From<axum::extract::rejection::PathRejection> for AppError {
    fn from(e: axum::extract::rejection::PathRejection) -> Self {
        Self::BadRequest(e.body_text())
    }
}

/// An owner's limit reached: `429 rate_limited`, with `Retry-After`.
impl From<jobs::owners::LimitHit> for AppError {
    fn from(hit: jobs::owners::LimitHit) -> Self {
        Self::RateLimited {
            message: hit.message(),
            retry_after: hit.retry_after(),
        }
    }
}

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            e if jobs::db::is_retryable(&e) => {
                tracing::warn!(error = %e, "Postgres unavailable");
                Self::Unavailable(
                    "the database is unavailable; please try again in a moment".into(),
                )
            }
            other => Self::Internal(other.into()),
        }
    }
}

impl From<jobs::storage::StorageError> for AppError {
    fn from(e: jobs::storage::StorageError) -> Self {
        if e.is_retryable() {
            tracing::warn!(error = %e, "storage unavailable");
            Self::Unavailable("file storage is unavailable; please try again in a moment".into())
        } else {
            Self::Internal(e.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_its_code_and_status_listed() {
        let all = [
            AppError::BadRequest(String::new()),
            AppError::TooLarge(String::new()),
            AppError::NotFound,
            AppError::NoRoute(String::new()),
            AppError::MethodNotAllowed,
            AppError::Unauthorized(String::new()),
            AppError::Forbidden(String::new()),
            AppError::RateLimited {
                message: String::new(),
                retry_after: 1,
            },
            AppError::Finished(String::new()),
            AppError::Gone,
            AppError::Conflict(String::new()),
            AppError::Unavailable(String::new()),
            AppError::Timeout(String::new()),
            AppError::Busy(String::new()),
            AppError::Internal(anyhow::anyhow!("x")),
        ];
        for e in &all {
            assert!(
                CODES
                    .iter()
                    .any(|(code, status, _)| *code == e.code() && *status == e.status().as_u16()),
                "{} ({}) is not in CODES",
                e.code(),
                e.status()
            );
        }
        assert_eq!(all.len(), CODES.len(), "CODES lists a code no error has");
    }
}
