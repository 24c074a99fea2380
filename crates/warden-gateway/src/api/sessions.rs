//! `/api/sessions`: sessions the proxies record. Admins see all; others their own.

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use warden_core::{Session, SessionStatus};
use warden_store::sessions::SessionFilter;

use super::extract::{ApiQuery, Caller, parse_time};
use super::{ApiError, AppState, ErrorBody};

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SessionQuery {
    pub connection: Option<String>,
    /// Subject of the user (admins only; others always see their own).
    pub subject: Option<String>,
    pub status: Option<SessionStatus>,
    /// Sessions started at or after this RFC 3339 time.
    pub since: Option<String>,
    /// At most this many (default 100, at most 1000), newest first.
    pub limit: Option<i64>,
}

/// Sessions, newest first.
#[utoipa::path(get, path = "/api/sessions", tag = "sessions", security(("bearer" = [])),
    params(SessionQuery),
    responses((status = 200, body = Vec<Session>), (status = 400, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<SessionQuery>,
) -> Result<Json<Vec<Session>>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            "`limit` must be 1 to 1000",
        ));
    }
    let subject = if caller.is_admin {
        q.subject
    } else {
        Some(caller.identity.subject.clone())
    };
    let filter = SessionFilter {
        connection: q.connection,
        subject,
        status: q.status,
        since: parse_time("since", q.since.as_deref())?,
        limit,
    };
    let sessions = state
        .store
        .list_sessions(&filter)
        .await
        .map_err(|e| ApiError::store(&e))?;
    Ok(Json(sessions))
}

/// One session.
#[utoipa::path(get, path = "/api/sessions/{id}", tag = "sessions", security(("bearer" = [])),
    params(("id" = String, Path, description = "Session id (UUID)")),
    responses((status = 200, body = Session), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Session>, ApiError> {
    visible_session(&state, &caller, &id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("session `{id}`")))
}

/// The session `id` if the caller may see it (its owner or an admin); others get
/// the same answer as for a session that does not exist.
async fn visible_session(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<Option<Session>, ApiError> {
    let Ok(uuid) = id.parse::<uuid::Uuid>() else {
        return Ok(None);
    };
    let session = state
        .store
        .session(uuid)
        .await
        .map_err(|e| ApiError::store(&e))?;
    Ok(session.filter(|s| caller.is_admin || s.subject == caller.identity.subject))
}

/// A session's recording: its header, its timeline entries (statements, decisions,
/// masked results, errors, timings) and whether the last line was cut short.
#[utoipa::path(get, path = "/api/sessions/{id}/recording", tag = "sessions", security(("bearer" = [])),
    params(("id" = String, Path, description = "Session id (UUID)")),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
pub async fn recording(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let not_found = || ApiError::not_found(format!("recording of session `{id}`"));
    let session = visible_session(&state, &caller, &id).await?;
    let Some(session) = session.filter(|s| s.recording.is_some()) else {
        return Err(not_found());
    };
    let uuid = session.id;
    let dir = state.config.recordings_dir();
    let read = tokio::task::spawn_blocking(move || crate::recording::read_recording(&dir, uuid))
        .await
        .map_err(|_| ApiError::internal("the recording could not be read"))?;
    match read {
        Ok(r) => Ok(Json(serde_json::json!({
            "header": r.header,
            "entries": r.entries,
            "truncated": r.truncated,
        }))),
        Err(crate::recording::RecordingReadError::NotFound(_)) => Err(not_found()),
        Err(e) => {
            tracing::error!(error = %e, "recording unreadable");
            Err(ApiError::internal("the recording could not be read"))
        }
    }
}

/// One terminal of an SSH session as a plain asciicast v2 file (for `asciinema play`).
#[utoipa::path(get, path = "/api/sessions/{id}/terminals/{channel}", tag = "sessions", security(("bearer" = [])),
    params(("id" = String, Path, description = "Session id (UUID)"),
           ("channel" = u32, Path, description = "SSH channel, as in the recording's `terminal` entries")),
    responses((status = 200, content_type = "application/x-asciicast", body = String),
              (status = 404, body = ErrorBody)))]
pub async fn terminal(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, channel)): Path<(String, u32)>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let not_found = || ApiError::not_found(format!("terminal {channel} of session `{id}`"));
    let session = visible_session(&state, &caller, &id)
        .await?
        .ok_or_else(not_found)?;
    let dir = state.config.recordings_dir();
    let name = session.id.to_string();
    let read =
        tokio::task::spawn_blocking(move || crate::terminal::read_cast(&dir, &name, channel))
            .await
            .map_err(|_| ApiError::internal("the recording could not be read"))?;
    match read {
        Ok(cast) => Ok((
            [(axum::http::header::CONTENT_TYPE, "application/x-asciicast")],
            cast.to_asciicast(),
        )
            .into_response()),
        Err(crate::terminal::CastReadError::NotFound(_)) => Err(not_found()),
        Err(e) => {
            tracing::error!(error = %e, "terminal recording unreadable");
            Err(ApiError::internal("the recording could not be read"))
        }
    }
}
