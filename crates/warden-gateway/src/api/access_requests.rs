//! `/api/access-requests`: just-in-time access. A member of a connection's groups
//! asks for time-boxed access with a reason; the connection's reviewers approve
//! (distinct people, up to its threshold; never the requester) or one rejects.
//! An approved request is a grant until its end; revoking it ends its sessions.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use uuid::Uuid;
use warden_core::{AuthMethod, timefmt};
use warden_store::access::{AccessRequest, Approvals, RequestFilter, RequestStatus};

use super::extract::{ApiJson, Caller};
use super::{ApiError, AppState, ErrorBody};
use crate::access::{access_event, grant_end_message};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessRequestCreate {
    pub connection: String,
    /// How long the grant lasts once approved: `3600`, `90m`, `1h`, `1d`.
    pub duration: String,
    /// Why access is needed; shown to reviewers and kept in the audit log.
    pub reason: String,
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionBody {
    pub comment: Option<String>,
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct RequestQuery {
    /// `pending`, `approved`, `rejected`, `expired`, `revoked`.
    pub status: Option<String>,
    pub connection: Option<String>,
    /// Only the caller's own requests.
    #[serde(default)]
    pub mine: bool,
    pub limit: Option<i64>,
}

pub(super) fn parse_status(s: Option<&str>) -> Result<Option<RequestStatus>, ApiError> {
    s.map(|s| {
        RequestStatus::parse(s)
            .ok_or_else(|| ApiError::bad_request("invalid_status", format!("unknown status `{s}`")))
    })
    .transpose()
}

pub(super) fn decision_error(e: warden_store::access::DecisionError) -> ApiError {
    use warden_store::access::DecisionError as D;
    let status = match e {
        D::OwnRequest | D::NotReviewer => StatusCode::FORBIDDEN,
        D::AlreadyApproved | D::NotPending(_) => StatusCode::CONFLICT,
    };
    let code = match e {
        D::OwnRequest => "self_approval",
        D::NotReviewer => "not_a_reviewer",
        D::AlreadyApproved => "already_approved",
        D::NotPending(_) => "not_pending",
    };
    ApiError::new(status, code, e.to_string())
}

pub(super) fn changed_meanwhile() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "changed_meanwhile",
        "someone else decided it at the same moment; read it again",
    )
}

/// The optional `{"comment": ...}` body of a decision (an empty body is none).
pub(super) fn comment_of(body: &Bytes) -> Result<Option<String>, ApiError> {
    let parsed: DecisionBody = if body.iter().all(u8::is_ascii_whitespace) {
        DecisionBody::default()
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))?
    };
    let comment = parsed.comment.filter(|c| !c.trim().is_empty());
    if comment.as_ref().is_some_and(|c| c.len() > 2000) {
        return Err(ApiError::bad_request(
            "invalid_comment",
            "comment must be at most 2000 characters",
        ));
    }
    Ok(comment)
}

/// Whether the caller may see (and so try to decide) something `subject` asked
/// for, reviewed by `reviewers`: its requester, a reviewer, or an admin.
pub(super) fn may_see(
    state: &AppState,
    caller: &Caller,
    subject: &str,
    reviewers: &[String],
) -> bool {
    caller.is_admin
        || subject == caller.identity.subject
        || state.access.may_review(&caller.identity, reviewers)
}

fn visible(state: &AppState, caller: &Caller, r: &AccessRequest) -> bool {
    may_see(state, caller, &r.subject, &r.decision.reviewers)
}

/// The store filter for a list the caller sees only part of, and how many to answer.
/// The store cannot tell what a caller may see, so for non-admins it is asked for as
/// many rows as it gives, and the page is cut after filtering: a page is never short
/// because rows the caller cannot see took its places.
pub(super) fn visible_filter(
    caller: &Caller,
    q: RequestQuery,
) -> Result<(RequestFilter, usize), ApiError> {
    let mut filter = filter_of(caller, q)?;
    let wanted = usize::try_from(filter.limit.clamp(1, MAX_LIST_ROWS)).unwrap_or(1);
    if !caller.is_admin {
        filter.limit = filter.limit.max(MAX_LIST_ROWS);
    }
    Ok((filter, wanted))
}

/// The most rows one list asks of the store.
const MAX_LIST_ROWS: i64 = 1000;

/// The store filter a list query asks for.
pub(super) fn filter_of(caller: &Caller, q: RequestQuery) -> Result<RequestFilter, ApiError> {
    Ok(RequestFilter {
        subject: q.mine.then(|| caller.identity.subject.clone()),
        connection: q.connection,
        status: parse_status(q.status.as_deref())?,
        limit: q.limit.unwrap_or(100),
    })
}

/// Requests the caller made or may decide (admins: all), newest first.
#[utoipa::path(get, path = "/api/access-requests", tag = "access-requests", security(("bearer" = [])),
    params(RequestQuery),
    responses((status = 200, body = Vec<AccessRequest>)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<RequestQuery>,
) -> Result<Json<Vec<AccessRequest>>, ApiError> {
    let (filter, wanted) = visible_filter(&caller, q)?;
    let all = state
        .store
        .list_access_requests(&filter)
        .await
        .map_err(|e| ApiError::store(&e))?;
    Ok(Json(
        all.into_iter()
            .filter(|r| visible(&state, &caller, r))
            .take(wanted)
            .collect(),
    ))
}

/// Ask for time-boxed access to a connection that requires it.
#[utoipa::path(post, path = "/api/access-requests", tag = "access-requests", security(("bearer" = [])),
    request_body = AccessRequestCreate,
    responses((status = 201, body = AccessRequest), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<AccessRequestCreate>,
) -> Result<(StatusCode, Json<AccessRequest>), ApiError> {
    let bad = |code, m: String| ApiError::bad_request(code, m);
    if matches!(caller.identity.method, AuthMethod::SshKey { .. }) {
        return Err(ApiError::forbidden("an SSH key cannot request access"));
    }
    let conn = state
        .store
        .get_connection(&req.connection)
        .await
        .map_err(|e| ApiError::store(&e))?
        .filter(|c| caller.identity.in_any_group(&c.allowed_groups))
        .ok_or_else(|| {
            ApiError::not_found(format!("connection `{}` that you may use", req.connection))
        })?;
    if !conn.access.request_required {
        return Err(bad(
            "no_request_needed",
            format!(
                "connection `{}` does not require access requests; connect directly",
                conn.name
            ),
        ));
    }
    let max = conn.access.max_duration_secs;
    let duration = timefmt::parse_duration_secs(&req.duration)
        .filter(|d| *d > 0 && *d <= max)
        .ok_or_else(|| {
            bad(
                "invalid_duration",
                format!(
                    "duration must be like `30m` or `1h`, at most {max} seconds for this connection"
                ),
            )
        })?;
    let reason = req.reason.trim().to_string();
    if reason.is_empty() || reason.len() > 2000 {
        return Err(bad(
            "invalid_reason",
            "reason must be 1 to 2000 characters".into(),
        ));
    }
    let request = AccessRequest {
        id: Uuid::now_v7(),
        connection: conn.name.clone(),
        subject: caller.identity.subject.clone(),
        groups: caller.identity.groups.clone(),
        reason,
        duration_secs: duration,
        decision: Approvals::new(conn.access.reviewers.clone(), conn.access.approvals),
        created_at: timefmt::now(),
        ends_at: None,
    };
    let event = access_event("access.request", &request).by(&caller.identity);
    state
        .store
        .insert_access_request(&request, &event)
        .await
        .map_err(|e| ApiError::store(&e))?;
    Ok((StatusCode::CREATED, Json(request)))
}

async fn load(state: &AppState, caller: &Caller, id: Uuid) -> Result<AccessRequest, ApiError> {
    state
        .store
        .access_request(id)
        .await
        .map_err(|e| ApiError::store(&e))?
        .filter(|r| visible(state, caller, r))
        .ok_or_else(|| ApiError::not_found(format!("access request {id}")))
}

#[utoipa::path(get, path = "/api/access-requests/{id}", tag = "access-requests", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = AccessRequest), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<Json<AccessRequest>, ApiError> {
    Ok(Json(load(&state, &caller, id).await?))
}

/// Approve (a reviewer of the connection, not the requester). The last approval
/// the threshold needs starts the grant.
#[utoipa::path(post, path = "/api/access-requests/{id}/approve", tag = "access-requests", security(("bearer" = [])),
    params(("id" = Uuid, Path)), request_body(content = Option<DecisionBody>),
    responses((status = 200, body = AccessRequest), (status = 403, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
pub async fn approve(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    body: Bytes,
) -> Result<Json<AccessRequest>, ApiError> {
    decide(state, caller, id, &body, true).await
}

/// Reject (a reviewer of the connection, not the requester): ends the request.
#[utoipa::path(post, path = "/api/access-requests/{id}/reject", tag = "access-requests", security(("bearer" = [])),
    params(("id" = Uuid, Path)), request_body(content = Option<DecisionBody>),
    responses((status = 200, body = AccessRequest), (status = 403, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
pub async fn reject(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    body: Bytes,
) -> Result<Json<AccessRequest>, ApiError> {
    decide(state, caller, id, &body, false).await
}

async fn decide(
    state: AppState,
    caller: Caller,
    id: Uuid,
    body: &Bytes,
    approve: bool,
) -> Result<Json<AccessRequest>, ApiError> {
    let comment = comment_of(body)?;
    let old = load(&state, &caller, id).await?;
    let mut new = old.clone();
    let may = state
        .access
        .may_review(&caller.identity, &old.decision.reviewers);
    let (me, now) = (caller.identity.subject.as_str(), timefmt::now());
    let granted = new
        .decision
        .decide(&old.subject, me, may, approve, comment, now)
        .map_err(decision_error)?;
    let kind = if !approve {
        "access.reject"
    } else if granted {
        new.ends_at =
            Some(now + time::Duration::seconds(i64::try_from(new.duration_secs).unwrap_or(3600)));
        "access.grant"
    } else {
        "access.approve"
    };
    let event = access_event(kind, &new).by(&caller.identity);
    if !state
        .store
        .update_access_request(&old, &new, &event)
        .await
        .map_err(|e| ApiError::store(&e))?
    {
        return Err(changed_meanwhile());
    }
    Ok(Json(new))
}

/// End a grant now, or withdraw a pending request (its requester, a reviewer, or
/// an admin). Open sessions under the grant are closed at once.
#[utoipa::path(post, path = "/api/access-requests/{id}/revoke", tag = "access-requests", security(("bearer" = [])),
    params(("id" = Uuid, Path)), request_body(content = Option<DecisionBody>),
    responses((status = 200, body = AccessRequest), (status = 409, body = ErrorBody)))]
pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    body: Bytes,
) -> Result<Json<AccessRequest>, ApiError> {
    let comment = comment_of(&body)?;
    let old = load(&state, &caller, id).await?;
    if !matches!(
        old.decision.status,
        RequestStatus::Pending | RequestStatus::Approved
    ) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_active",
            format!(
                "the request is {}, nothing to revoke",
                old.decision.status.as_str()
            ),
        ));
    }
    let mut new = old.clone();
    new.decision.status = RequestStatus::Revoked;
    new.decision.decided_by = Some(caller.identity.subject.clone());
    new.decision.comment = comment;
    new.decision.decided_at = Some(timefmt::now());
    let event = access_event("access.revoke", &new).by(&caller.identity);
    if !state
        .store
        .update_access_request(&old, &new, &event)
        .await
        .map_err(|e| ApiError::store(&e))?
    {
        return Err(changed_meanwhile());
    }
    state.access.end_grant(
        id,
        &format!(
            "{} by {}",
            grant_end_message(&new, "been revoked"),
            caller.identity.subject
        ),
    );
    Ok(Json(new))
}
