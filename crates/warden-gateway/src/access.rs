//! Just-in-time access and command reviews at run time: which grant a session opens
//! under, holding commands until their review is decided, and expiring grants and
//! reviews nobody decided in time. The API records decisions in the store and calls
//! [`AccessControl::review_decided`] and [`AccessControl::end_grant`] so waiting
//! sessions learn at once; the [`SessionWatch`] ends sessions whose grant ended,
//! also when another gateway sharing the store decided it.

use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;
use uuid::Uuid;
use warden_core::{
    AccessOptions, Connection, Decision, Event, Identity, ReviewHold, ReviewOutcome, timefmt,
};
use warden_store::access::{AccessRequest, Approvals, RequestStatus, Review};
use warden_store::{Store, StoreError};

use crate::session_watch::{Cause, SessionWatch};

/// How often grants and reviews are checked for their end.
const TICK: Duration = Duration::from_secs(1);
/// A waiting command re-reads its review at least this often (decisions made by
/// another gateway sharing the store).
const REVIEW_POLL: Duration = Duration::from_secs(2);

pub struct AccessControl {
    store: Arc<Store>,
    admin_groups: Vec<String>,
    /// Where reviewers reach the API, for the message a held client sees.
    api_url: String,
    /// Ends the sessions under a grant that ends.
    watch: Arc<SessionWatch>,
    /// Reviews commands wait on in this gateway.
    waiting: Mutex<HashMap<Uuid, Arc<Notify>>>,
}

/// Who holds a command, for its review.
pub struct Holder<'a> {
    pub session: Uuid,
    pub identity: &'a Identity,
    pub connection: &'a str,
    pub access: &'a AccessOptions,
}

impl AccessControl {
    pub fn new(
        store: Arc<Store>,
        admin_groups: Vec<String>,
        api_url: String,
        watch: Arc<SessionWatch>,
    ) -> Self {
        Self {
            store,
            admin_groups,
            api_url,
            watch,
            waiting: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `identity` may decide requests and reviews of a connection whose
    /// reviewer groups are `reviewers` (empty: the admin groups).
    pub fn may_review(&self, identity: &Identity, reviewers: &[String]) -> bool {
        if reviewers.is_empty() {
            identity.in_any_group(&self.admin_groups)
        } else {
            identity.in_any_group(reviewers)
        }
    }

    /// The grant a session on `conn` opens under: `Ok(None)` when the connection
    /// needs none, an error message when it needs one the caller lacks.
    pub async fn grant_for(
        &self,
        identity: &Identity,
        conn: &Connection,
    ) -> Result<Option<AccessRequest>, GrantError> {
        if !conn.access.request_required {
            return Ok(None);
        }
        match self
            .store
            .active_grant(&identity.subject, &conn.name, timefmt::now())
            .await
        {
            Ok(Some(g)) => Ok(Some(g)),
            Ok(None) => Err(GrantError::Missing(format!(
                "connection `{}` needs an approved access request: run `warden request {} --for 1h --reason \"...\"` and ask a reviewer to approve it",
                conn.name, conn.name
            ))),
            Err(e) => Err(GrantError::Store(e)),
        }
    }

    /// Ends every open session under `grant` now (it was revoked).
    pub fn end_grant(&self, grant: Uuid, reason: &str) {
        self.watch.end_grant(grant, Cause::GrantRevoked, reason);
    }

    /// Wakes the commands waiting on a review that was just decided.
    pub fn review_decided(&self, id: Uuid) {
        if let Some(n) = self
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
        {
            n.notify_waiters();
        }
    }

    /// Opens a review for a held command, or finds an approved one to reuse.
    pub async fn hold(
        &self,
        holder: Holder<'_>,
        command: &str,
        rule: &str,
    ) -> Result<ReviewHold, String> {
        let now = timefmt::now();
        let store_error = |e: StoreError| format!("the review cannot be stored ({e})");
        if holder.access.reuse_approved_reviews
            && let Some(r) = self
                .store
                .reusable_review(&holder.identity.subject, holder.connection, command, now)
                .await
                .map_err(store_error)?
            && self
                .store
                .use_review(r.id, now)
                .await
                .map_err(store_error)?
        {
            return Ok(ReviewHold::PreApproved {
                id: r.id.to_string(),
            });
        }
        let timeout = holder.access.review_timeout_secs.clamp(1, 7 * 24 * 3600);
        let review = Review {
            id: Uuid::now_v7(),
            session_id: Some(holder.session),
            connection: holder.connection.to_string(),
            subject: holder.identity.subject.clone(),
            groups: holder.identity.groups.clone(),
            command: command.to_string(),
            rule: rule.to_string(),
            decision: Approvals::new(holder.access.reviewers.clone(), holder.access.approvals),
            created_at: now,
            expires_at: now + time::Duration::seconds(i64::try_from(timeout).unwrap_or(600)),
            used_at: None,
        };
        let event = review_event("review.request", &review)
            .by(holder.identity)
            .in_session(holder.session)
            .with_decision(Decision::Review {
                rule: rule.to_string(),
            });
        self.store
            .insert_review(&review, &event)
            .await
            .map_err(store_error)?;
        let id = review.id;
        Ok(ReviewHold::Held {
            id: id.to_string(),
            message: format!(
                "Warden holds this command for review {id} (rule {rule}): a reviewer approves it with `warden review approve {id}` or POST {}/api/reviews/{id}/approve; waiting up to {timeout} s",
                self.api_url
            ),
        })
    }

    /// Waits until review `id` is decided or expires. An approval is used here:
    /// the command runs once.
    pub async fn wait(&self, id: &str) -> ReviewOutcome {
        let expired = |reason: String| ReviewOutcome::Expired {
            id: id.to_string(),
            reason,
        };
        let Ok(uuid) = id.parse::<Uuid>() else {
            return expired("unknown review".into());
        };
        let notify = self
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(uuid)
            .or_insert_with(|| Arc::new(Notify::new()))
            .clone();
        // Forgotten however the wait ends, also when the session drops it.
        let _forget = Forget(self, uuid);
        loop {
            // Registered before reading, so a decision in between still wakes us.
            let woken = notify.notified();
            let review = match self.store.review(uuid).await {
                Ok(Some(r)) => r,
                Ok(None) => return expired(format!("review {id} is gone")),
                Err(e) => {
                    tracing::warn!(error = %e, review = %id, "review unreadable; retrying");
                    tokio::time::sleep(REVIEW_POLL).await;
                    continue;
                }
            };
            let now = timefmt::now();
            match review.decision.status {
                RequestStatus::Approved => {
                    return match self.store.use_review(uuid, now).await {
                        Ok(true) => ReviewOutcome::Approved { id: id.to_string() },
                        Ok(false) => expired(format!("review {id} was already used")),
                        Err(e) => expired(format!("review {id} cannot be used ({e})")),
                    };
                }
                RequestStatus::Rejected => {
                    let by = review.decision.decided_by.unwrap_or_default();
                    let why = review
                        .decision
                        .comment
                        .map(|c| format!(": {c}"))
                        .unwrap_or_default();
                    return ReviewOutcome::Rejected {
                        id: id.to_string(),
                        reason: format!("review {id} was rejected by {by}{why}"),
                    };
                }
                RequestStatus::Expired | RequestStatus::Revoked => {
                    return expired(format!("review {id} timed out without a decision"));
                }
                RequestStatus::Abandoned => {
                    return expired(format!("review {id} was abandoned: the client left"));
                }
                RequestStatus::Pending if review.expires_at <= now => {
                    self.expire_review(&review).await;
                    continue;
                }
                RequestStatus::Pending => {}
            }
            let left = (review.expires_at - now)
                .try_into()
                .unwrap_or(Duration::ZERO)
                .min(REVIEW_POLL);
            let _ = tokio::time::timeout(left, woken).await;
        }
    }

    /// The client whose command review `id` holds has left: a pending review is
    /// closed as `abandoned` (audited), so no approval can claim the command runs.
    pub async fn abandon_review(&self, id: Uuid) {
        let review = match self.store.review(id).await {
            Ok(Some(r)) if r.decision.status == RequestStatus::Pending => r,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, review = %id, "review not abandoned");
                return;
            }
        };
        let mut abandoned = review.clone();
        abandoned.decision.status = RequestStatus::Abandoned;
        abandoned.decision.decided_at = Some(timefmt::now());
        let mut event = review_event("review.abandon", &abandoned);
        if let Some(s) = review.session_id {
            event = event.in_session(s);
        }
        match self.store.update_review(&review, &abandoned, &event).await {
            Ok(_) => self.review_decided(review.id),
            Err(e) => tracing::warn!(error = %e, review = %review.id, "review not abandoned"),
        }
    }

    async fn expire_review(&self, review: &Review) {
        let mut expired = review.clone();
        expired.decision.status = RequestStatus::Expired;
        expired.decision.decided_at = Some(timefmt::now());
        let mut event = review_event("review.expire", &expired);
        if let Some(s) = review.session_id {
            event = event.in_session(s);
        }
        match self.store.update_review(review, &expired, &event).await {
            Ok(_) => self.review_decided(review.id),
            Err(e) => tracing::warn!(error = %e, review = %review.id, "review not expired"),
        }
    }

    async fn expire_grant(&self, grant: &AccessRequest) {
        let mut ended = grant.clone();
        ended.decision.status = RequestStatus::Expired;
        let event = access_event("access.expire", &ended);
        if let Err(e) = self
            .store
            .update_access_request(grant, &ended, &event)
            .await
        {
            tracing::warn!(error = %e, request = %grant.id, "grant not expired");
        }
        self.watch.end_grant(
            grant.id,
            Cause::GrantEnded,
            &grant_end_message(grant, "ended"),
        );
    }

    /// Expires grants and reviews whose time has come, every second, until shutdown.
    pub async fn run(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = shutdown.changed() => return,
            }
            let now = timefmt::now();
            match self.store.ended_grants(now).await {
                Ok(grants) => {
                    for g in grants {
                        self.expire_grant(&g).await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "grants not checked"),
            }
            match self.store.overdue_reviews(now).await {
                Ok(reviews) => {
                    for r in reviews {
                        self.expire_review(&r).await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reviews not checked"),
            }
        }
    }
}

/// Removes a review from the waiting set when its wait ends.
struct Forget<'a>(&'a AccessControl, Uuid);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.1);
    }
}

/// Why a session cannot open under a grant.
#[derive(Debug)]
pub enum GrantError {
    Missing(String),
    Store(StoreError),
}

/// What a client is told when its grant ends.
pub fn grant_end_message(grant: &AccessRequest, how: &str) -> String {
    format!("your access grant {} has {how}", grant.id)
}

/// An `access.*` event about a request (on its connection; the actor is added by
/// the caller, when there is one).
pub fn access_event(kind: &str, r: &AccessRequest) -> Event {
    Event::new(
        kind,
        json!({
            "request": r.id, "requester": r.subject, "reason": r.reason,
            "duration_secs": r.duration_secs, "status": r.decision.status,
            "approvals": r.decision.approvals.len(), "required": r.decision.required,
            "ends_at": r.ends_at.map(timefmt::rfc3339),
            "decided_by": r.decision.decided_by, "comment": r.decision.comment,
        }),
    )
    .on_connection(&r.connection)
}

/// A `review.*` event about a review.
pub fn review_event(kind: &str, r: &Review) -> Event {
    Event::new(
        kind,
        json!({
            "review": r.id, "requester": r.subject, "command": r.command, "rule": r.rule,
            "status": r.decision.status, "approvals": r.decision.approvals.len(),
            "required": r.decision.required, "expires_at": timefmt::rfc3339(r.expires_at),
            "decided_by": r.decision.decided_by, "comment": r.decision.comment,
        }),
    )
    .on_connection(&r.connection)
}
