//! The operators' views: the monitoring page (`/monitor`), its JSON (`GET /api/monitor`) and
//! statistics over a time range (`GET /api/stats`). All are off (404) unless `MONITOR_TOKEN` is
//! set, and need that token: as `Authorization: Bearer <token>`, or, for the page, through its
//! sign-in form, which sets an HttpOnly, same-site cookie holding a digest of the token (never
//! the token itself; nor does the token ever go in a link).

use askama::Template;
use axum::extract::{Form, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use chrono::{DateTime, Duration, Utc};
use secrecy::ExposeSecret;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use jobs::owners::{self, KeyLookup};
use jobs::stats::{self, Snapshot, Stats};

use crate::api::{ApiError, ApiQuery};
use crate::error::AppError;
use crate::format::human_bytes;
use crate::pages::{render, PageError};
use crate::state::AppState;

const COOKIE: &str = "wm_monitor";

/// Whether a request may see the monitor.
#[derive(Debug, PartialEq, Eq)]
enum Gate {
    /// `MONITOR_TOKEN` is not set.
    Off,
    Open,
    Closed,
}

fn digest(purpose: &str, secret: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(purpose.as_bytes());
    h.update([0]);
    h.update(secret.as_bytes());
    h.finalize().into()
}

/// The cookie's value for `token`: a digest, so that the cookie is not the token.
fn session_value(token: &str) -> String {
    hex::encode(digest("watermark-monitor-session", token))
}

/// Equal, in time that does not depend on where they differ (both are hashed first).
fn same(a: &str, b: &str) -> bool {
    digest("compare", a) == digest("compare", b)
}

fn gate(state: &AppState, headers: &HeaderMap) -> Gate {
    let Some(token) = &state.settings.monitor_token else {
        return Gate::Off;
    };
    let token = token.expose_secret();
    let bearer = crate::owner::bearer(headers);
    if bearer.is_some_and(|presented| same(presented, token)) {
        return Gate::Open;
    }
    let session = session_value(token);
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .any(|(name, value)| name == COOKIE && same(value, &session));
    if cookie {
        Gate::Open
    } else {
        Gate::Closed
    }
}

/// Why a JSON route refuses this request, if it does: an admin key opens it, like the token;
/// otherwise 404 when the monitor is off, 401 (with `WWW-Authenticate`) without the token, and
/// 403 for a key without the `admin` scope.
async fn api_refusal(state: &AppState, headers: &HeaderMap) -> Option<Response> {
    let gate = gate(state, headers);
    if gate != Gate::Open {
        if let Some(key) = crate::owner::bearer(headers).filter(|k| owners::looks_like_key(k)) {
            let refusal = match owners::by_key(&state.db, key).await {
                Ok(KeyLookup::Valid(owner)) if owner.is_admin() => return None,
                Ok(KeyLookup::Valid(_)) => AppError::Forbidden(
                    "this key does not have the `admin` scope, which the monitor needs".into(),
                ),
                Ok(KeyLookup::Revoked) => {
                    AppError::Unauthorized("this API key has been revoked".into())
                }
                Ok(KeyLookup::Unknown) => AppError::monitor_token(),
                Err(e) => e.into(),
            };
            return Some(ApiError(refusal).into_response());
        }
    }
    match gate {
        Gate::Open => None,
        Gate::Off => Some(
            ApiError(AppError::NoRoute(
                "the monitor is off on this server (MONITOR_TOKEN is not set)".into(),
            ))
            .into_response(),
        ),
        Gate::Closed => {
            let mut response = ApiError(AppError::monitor_token()).into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"monitor\""),
            );
            Some(response)
        }
    }
}

/// The query of `GET /api/stats` and of the page: a range, as RFC 3339 (ISO 8601) times.
#[derive(Debug, Deserialize)]
pub struct RangeQuery {
    from: Option<String>,
    to: Option<String>,
    /// The page's shortcut: `1h`, `24h`, `7d`, `30d` back from now.
    range: Option<String>,
}

impl RangeQuery {
    /// The range asked for: `to` defaults to now, `from` to a day before `to`.
    fn resolve(&self) -> Result<(DateTime<Utc>, DateTime<Utc>), AppError> {
        let parse = |name: &str, value: &str| {
            DateTime::parse_from_rfc3339(value)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| {
                    AppError::BadRequest(format!(
                        "{name} is not an ISO 8601 time such as 2026-11-30T09:00:00Z ({e})"
                    ))
                })
        };
        let to = match &self.to {
            Some(t) => parse("to", t)?,
            None => Utc::now(),
        };
        let from = match (&self.from, self.range.as_deref()) {
            (Some(f), _) => parse("from", f)?,
            (None, Some(r)) => to - shortcut(r)?,
            (None, None) => to - Duration::days(1),
        };
        if from >= to {
            return Err(AppError::BadRequest("from must be before to".into()));
        }
        if to - from > Duration::days(stats::MAX_RANGE_DAYS) {
            return Err(AppError::BadRequest(format!(
                "the range is longer than {} days",
                stats::MAX_RANGE_DAYS
            )));
        }
        Ok((from, to))
    }
}

const SHORTCUTS: [(&str, i64); 4] = [("1h", 1), ("24h", 24), ("7d", 24 * 7), ("30d", 24 * 30)];

fn shortcut(range: &str) -> Result<Duration, AppError> {
    SHORTCUTS
        .iter()
        .find(|(name, _)| *name == range)
        .map(|(_, hours)| Duration::hours(*hours))
        .ok_or_else(|| AppError::BadRequest("range is one of 1h, 24h, 7d, 30d".into()))
}

/// `GET /api/stats?from=&to=`: batches, images, bytes in and out, failures by reason, mean and
/// 95th-percentile times, and a series to chart, over the range.
#[utoipa::path(
    get,
    path = "/api/stats",
    tag = "monitoring",
    summary = "Statistics over a time range",
    description = "Batches, images, bytes in and out, failures by reason, mean and p95 times, and a series to chart. `to` defaults to now, `from` to a day before `to` (or `range` before it); 366 days at most. Needs MONITOR_TOKEN or an API key with the `admin` scope; without either, `404` when the server has no MONITOR_TOKEN.",
    params(
        ("from" = Option<String>, Query, format = DateTime, description = "Start, ISO 8601 (RFC 3339), e.g. 2026-11-30T09:00:00Z"),
        ("to" = Option<String>, Query, format = DateTime, description = "End, ISO 8601 (RFC 3339); default now"),
        ("range" = Option<String>, Query, description = "Instead of `from`: `1h`, `24h`, `7d` or `30d` before `to`"),
    ),
    security(("monitor token" = []), ("api key" = [])),
    responses(
        (status = 200, description = "The statistics", body = Stats),
        (status = 400, description = "A bad time or range (`bad_request`)", body = crate::api::ErrorBody),
        (status = 401, description = "Without the monitoring token or an admin key (`unauthorized`; `WWW-Authenticate: Bearer`)", body = crate::api::ErrorBody),
        (status = 403, description = "An API key without the `admin` scope (`forbidden`)", body = crate::api::ErrorBody),
        (status = 404, description = "The monitor is off: MONITOR_TOKEN is not set (`no_such_route`)", body = crate::api::ErrorBody),
        (status = 503, description = "A dependency is down or too many requests at once (`unavailable`, `busy`)", body = crate::api::ErrorBody, headers(("Retry-After" = u32, description = "Seconds after which to try again"))),
        (status = 500, description = "Something went wrong on our side (`internal`)", body = crate::api::ErrorBody),
    )
)]
pub async fn stats_api(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<RangeQuery>,
) -> Response {
    if let Some(refused) = api_refusal(&state, &headers).await {
        return refused;
    }
    let result: Result<Stats, AppError> = async {
        let (from, to) = query.resolve()?;
        Ok(stats::over(&state.db, from, to).await?)
    }
    .await;
    match result {
        Ok(stats) => Json(stats).into_response(),
        Err(e) => ApiError(e).into_response(),
    }
}

/// `GET /api/monitor`: what the monitoring page shows, as JSON.
#[utoipa::path(
    get,
    path = "/api/monitor",
    tag = "monitoring",
    summary = "What the monitoring page shows",
    description = "Live workers, the backlog, throughput over 1, 5 and 60 minutes, image times, failures by reason, recent batches and the API keys (`keys`: prefix, label, scopes, weight, limits, created, last used, revoked; never a key or its hash). Needs MONITOR_TOKEN or an API key with the `admin` scope; without either, `404` when the server has no MONITOR_TOKEN.",
    security(("monitor token" = []), ("api key" = [])),
    responses(
        (status = 200, description = "The snapshot (workers, backlog, throughput, failures, recent batches)", body = Object),
        (status = 401, description = "Without the monitoring token or an admin key (`unauthorized`; `WWW-Authenticate: Bearer`)", body = crate::api::ErrorBody),
        (status = 403, description = "An API key without the `admin` scope (`forbidden`)", body = crate::api::ErrorBody),
        (status = 404, description = "The monitor is off: MONITOR_TOKEN is not set (`no_such_route`)", body = crate::api::ErrorBody),
        (status = 503, description = "A dependency is down or too many requests at once (`unavailable`, `busy`)", body = crate::api::ErrorBody, headers(("Retry-After" = u32, description = "Seconds after which to try again"))),
        (status = 500, description = "Something went wrong on our side (`internal`)", body = crate::api::ErrorBody),
    )
)]
pub async fn monitor_api(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(refused) = api_refusal(&state, &headers).await {
        return refused;
    }
    let result: Result<serde_json::Value, AppError> = async {
        let (snapshot, keys) = tokio::try_join!(stats::snapshot(&state.db), keys(&state))?;
        let mut json = serde_json::to_value(snapshot).map_err(|e| AppError::Internal(e.into()))?;
        json["keys"] = serde_json::to_value(keys).map_err(|e| AppError::Internal(e.into()))?;
        Ok(json)
    }
    .await;
    match result {
        Ok(json) => Json(json).into_response(),
        Err(e) => ApiError(e).into_response(),
    }
}

/// An API key as the monitor shows it: never the key, nor its hash.
#[derive(Debug, serde::Serialize)]
pub struct KeyRow {
    pub prefix: String,
    pub label: String,
    pub scopes: Vec<owners::Scope>,
    pub weight: f32,
    /// Its limits, the server's defaults filled in.
    pub limits: owners::Limits,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Every key, newest first.
async fn keys(state: &AppState) -> Result<Vec<KeyRow>, sqlx::Error> {
    Ok(owners::list_keys(&state.db)
        .await?
        .into_iter()
        .map(|k| KeyRow {
            limits: k.limits.resolve(&state.settings),
            prefix: k.name,
            label: k.label,
            scopes: k.scopes,
            weight: k.weight,
            created_at: k.created_at,
            last_used_at: k.last_used_at,
            revoked_at: k.revoked_at,
        })
        .collect())
}

#[derive(Template)]
#[template(path = "monitor.html")]
struct MonitorPage {
    snapshot: Snapshot,
    keys: Vec<KeyRow>,
    stats: Stats,
    range: String,
    ranges: Vec<&'static str>,
    chart: String,
    hour_chart: String,
}

impl MonitorPage {
    fn seconds(&self, value: &Option<f64>) -> String {
        match value {
            Some(s) if *s < 1.0 => format!("{:.0} ms", s * 1000.0),
            Some(s) => format!("{s:.2} s"),
            None => "–".into(),
        }
    }

    fn bytes(&self, n: &i64) -> String {
        human_bytes((*n).max(0) as u64)
    }

    fn ago(&self, at: &DateTime<Utc>) -> String {
        let seconds = (self.snapshot.at - *at).num_seconds().max(0);
        match seconds {
            s if s < 90 => format!("{s} s ago"),
            s if s < 90 * 60 => format!("{} min ago", s / 60),
            s => format!("{} h ago", s / 3600),
        }
    }

    fn time(&self, at: &DateTime<Utc>) -> String {
        at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
    }

    fn scopes(&self, scopes: &[owners::Scope]) -> String {
        scopes
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[derive(Template)]
#[template(path = "monitor_login.html")]
struct LoginPage {
    error: Option<&'static str>,
}

/// `GET /monitor[?range=24h]`: the page, the sign-in form, or 404 when the monitor is off.
pub async fn page(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<RangeQuery>,
) -> Response {
    match gate(&state, &headers) {
        Gate::Off => return PageError(AppError::NotFound).into_response(),
        Gate::Closed => return login_page(StatusCode::UNAUTHORIZED, None),
        Gate::Open => {}
    }
    let result: Result<Response, AppError> = async {
        let range = query.range.clone().unwrap_or_else(|| "1h".into());
        let to = Utc::now();
        let from = to - shortcut(&range)?;
        let (snapshot, stats, keys) = tokio::try_join!(
            stats::snapshot(&state.db),
            stats::over(&state.db, from, to),
            keys(&state)
        )?;
        let chart = crate::chart::images_per_bucket(
            &stats.series,
            stats.bucket_seconds,
            &format!("Images finished over the last {range}"),
        );
        let hour_chart = crate::chart::images_per_bucket(
            &snapshot.series,
            60,
            "Images finished per minute over the last hour",
        );
        let mut response = render(
            StatusCode::OK,
            &MonitorPage {
                snapshot,
                keys,
                stats,
                range,
                ranges: SHORTCUTS.iter().map(|(name, _)| *name).collect(),
                chart,
                hour_chart,
            },
        );
        response.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, no-store"),
        );
        Ok(response)
    }
    .await;
    result.unwrap_or_else(|e| PageError(e).into_response())
}

fn login_page(status: StatusCode, error: Option<&'static str>) -> Response {
    let mut response = render(status, &LoginPage { error });
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    response
}

#[derive(Deserialize)]
pub struct SignIn {
    token: String,
}

/// `POST /monitor/sign-in`: the token from the form; sets the session cookie.
pub async fn sign_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<SignIn>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Some(token) = &state.settings.monitor_token else {
        return PageError(AppError::NotFound).into_response();
    };
    // The body is limited by its route (a few KiB); a longer one is cut, never buffered.
    let form = match form {
        Ok(Form(form)) => form,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return PageError(AppError::TooLarge(
                "the sign-in form is larger than its limit of 4 KiB".into(),
            ))
            .into_response()
        }
        Err(e) => {
            return PageError(AppError::BadRequest(format!(
                "the sign-in form could not be read: {}",
                e.body_text()
            )))
            .into_response()
        }
    };
    let token = token.expose_secret();
    if !same(form.token.trim(), token) {
        tracing::warn!("monitor: a sign-in with a wrong token");
        return login_page(StatusCode::UNAUTHORIZED, Some("That is not the token."));
    }
    // `Secure` when the browser reached us over HTTPS (through the proxy).
    let https = headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let cookie = format!(
        "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age=43200{}",
        session_value(token),
        if https { "; Secure" } else { "" }
    );
    let mut response = Redirect::to("/monitor").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

/// `POST /monitor/sign-out`: forgets the session cookie.
pub async fn sign_out() -> Response {
    let mut response = Redirect::to("/monitor").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("wm_monitor=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_refuse_what_makes_no_sense() {
        let q = |from: Option<&str>, to: Option<&str>, range: Option<&str>| RangeQuery {
            from: from.map(Into::into),
            to: to.map(Into::into),
            range: range.map(Into::into),
        };
        let (from, to) = q(
            Some("2026-11-30T08:00:00Z"),
            Some("2026-11-30T09:00:00+00:00"),
            None,
        )
        .resolve()
        .unwrap();
        assert_eq!(to - from, Duration::hours(1));
        let (from, to) = q(None, Some("2026-11-30T09:00:00Z"), Some("7d"))
            .resolve()
            .unwrap();
        assert_eq!(to - from, Duration::days(7));
        let (from, to) = q(None, None, None).resolve().unwrap();
        assert_eq!(to - from, Duration::days(1));
        for (bad, says) in [
            (q(Some("yesterday"), None, None), "ISO 8601"),
            (
                q(
                    Some("2026-11-30T10:00:00Z"),
                    Some("2026-11-30T09:00:00Z"),
                    None,
                ),
                "before",
            ),
            (
                q(
                    Some("2020-01-01T00:00:00Z"),
                    Some("2026-01-01T00:00:00Z"),
                    None,
                ),
                "longer",
            ),
            (q(None, None, Some("1y")), "range is one of"),
        ] {
            let e = bad.resolve().expect_err(says).to_string();
            assert!(e.contains(says), "{e}");
        }
    }

    #[test]
    fn the_cookie_is_not_the_token_and_only_the_token_opens() {
        let token = "s3cret-token";
        assert!(!session_value(token).contains(token));
        assert_ne!(session_value(token), session_value("other"));
        assert!(same(token, token));
        assert!(!same(token, "s3cret-tokeN"));
    }
}
