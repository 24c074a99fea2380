//! `/api/api-keys`: issue and revoke Warden API keys (admins). The token is returned
//! once, at creation; afterwards only its metadata is visible.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use time::OffsetDateTime;
use warden_core::{Event, timefmt};
use warden_store::api_keys::ApiKeyRecord;

use super::changes::DryRun;
use super::extract::{ApiJson, ApiQuery, Caller};
use super::{ApiError, AppState, ErrorBody};
use crate::auth::api_key;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyCreate {
    /// A label, e.g. the CI job that uses it.
    pub name: String,
    /// Groups the key's identity belongs to.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Lifetime in seconds; default and maximum come from `auth.api_key_*_ttl_secs`.
    pub ttl_secs: Option<u64>,
    /// Identity the key acts as; default `apikey:<name>`.
    pub subject: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ApiKeyView {
    pub id: String,
    pub name: String,
    pub subject: String,
    pub groups: Vec<String>,
    pub created_by: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub revoked_at: Option<OffsetDateTime>,
    /// `active`, `expired` or `revoked`.
    pub status: &'static str,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ApiKeyIssued {
    #[serde(flatten)]
    pub key: ApiKeyView,
    /// The bearer token. Shown only in this answer; store it now.
    pub token: String,
}

fn view(r: &ApiKeyRecord) -> ApiKeyView {
    let status = if r.revoked_at.is_some() {
        "revoked"
    } else if r.expires_at.is_some_and(|t| t <= timefmt::now()) {
        "expired"
    } else {
        "active"
    };
    ApiKeyView {
        id: r.id.clone(),
        name: r.name.clone(),
        subject: r.subject.clone(),
        groups: r.groups.clone(),
        created_by: r.created_by.clone(),
        created_at: r.created_at,
        expires_at: r.expires_at,
        revoked_at: r.revoked_at,
        status,
    }
}

/// All API keys, without secrets (admins).
#[utoipa::path(get, path = "/api/api-keys", tag = "api-keys", security(("bearer" = [])),
    responses((status = 200, body = Vec<ApiKeyView>), (status = 403, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<ApiKeyView>>, ApiError> {
    caller.require_admin(&state, "api_key.list").await?;
    let keys = state
        .store
        .list_api_keys()
        .await
        .map_err(|e| ApiError::store(&e))?;
    Ok(Json(keys.iter().map(view).collect()))
}

/// Issue a key (admins). The answer holds the token once.
#[utoipa::path(post, path = "/api/api-keys", tag = "api-keys", security(("bearer" = [])),
    params(DryRun),
    request_body = ApiKeyCreate,
    responses((status = 201, body = ApiKeyIssued),
              (status = 200, description = "`dry_run`: the key as it would be issued, without id or token", body = ApiKeyView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(dry): ApiQuery<DryRun>,
    ApiJson(req): ApiJson<ApiKeyCreate>,
) -> Result<Response, ApiError> {
    caller.require_admin(&state, "api_key.create").await?;
    let bad = |m: &str| ApiError::bad_request("invalid_api_key_request", m);
    if req.name.trim().is_empty() || req.name.len() > 128 {
        return Err(bad("name must be 1 to 128 characters"));
    }
    if req.groups.iter().any(|g| g.is_empty() || g.len() > 256) || req.groups.len() > 256 {
        return Err(bad("groups must hold at most 256 non-empty names"));
    }
    let auth = &state.config.auth;
    let ttl = req.ttl_secs.unwrap_or(auth.api_key_default_ttl_secs);
    if ttl == 0 || ttl > auth.api_key_max_ttl_secs {
        return Err(bad(&format!(
            "ttl_secs must be between 1 and {} (auth.api_key_max_ttl_secs)",
            auth.api_key_max_ttl_secs
        )));
    }
    let subject = req
        .subject
        .unwrap_or_else(|| format!("apikey:{}", req.name));
    if subject.is_empty() || subject.len() > 256 {
        return Err(bad("subject must be 1 to 256 characters"));
    }
    let expires_at =
        timefmt::now() + time::Duration::seconds(i64::try_from(ttl).unwrap_or(i64::MAX / 2));
    let issued = api_key::issue(None).map_err(|e| ApiError::from_auth(&e))?;
    let mut record = api_key::record(
        &issued,
        &req.name,
        &subject,
        req.groups,
        &caller.identity.subject,
        Some(expires_at),
    );
    if dry.dry_run {
        record.id = String::new();
        let mut answer =
            serde_json::to_value(view(&record)).map_err(|e| ApiError::internal(e.to_string()))?;
        answer["dry_run"] = serde_json::Value::Bool(true);
        return Ok((StatusCode::OK, Json(answer)).into_response());
    }
    let event = Event::new(
        "api_key.create",
        json!({"key_id": record.id, "name": record.name, "subject": record.subject,
               "groups": record.groups, "expires_at": timefmt::rfc3339(expires_at)}),
    )
    .by(&caller.identity);
    state
        .store
        .insert_api_key(&record, &event)
        .await
        .map_err(|e| ApiError::store(&e))?;
    Ok((
        StatusCode::CREATED,
        Json(ApiKeyIssued {
            key: view(&record),
            token: issued.token.expose().clone(),
        }),
    )
        .into_response())
}

/// Revoke a key at once (admins). Requests with it fail from then on, and open
/// sessions that logged in with it (or with an SSH key it registered) end.
#[utoipa::path(delete, path = "/api/api-keys/{id}", tag = "api-keys", security(("bearer" = [])),
    params(("id" = String, Path, description = "Key id (the part after `wdn_`)")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin(&state, "api_key.revoke").await?;
    let event = Event::new("api_key.revoke", json!({"key_id": id})).by(&caller.identity);
    let found = state
        .store
        .revoke_api_key(&id, timefmt::now(), &event)
        .await
        .map_err(|e| ApiError::store(&e))?;
    if !found {
        return Err(ApiError::not_found(format!("api key `{id}`")));
    }
    // Open sessions of the key (and of SSH keys it registered) end now.
    state.watch.end_api_key(
        &id,
        &format!(
            "your API key {id} was revoked by {}",
            caller.identity.subject
        ),
    );
    Ok(StatusCode::NO_CONTENT)
}
