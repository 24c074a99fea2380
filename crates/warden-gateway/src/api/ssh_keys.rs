//! `/api/ssh-keys`: SSH public keys users register to their own identity, to log in
//! to SSH connections with `ssh -p 2222 <connection>@gateway` and no token. A key
//! carries the groups its registering token had, and expires
//! (`ssh.user_key_max_ttl_secs`); deleting it ends its access at once.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use time::OffsetDateTime;
use warden_core::{AuthMethod, Event, timefmt};
use warden_ssh::keys::PublicKeyLine;
use warden_store::StoreError;
use warden_store::ssh_keys::SshUserKey;

use super::extract::{ApiJson, Caller};
use super::{ApiError, AppState, ErrorBody};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SshKeyCreate {
    /// An OpenSSH public key line, e.g. the contents of `~/.ssh/id_ed25519.pub`.
    pub public_key: String,
    /// A label; default the key's comment.
    pub name: Option<String>,
    /// Lifetime in seconds; default and maximum `ssh.user_key_max_ttl_secs`.
    pub ttl_secs: Option<u64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct SshKeyView {
    /// `SHA256:...`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    pub public_key: String,
    pub name: String,
    pub subject: String,
    /// The groups the key logs in with (those of the registering token).
    pub groups: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: OffsetDateTime,
    /// `active` or `expired`.
    pub status: &'static str,
}

fn view(k: SshUserKey) -> SshKeyView {
    let status = if k.expires_at <= timefmt::now() {
        "expired"
    } else {
        "active"
    };
    SshKeyView {
        fingerprint: k.fingerprint,
        public_key: k.public_key,
        name: k.name,
        subject: k.subject,
        groups: k.groups,
        created_at: k.created_at,
        expires_at: k.expires_at,
        status,
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct SshKeyFilter {
    /// Admins: list every user's keys.
    #[serde(default)]
    pub all: bool,
}

/// The caller's registered keys (everyone's with `?all=true`, for admins).
#[utoipa::path(get, path = "/api/ssh-keys", tag = "ssh-keys", security(("bearer" = [])),
    params(SshKeyFilter),
    responses((status = 200, body = Vec<SshKeyView>), (status = 403, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(filter): Query<SshKeyFilter>,
) -> Result<Json<Vec<SshKeyView>>, ApiError> {
    let subject = if filter.all {
        caller.require_admin(&state, "ssh_key.list_all").await?;
        None
    } else {
        Some(caller.identity.subject.as_str())
    };
    let keys = state
        .store
        .list_ssh_user_keys(subject)
        .await
        .map_err(|e| ApiError::store(&e))?;
    Ok(Json(keys.into_iter().map(view).collect()))
}

/// Register a public key to the caller's identity.
#[utoipa::path(post, path = "/api/ssh-keys", tag = "ssh-keys", security(("bearer" = [])),
    request_body = SshKeyCreate,
    responses((status = 201, body = SshKeyView), (status = 400, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<SshKeyCreate>,
) -> Result<(StatusCode, Json<SshKeyView>), ApiError> {
    let bad = |m: String| ApiError::bad_request("invalid_ssh_key", m);
    if matches!(caller.identity.method, AuthMethod::SshKey { .. }) {
        return Err(ApiError::forbidden("an SSH key cannot register keys"));
    }
    if req.public_key.len() > 16 * 1024 {
        return Err(bad("public_key is too long".into()));
    }
    let line = PublicKeyLine::parse(&req.public_key).map_err(|e| bad(e.to_string()))?;
    let comment = req
        .public_key
        .split_whitespace()
        .nth(2)
        .unwrap_or("")
        .to_string();
    let name = req.name.unwrap_or(comment);
    let name = if name.is_empty() {
        line.fingerprint.clone()
    } else {
        name
    };
    if name.len() > 128 {
        return Err(bad("name must be at most 128 characters".into()));
    }
    let max = state.config.ssh.user_key_max_ttl_secs;
    let ttl = req.ttl_secs.unwrap_or(max);
    if ttl == 0 || ttl > max {
        return Err(bad(format!(
            "ttl_secs must be between 1 and {max} (ssh.user_key_max_ttl_secs)"
        )));
    }
    let now = timefmt::now();
    // A registration never outlives the token that made it.
    let asked = now + time::Duration::seconds(i64::try_from(ttl).unwrap_or(i64::MAX / 2));
    let expires_at = caller
        .identity
        .expires_at
        .map_or(asked, |token_ends| asked.min(token_ends));
    let api_key_id = match &caller.identity.method {
        AuthMethod::ApiKey { key_id } => Some(key_id.clone()),
        _ => None,
    };
    let key = SshUserKey {
        fingerprint: line.fingerprint,
        public_key: line.line,
        name,
        subject: caller.identity.subject.clone(),
        groups: caller.identity.groups.clone(),
        created_at: now,
        expires_at,
        api_key_id,
    };
    let event = Event::new(
        "ssh_key.register",
        json!({"fingerprint": key.fingerprint, "name": key.name, "groups": key.groups,
               "expires_at": timefmt::rfc3339(key.expires_at)}),
    )
    .by(&caller.identity);
    match state.store.insert_ssh_user_key(&key, &event).await {
        Ok(()) => Ok((StatusCode::CREATED, Json(view(key)))),
        Err(StoreError::Conflict(_)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "ssh_key_exists",
            "this key is already registered; delete it first to register it again",
        )),
        Err(e) => Err(ApiError::store(&e)),
    }
}

/// Delete a registered key (its owner or an admin); logins with it stop at once
/// and its open sessions end.
#[utoipa::path(delete, path = "/api/ssh-keys/{fingerprint}", tag = "ssh-keys", security(("bearer" = [])),
    params(("fingerprint" = String, Path, description = "`SHA256:...`, URL-encoded")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(fingerprint): Path<String>,
) -> Result<StatusCode, ApiError> {
    let not_found = || ApiError::not_found(format!("ssh key `{fingerprint}`"));
    let key = state
        .store
        .ssh_user_key(&fingerprint)
        .await
        .map_err(|e| ApiError::store(&e))?
        .ok_or_else(not_found)?;
    if key.subject != caller.identity.subject && !caller.is_admin {
        // Someone else's key is not even confirmed to exist.
        return Err(not_found());
    }
    let event = Event::new(
        "ssh_key.delete",
        json!({"fingerprint": key.fingerprint, "owner": key.subject}),
    )
    .by(&caller.identity);
    let found = state
        .store
        .delete_ssh_user_key(&fingerprint, &event)
        .await
        .map_err(|e| ApiError::store(&e))?;
    if !found {
        return Err(not_found());
    }
    state.watch.end_ssh_key(
        &fingerprint,
        &format!(
            "your SSH key {fingerprint} was deleted by {}",
            caller.identity.subject
        ),
    );
    Ok(StatusCode::NO_CONTENT)
}
