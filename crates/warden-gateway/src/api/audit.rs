//! `/api/audit`: read and verify the hash-chained audit log (admins).

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use warden_store::audit::{AuditEntry, AuditFilter, VerifyReport};

use super::extract::{ApiQuery, Caller, parse_time};
use super::{ApiError, AppState, ErrorBody};

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Events at or after this RFC 3339 time.
    pub since: Option<String>,
    /// Events before this RFC 3339 time.
    pub until: Option<String>,
    /// Acting identity's subject.
    pub subject: Option<String>,
    pub connection: Option<String>,
    /// Exact kind (`auth.failure`) or a prefix ending in `.` (`auth.`).
    pub kind: Option<String>,
    pub session_id: Option<uuid::Uuid>,
    /// Continue after this sequence number (from `next_after_seq`).
    pub after_seq: Option<i64>,
    /// Only events before this sequence number (from `next_before_seq`).
    pub before_seq: Option<i64>,
    /// `oldest` (default: the oldest matching events, oldest first) or `newest` (the
    /// newest matching events, newest first).
    pub order: Option<String>,
    /// At most this many events (default 100, at most 1000).
    pub limit: Option<i64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    pub events: Vec<AuditEntry>,
    /// Pass as `after_seq` to get the next page (oldest first); absent on the last page.
    pub next_after_seq: Option<i64>,
    /// Pass as `before_seq` to get the next page (newest first); absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_before_seq: Option<i64>,
}

/// Events in chain order, filtered.
#[utoipa::path(get, path = "/api/audit", tag = "audit", security(("bearer" = [])),
    params(AuditQuery),
    responses((status = 200, body = AuditPage), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    caller.require_admin(&state, "audit.list").await?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            "`limit` must be 1 to 1000",
        ));
    }
    let newest_first = match q.order.as_deref() {
        None | Some("oldest") => false,
        Some("newest") => true,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                "`order` must be `oldest` or `newest`",
            ));
        }
    };
    let filter = AuditFilter {
        since: parse_time("since", q.since.as_deref())?,
        until: parse_time("until", q.until.as_deref())?,
        subject: q.subject,
        connection: q.connection,
        kind: q.kind,
        session_id: q.session_id,
        after_seq: q.after_seq,
        before_seq: q.before_seq,
        newest_first,
        limit,
    };
    // Events still in the journal are part of the log too.
    state
        .journal
        .ship_now()
        .await
        .map_err(|e| ApiError::store(&e))?;
    let events = state
        .store
        .list_audit(&filter)
        .await
        .map_err(|e| ApiError::store(&e))?;
    let next = (events.len() as i64 == limit)
        .then(|| events.last().map(|e| e.seq))
        .flatten();
    let (next_after_seq, next_before_seq) = if newest_first {
        (None, next)
    } else {
        (next, None)
    };
    Ok(Json(AuditPage {
        events,
        next_after_seq,
        next_before_seq,
    }))
}

/// Walk the whole chain; `ok: false` names the first altered, removed or reordered event.
#[utoipa::path(get, path = "/api/audit/verify", tag = "audit", security(("bearer" = [])),
    responses((status = 200, body = VerifyReport), (status = 403, body = ErrorBody)))]
pub async fn verify(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<VerifyReport>, ApiError> {
    caller.require_admin(&state, "audit.verify").await?;
    state
        .journal
        .ship_now()
        .await
        .map_err(|e| ApiError::store(&e))?;
    let report = state
        .store
        .verify_audit_in(Some(&state.config.audit_archive_dir()))
        .await
        .map_err(|e| ApiError::store(&e))?;
    Ok(Json(report))
}
