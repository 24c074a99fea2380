//! `/api/reviews`: commands held at the gateway until the connection's reviewers
//! approve them. A proxy opens a review when a review rule matches and the client
//! waits; approving runs the command, rejecting (or the timeout) refuses it. Where
//! a connection allows reuse, a review can also be asked for ahead of time and its
//! approval lets the identical command run once.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use uuid::Uuid;
use warden_core::{AuthMethod, Decision, timefmt};
use warden_store::access::{Approvals, Review};

use super::access_requests::{
    RequestQuery, changed_meanwhile, comment_of, decision_error, may_see, visible_filter,
};
use super::extract::{ApiJson, Caller};
use super::{ApiError, AppState, ErrorBody};
use crate::access::review_event;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewCreate {
    pub connection: String,
    /// The exact statement or command line that will be run.
    pub command: String,
}

fn visible(state: &AppState, caller: &Caller, r: &Review) -> bool {
    may_see(state, caller, &r.subject, &r.decision.reviewers)
}

/// Reviews the caller asked for or may decide (admins: all), newest first.
#[utoipa::path(get, path = "/api/reviews", tag = "reviews", security(("bearer" = [])),
    params(RequestQuery),
    responses((status = 200, body = Vec<Review>)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<RequestQuery>,
) -> Result<Json<Vec<Review>>, ApiError> {
    let (filter, wanted) = visible_filter(&caller, q)?;
    let all = state
        .store
        .list_reviews(&filter)
        .await
        .map_err(|e| ApiError::store(&e))?;
    Ok(Json(
        all.into_iter()
            .filter(|r| visible(&state, &caller, r))
            .take(wanted)
            .collect(),
    ))
}

/// Ask ahead for a review of a command (connections with
/// `access.reuse_approved_reviews`); once approved, running exactly that command
/// through the gateway does not wait again, once.
#[utoipa::path(post, path = "/api/reviews", tag = "reviews", security(("bearer" = [])),
    request_body = ReviewCreate,
    responses((status = 201, body = Review), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<ReviewCreate>,
) -> Result<(StatusCode, Json<Review>), ApiError> {
    if matches!(caller.identity.method, AuthMethod::SshKey { .. }) {
        return Err(ApiError::forbidden("an SSH key cannot ask for reviews"));
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
    if !conn.access.reuse_approved_reviews {
        return Err(ApiError::bad_request(
            "reviews_not_reusable",
            format!(
                "connection `{}` does not reuse approved reviews (access.reuse_approved_reviews); run the command and it is held for review",
                conn.name
            ),
        ));
    }
    if req.command.trim().is_empty() || req.command.len() > 64 * 1024 {
        return Err(ApiError::bad_request(
            "invalid_command",
            "command must be 1 byte to 64 KiB",
        ));
    }
    let now = timefmt::now();
    // Asked ahead, it stays open (and its approval usable) as long as the longest
    // grant the connection allows, not just a waiting client's timeout.
    let open_for = conn
        .access
        .max_duration_secs
        .max(conn.access.review_timeout_secs);
    let timeout = i64::try_from(open_for).unwrap_or(3600);
    let review = Review {
        id: Uuid::now_v7(),
        session_id: None,
        connection: conn.name.clone(),
        subject: caller.identity.subject.clone(),
        groups: caller.identity.groups.clone(),
        command: req.command,
        rule: "requested ahead".into(),
        decision: Approvals::new(conn.access.reviewers.clone(), conn.access.approvals),
        created_at: now,
        expires_at: now + time::Duration::seconds(timeout),
        used_at: None,
    };
    let event = review_event("review.request", &review)
        .by(&caller.identity)
        .with_decision(Decision::Review {
            rule: review.rule.clone(),
        });
    state
        .store
        .insert_review(&review, &event)
        .await
        .map_err(|e| ApiError::store(&e))?;
    Ok((StatusCode::CREATED, Json(review)))
}

async fn load(state: &AppState, caller: &Caller, id: Uuid) -> Result<Review, ApiError> {
    state
        .store
        .review(id)
        .await
        .map_err(|e| ApiError::store(&e))?
        .filter(|r| visible(state, caller, r))
        .ok_or_else(|| ApiError::not_found(format!("review {id}")))
}

#[utoipa::path(get, path = "/api/reviews/{id}", tag = "reviews", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Review), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<Json<Review>, ApiError> {
    Ok(Json(load(&state, &caller, id).await?))
}

/// Approve (a reviewer of the connection, not the requester); the last approval
/// the threshold needs releases the waiting command.
#[utoipa::path(post, path = "/api/reviews/{id}/approve", tag = "reviews", security(("bearer" = [])),
    params(("id" = Uuid, Path)), request_body(content = Option<super::access_requests::DecisionBody>),
    responses((status = 200, body = Review), (status = 403, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
pub async fn approve(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    body: Bytes,
) -> Result<Json<Review>, ApiError> {
    decide(state, caller, id, &body, true).await
}

/// Reject (a reviewer of the connection, not the requester): the waiting command
/// is refused.
#[utoipa::path(post, path = "/api/reviews/{id}/reject", tag = "reviews", security(("bearer" = [])),
    params(("id" = Uuid, Path)), request_body(content = Option<super::access_requests::DecisionBody>),
    responses((status = 200, body = Review), (status = 403, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
pub async fn reject(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    body: Bytes,
) -> Result<Json<Review>, ApiError> {
    decide(state, caller, id, &body, false).await
}

async fn decide(
    state: AppState,
    caller: Caller,
    id: Uuid,
    body: &Bytes,
    approve: bool,
) -> Result<Json<Review>, ApiError> {
    let comment = comment_of(body)?;
    let old = load(&state, &caller, id).await?;
    let now = timefmt::now();
    if old.expires_at <= now {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_pending",
            "the review has expired",
        ));
    }
    let mut new = old.clone();
    let may = state
        .access
        .may_review(&caller.identity, &old.decision.reviewers);
    let me = caller.identity.subject.as_str();
    new.decision
        .decide(&old.subject, me, may, approve, comment, now)
        .map_err(decision_error)?;
    let kind = if approve {
        "review.approve"
    } else {
        "review.reject"
    };
    let mut event = review_event(kind, &new).by(&caller.identity);
    if let Some(s) = new.session_id {
        event = event.in_session(s);
    }
    if !state
        .store
        .update_review(&old, &new, &event)
        .await
        .map_err(|e| ApiError::store(&e))?
    {
        return Err(changed_meanwhile());
    }
    state.access.review_decided(id);
    Ok(Json(new))
}
