//! Request extractors: the authenticated caller, and JSON/query parsing whose
//! failures are JSON errors with stable codes instead of axum's plain text.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde_json::json;
use std::net::SocketAddr;
use warden_core::{Event, Identity};

use super::{ApiError, AppState};
use crate::auth::{Authenticator, TokenShape};

/// The peer address of the HTTP connection, set by the listener.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// An authenticated caller.
pub struct Caller {
    pub identity: Identity,
    pub is_admin: bool,
    pub client: Option<SocketAddr>,
}

impl Caller {
    /// Refuses non-admins with 403, and records the refusal.
    pub async fn require_admin(&self, state: &AppState, action: &str) -> Result<(), ApiError> {
        if self.is_admin {
            return Ok(());
        }
        let event = Event::new(
            "access.denied",
            json!({"action": action, "reason": "admin group required", "client": self.client.map(|c| c.to_string())}),
        )
        .by(&self.identity);
        state.audit(&event).await?;
        Err(ApiError::forbidden(format!(
            "`{action}` requires membership in an admin group"
        )))
    }
}

fn bearer(parts: &Parts) -> Result<&str, ()> {
    bearer_of(&parts.headers)
}

/// The bearer token of a request (`""` when there is none).
pub(super) fn bearer_of(headers: &axum::http::HeaderMap) -> Result<&str, ()> {
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Ok("");
    };
    let value = value.to_str().map_err(|_| ())?;
    let (scheme, token) = value.split_once(' ').ok_or(())?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(());
    }
    Ok(token.trim())
}

/// Records a refused request as `auth.failure` (repeats from one address counted):
/// the code, the reason, `detail` about the credential, the client and the route.
fn record_failure(
    state: &AppState,
    parts: &Parts,
    client: Option<SocketAddr>,
    code: &'static str,
    reason: &str,
    mut detail: serde_json::Value,
) {
    if let Some(fields) = detail.as_object_mut() {
        fields.insert("code".into(), json!(code));
        fields.insert("reason".into(), json!(reason));
        fields.insert("client".into(), json!(client.map(|c| c.to_string())));
        fields.insert("method".into(), json!(parts.method.as_str()));
        fields.insert("path".into(), json!(parts.uri.path()));
    }
    let source = client.map_or_else(|| "unknown".into(), |c| c.ip().to_string());
    state
        .repeats
        .record(&source, code, Event::new("auth.failure", detail));
}

/// Whether `identity` may administer the gateway.
pub(crate) fn is_admin(state: &AppState, identity: &Identity) -> bool {
    // The bootstrap key stays admin even if `admin_groups` changes later.
    identity.in_any_group(&state.config.admin_groups)
        || matches!(&identity.method, warden_core::AuthMethod::ApiKey { key_id }
            if crate::auth::api_key::is_bootstrap_admin(key_id))
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let client = parts.extensions.get::<ClientAddr>().map(|c| c.0);
        // A console page's request: its cookie names a session whose credential the
        // gateway holds. A bearer token, when present, always wins.
        if parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .is_none()
            && let Some(result) = state.web.authenticate(&state.auth, &parts.headers).await
        {
            return match result {
                Ok(identity) => Ok(Caller {
                    is_admin: is_admin(state, &identity),
                    identity,
                    client,
                }),
                Err(e) => {
                    record_failure(
                        state,
                        parts,
                        client,
                        e.code(),
                        &e.to_string(),
                        json!({
                            "token_kind": "console_session",
                        }),
                    );
                    Err(e.to_api_error())
                }
            };
        }
        let (token, result) = match bearer(parts) {
            Ok(token) => (token, state.auth.authenticate(token).await),
            Err(()) => (
                "",
                Err(crate::auth::AuthError::Malformed(
                    "Authorization header must be `Bearer <token>`".into(),
                )),
            ),
        };
        match result {
            Ok(identity) => Ok(Caller {
                is_admin: is_admin(state, &identity),
                identity,
                client,
            }),
            Err(e) => {
                // What identifies the attempt, never the token itself.
                record_failure(
                    state,
                    parts,
                    client,
                    e.code(),
                    &e.to_string(),
                    json!({
                        "token_kind": TokenShape::of(token).as_str(),
                        "key_id": Authenticator::key_id_of(token),
                        "issuer": Authenticator::claimed_issuer(token),
                    }),
                );
                Err(ApiError::from_auth(&e))
            }
        }
    }
}

/// A JSON body, with rejections as API errors.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(json_rejection(&rejection)),
        }
    }
}

fn json_rejection(r: &JsonRejection) -> ApiError {
    match r {
        JsonRejection::JsonDataError(e) => ApiError::bad_request("invalid_body", e.body_text()),
        JsonRejection::JsonSyntaxError(e) => ApiError::bad_request("malformed_json", e.body_text()),
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected `Content-Type: application/json`",
        ),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the request body is larger than the gateway accepts",
        ),
        other => ApiError::bad_request("invalid_body", other.body_text()),
    }
}

/// Query parameters, with rejections as API errors.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(e @ QueryRejection::FailedToDeserializeQueryString(_)) => {
                Err(ApiError::bad_request("invalid_query", e.body_text()))
            }
            Err(e) => Err(ApiError::bad_request("invalid_query", e.body_text())),
        }
    }
}

/// Parses an optional RFC 3339 time from a query parameter.
pub fn parse_time(
    name: &str,
    value: Option<&str>,
) -> Result<Option<time::OffsetDateTime>, ApiError> {
    value
        .map(|v| {
            time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339).map_err(
                |_| {
                    ApiError::bad_request(
                        "invalid_query",
                        format!("`{name}` must be an RFC 3339 time"),
                    )
                },
            )
        })
        .transpose()
}
