//! Who a request acts for: the owner of the API key it carries (`Authorization: Bearer <key>`),
//! or, without one and when `ANONYMOUS` is on, the anonymous owner of its client address (the
//! connection's address, or `X-Forwarded-For`'s when the connection comes from a trusted proxy).
//! Keys are looked up on every request, so revoking one takes effect at once; they never reach
//! a log line, a page or a metric.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::ConnectInfo;
use axum::http::{header, HeaderMap};
use jobs::owners::{self, KeyLookup, Owner, Scope};

use crate::error::AppError;
use crate::state::AppState;

/// The connection's own address: set by the server for every connection (`ConnectInfo`);
/// requests made in-process (the router's tests) come from 127.0.0.1.
pub fn peer(extensions: &axum::http::Extensions) -> IpAddr {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |c| c.0.ip())
}

/// [`peer`] as an extractor.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub IpAddr);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self(peer(&parts.extensions)))
    }
}

/// The bearer credential of a request, if any (the scheme in any case, as RFC 7235 allows).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, credential) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credential.trim())
}

/// The client address of a request, as anonymous owners are told apart.
pub fn client_address(state: &AppState, headers: &HeaderMap, peer: IpAddr) -> IpAddr {
    let forwarded = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
    owners::client_address(peer, forwarded, &state.settings.trusted_proxies.0)
}

/// A database error while finding the owner: with Postgres away, nothing was accepted.
fn unavailable(e: sqlx::Error) -> AppError {
    if jobs::db::is_retryable(&e) {
        tracing::warn!(error = %e, "Postgres unavailable");
        return AppError::Unavailable(
            "Postgres is unavailable right now, so nothing was accepted; please try again in a \
             minute"
                .into(),
        );
    }
    e.into()
}

/// The owner a request acts for: its key's, else its address's (when anonymous submissions are
/// allowed). A key that is unknown or revoked is refused, never taken for anonymous.
pub async fn resolve(
    state: &AppState,
    headers: &HeaderMap,
    peer: IpAddr,
) -> Result<Owner, AppError> {
    if let Some(key) = bearer(headers) {
        return match owners::by_key(&state.db, key).await.map_err(unavailable)? {
            KeyLookup::Valid(owner) => Ok(owner),
            KeyLookup::Revoked => Err(AppError::Unauthorized(
                "this API key has been revoked; ask the operator for a new one".into(),
            )),
            KeyLookup::Unknown => Err(AppError::Unauthorized(
                "this is not an API key of this server (expected `Authorization: Bearer wm_…`)"
                    .into(),
            )),
        };
    }
    if !state.settings.anonymous {
        return Err(AppError::Unauthorized(
            "this server takes requests with an API key only: send `Authorization: Bearer <key>`"
                .into(),
        ));
    }
    let address = owners::client_key(client_address(state, headers, peer));
    owners::by_address(&state.db, &address)
        .await
        .map_err(unavailable)
}

/// [`resolve`], then checks that the owner may do what `scope` allows.
pub async fn resolve_for(
    state: &AppState,
    headers: &HeaderMap,
    peer: IpAddr,
    scope: Scope,
) -> Result<Owner, AppError> {
    let owner = resolve(state, headers, peer).await?;
    if !owner.can(scope) {
        return Err(AppError::Forbidden(format!(
            "this key does not have the `{scope}` scope"
        )));
    }
    Ok(owner)
}

/// Whether `owner` may change a batch that `batch_owner` made: a key's batch only that key or
/// an admin key may change; an anonymous batch (or one made before owners) is changed by anyone
/// who holds its id, the id being the capability. `action` ends the refusal's message.
pub fn may_change(
    owner: &Owner,
    batch_owner: Option<jobs::OwnerId>,
    owned_by_key: bool,
    action: &str,
) -> Result<(), AppError> {
    if owned_by_key && batch_owner != Some(owner.id) && !owner.is_admin() {
        return Err(AppError::Forbidden(format!(
            "this batch belongs to another API key; only that key (or an admin key) may {action}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn the_bearer_scheme_is_read_in_any_case() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        for value in ["Bearer wm_x", "bearer wm_x", "BEARER  wm_x "] {
            h.insert(header::AUTHORIZATION, HeaderValue::from_static(value));
            assert_eq!(bearer(&h), Some("wm_x"), "{value}");
        }
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
    }
}
