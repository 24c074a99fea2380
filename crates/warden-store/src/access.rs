//! Just-in-time access requests (an approved one is a grant with an end time) and
//! reviews of held commands. Both are approved by distinct reviewers up to a
//! threshold, and ended by one rejection; every change is written together with
//! its audit event, and guarded by the state it was decided on, so two reviewers
//! (or two gateways) deciding at once cannot both win.

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;
use time::OffsetDateTime;
use uuid::Uuid;
use warden_core::{Event, timefmt};

use crate::util::{opt_time_from_db, sha256_hex, time_from_db};
use crate::{Result, Store, StoreError};

/// Where a request or a review stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RequestStatus {
    Pending,
    /// Approved by enough reviewers: an access request is then a grant until its
    /// end; a review lets its command run (once).
    Approved,
    Rejected,
    /// The grant ended, or the review timed out undecided.
    Expired,
    /// A grant ended early by a reviewer or its requester.
    Revoked,
    /// A review whose client left before anyone decided: nothing will run.
    Abandoned,
}

impl RequestStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestStatus::Pending => "pending",
            RequestStatus::Approved => "approved",
            RequestStatus::Rejected => "rejected",
            RequestStatus::Expired => "expired",
            RequestStatus::Revoked => "revoked",
            RequestStatus::Abandoned => "abandoned",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            RequestStatus::Pending,
            RequestStatus::Approved,
            RequestStatus::Rejected,
            RequestStatus::Expired,
            RequestStatus::Revoked,
            RequestStatus::Abandoned,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// One reviewer's approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Approval {
    pub subject: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
    pub comment: Option<String>,
}

/// The decision part shared by access requests and reviews.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Approvals {
    pub status: RequestStatus,
    /// Groups whose members may decide (snapshot of the connection's reviewers).
    pub reviewers: Vec<String>,
    pub required: u32,
    pub approvals: Vec<Approval>,
    /// Who rejected or revoked it.
    pub decided_by: Option<String>,
    pub comment: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub decided_at: Option<OffsetDateTime>,
}

/// Why a reviewer's decision was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecisionError {
    #[error("you cannot decide your own request")]
    OwnRequest,
    #[error("you are not in a reviewer group of this connection")]
    NotReviewer,
    #[error("you already approved it")]
    AlreadyApproved,
    #[error("it is {0}, not pending")]
    NotPending(&'static str),
}

impl Approvals {
    pub fn new(reviewers: Vec<String>, required: u32) -> Self {
        Self {
            status: RequestStatus::Pending,
            reviewers,
            required: required.max(1),
            approvals: Vec::new(),
            decided_by: None,
            comment: None,
            decided_at: None,
        }
    }

    fn check(&self, requester: &str, by: &str, may_review: bool) -> Result<(), DecisionError> {
        if self.status != RequestStatus::Pending {
            return Err(DecisionError::NotPending(self.status.as_str()));
        }
        if by == requester {
            return Err(DecisionError::OwnRequest);
        }
        if !may_review {
            return Err(DecisionError::NotReviewer);
        }
        Ok(())
    }

    /// Adds `by`'s approval; true when it completes the threshold.
    pub fn approve(
        &mut self,
        requester: &str,
        by: &str,
        may_review: bool,
        comment: Option<String>,
        at: OffsetDateTime,
    ) -> Result<bool, DecisionError> {
        self.check(requester, by, may_review)?;
        if self.approvals.iter().any(|a| a.subject == by) {
            return Err(DecisionError::AlreadyApproved);
        }
        self.approvals.push(Approval {
            subject: by.to_string(),
            at,
            comment,
        });
        let done = self.approvals.len() >= self.required as usize;
        if done {
            self.status = RequestStatus::Approved;
            self.decided_at = Some(at);
        }
        Ok(done)
    }

    /// Approves (`approve`) or rejects as `by`; true when an approval completes the
    /// threshold.
    pub fn decide(
        &mut self,
        requester: &str,
        by: &str,
        may_review: bool,
        approve: bool,
        comment: Option<String>,
        at: OffsetDateTime,
    ) -> Result<bool, DecisionError> {
        if approve {
            self.approve(requester, by, may_review, comment, at)
        } else {
            self.reject(requester, by, may_review, comment, at)
                .map(|()| false)
        }
    }

    /// One rejection ends it.
    pub fn reject(
        &mut self,
        requester: &str,
        by: &str,
        may_review: bool,
        comment: Option<String>,
        at: OffsetDateTime,
    ) -> Result<(), DecisionError> {
        self.check(requester, by, may_review)?;
        self.status = RequestStatus::Rejected;
        self.decided_by = Some(by.to_string());
        self.comment = comment;
        self.decided_at = Some(at);
        Ok(())
    }
}

/// A request for time-boxed access to a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AccessRequest {
    pub id: Uuid,
    pub connection: String,
    pub subject: String,
    pub groups: Vec<String>,
    pub reason: String,
    pub duration_secs: u64,
    #[serde(flatten)]
    pub decision: Approvals,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// When the grant ends (set at approval).
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub ends_at: Option<OffsetDateTime>,
}

/// A command held until reviewers approve it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Review {
    pub id: Uuid,
    /// The session the command waits in; none for a review asked for ahead.
    pub session_id: Option<Uuid>,
    pub connection: String,
    pub subject: String,
    pub groups: Vec<String>,
    pub command: String,
    /// The review rule that held it.
    pub rule: String,
    #[serde(flatten)]
    pub decision: Approvals,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// Undecided by then, it expires; approved, it may be used until then.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: OffsetDateTime,
    /// When the approved command ran.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub used_at: Option<OffsetDateTime>,
}

/// Filters for listing requests or reviews; all optional, combined with AND.
#[derive(Debug, Clone, Default)]
pub struct RequestFilter {
    pub subject: Option<String>,
    pub connection: Option<String>,
    pub status: Option<RequestStatus>,
    pub limit: i64,
}

const ACCESS_COLUMNS: &str = "id, connection, subject, groups_json, reason, duration_secs, status, \
     reviewers_json, required_approvals, approvals_json, decided_by, decision_comment, \
     created_at, decided_at, ends_at";

const REVIEW_COLUMNS: &str = "id, session_id, connection, subject, groups_json, command, \
     command_hash, rule, status, reviewers_json, required_approvals, approvals_json, decided_by, \
     decision_comment, created_at, expires_at, decided_at, used_at";

fn opt_micros(t: Option<OffsetDateTime>) -> Option<i64> {
    t.map(timefmt::to_micros)
}

impl Store {
    pub async fn insert_access_request(&self, r: &AccessRequest, event: &Event) -> Result<()> {
        let d = &r.decision;
        let mut tx = self.begin_audited().await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO access_requests ({ACCESS_COLUMNS}) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
        )))
        .bind(r.id.to_string())
        .bind(&r.connection)
        .bind(&r.subject)
        .bind(serde_json::to_string(&r.groups)?)
        .bind(&r.reason)
        .bind(i64::try_from(r.duration_secs).unwrap_or(i64::MAX))
        .bind(d.status.as_str())
        .bind(serde_json::to_string(&d.reviewers)?)
        .bind(i64::from(d.required))
        .bind(serde_json::to_string(&d.approvals)?)
        .bind(d.decided_by.as_deref())
        .bind(d.comment.as_deref())
        .bind(timefmt::to_micros(r.created_at))
        .bind(opt_micros(d.decided_at))
        .bind(opt_micros(r.ends_at))
        .execute(tx.conn())
        .await?;
        tx.commit_with(event).await?;
        Ok(())
    }

    pub async fn access_request(&self, id: Uuid) -> Result<Option<AccessRequest>> {
        self.request_row(ACCESS_COLUMNS, "access_requests", id, access_from_row)
            .await
    }

    /// Newest first.
    pub async fn list_access_requests(&self, f: &RequestFilter) -> Result<Vec<AccessRequest>> {
        self.request_rows(ACCESS_COLUMNS, "access_requests", f, access_from_row)
            .await
    }

    /// Writes `new` and records `event` if the request is still as `old` was read
    /// (same status and approvals); false when someone else changed it first.
    pub async fn update_access_request(
        &self,
        old: &AccessRequest,
        new: &AccessRequest,
        event: &Event,
    ) -> Result<bool> {
        self.update_decision(
            "access_requests",
            new.id,
            &old.decision,
            &new.decision,
            Some(new.ends_at),
            event,
        )
        .await
    }

    /// The grant (approved, not ended) of `subject` on `connection` that ends last.
    pub async fn active_grant(
        &self,
        subject: &str,
        connection: &str,
        now: OffsetDateTime,
    ) -> Result<Option<AccessRequest>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ACCESS_COLUMNS} FROM access_requests WHERE subject = $1 AND connection = $2 \
             AND status = 'approved' AND ends_at > $3 ORDER BY ends_at DESC LIMIT 1"
        )))
        .bind(subject)
        .bind(connection)
        .bind(timefmt::to_micros(now))
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(access_from_row).transpose()
    }

    /// Grants whose end has come but that are still marked approved.
    pub async fn ended_grants(&self, now: OffsetDateTime) -> Result<Vec<AccessRequest>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ACCESS_COLUMNS} FROM access_requests \
             WHERE status = 'approved' AND ends_at <= $1 ORDER BY ends_at LIMIT 100"
        )))
        .bind(timefmt::to_micros(now))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(access_from_row).collect()
    }

    /// The statuses of some requests (for sessions watching their grants).
    pub async fn access_statuses(&self, ids: &[Uuid]) -> Result<Vec<(Uuid, RequestStatus)>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(100) {
            let sql = format!(
                "SELECT id, status FROM access_requests WHERE id IN ({})",
                crate::util::placeholders(chunk.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                q = q.bind(id.to_string());
            }
            for row in q.fetch_all(&self.pool).await? {
                let id: String = row.try_get("id")?;
                let status: String = row.try_get("status")?;
                out.push((
                    id.parse()
                        .map_err(|_| StoreError::Corrupt("request id".into()))?,
                    RequestStatus::parse(&status)
                        .ok_or_else(|| StoreError::Corrupt(format!("status `{status}`")))?,
                ));
            }
        }
        Ok(out)
    }

    pub async fn insert_review(&self, r: &Review, event: &Event) -> Result<()> {
        let d = &r.decision;
        let mut tx = self.begin_audited().await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO reviews ({REVIEW_COLUMNS}) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)"
        )))
        .bind(r.id.to_string())
        .bind(r.session_id.map(|s| s.to_string()))
        .bind(&r.connection)
        .bind(&r.subject)
        .bind(serde_json::to_string(&r.groups)?)
        .bind(&r.command)
        .bind(sha256_hex(r.command.as_bytes()))
        .bind(&r.rule)
        .bind(d.status.as_str())
        .bind(serde_json::to_string(&d.reviewers)?)
        .bind(i64::from(d.required))
        .bind(serde_json::to_string(&d.approvals)?)
        .bind(d.decided_by.as_deref())
        .bind(d.comment.as_deref())
        .bind(timefmt::to_micros(r.created_at))
        .bind(timefmt::to_micros(r.expires_at))
        .bind(opt_micros(d.decided_at))
        .bind(opt_micros(r.used_at))
        .execute(tx.conn())
        .await?;
        tx.commit_with(event).await?;
        Ok(())
    }

    pub async fn review(&self, id: Uuid) -> Result<Option<Review>> {
        self.request_row(REVIEW_COLUMNS, "reviews", id, review_from_row)
            .await
    }

    /// Newest first.
    pub async fn list_reviews(&self, f: &RequestFilter) -> Result<Vec<Review>> {
        self.request_rows(REVIEW_COLUMNS, "reviews", f, review_from_row)
            .await
    }

    /// Writes `new`'s decision and records `event` if the review is still as `old`
    /// was read; false when someone else changed it first.
    pub async fn update_review(&self, old: &Review, new: &Review, event: &Event) -> Result<bool> {
        self.update_decision("reviews", new.id, &old.decision, &new.decision, None, event)
            .await
    }

    /// An approved, unused, unexpired review of exactly `command` by `subject` on
    /// `connection`, oldest first.
    pub async fn reusable_review(
        &self,
        subject: &str,
        connection: &str,
        command: &str,
        now: OffsetDateTime,
    ) -> Result<Option<Review>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {REVIEW_COLUMNS} FROM reviews WHERE subject = $1 AND connection = $2 \
             AND command_hash = $3 AND status = 'approved' AND used_at IS NULL AND expires_at > $4 \
             ORDER BY created_at LIMIT 5"
        )))
        .bind(subject)
        .bind(connection)
        .bind(sha256_hex(command.as_bytes()))
        .bind(timefmt::to_micros(now))
        .fetch_all(&self.pool)
        .await?;
        for row in &rows {
            let r = review_from_row(row)?;
            if r.command == command {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }

    /// Marks an approved review's command as run; false if it already was (each
    /// approval runs its command once).
    pub async fn use_review(&self, id: Uuid, now: OffsetDateTime) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE reviews SET used_at = $1 WHERE id = $2 AND status = 'approved' AND used_at IS NULL",
        )
        .bind(timefmt::to_micros(now))
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Pending reviews whose time is up.
    pub async fn overdue_reviews(&self, now: OffsetDateTime) -> Result<Vec<Review>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {REVIEW_COLUMNS} FROM reviews WHERE status = 'pending' AND expires_at <= $1 \
             ORDER BY expires_at LIMIT 100"
        )))
        .bind(timefmt::to_micros(now))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(review_from_row).collect()
    }

    async fn request_row<T>(
        &self,
        columns: &str,
        table: &str,
        id: Uuid,
        from_row: fn(&AnyRow) -> Result<T>,
    ) -> Result<Option<T>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {columns} FROM {table} WHERE id = $1"
        )))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(from_row).transpose()
    }

    async fn request_rows<T>(
        &self,
        columns: &str,
        table: &str,
        f: &RequestFilter,
        from_row: fn(&AnyRow) -> Result<T>,
    ) -> Result<Vec<T>> {
        let (sql, args) = filtered(columns, table, f);
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for a in args {
            q = q.bind(a);
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter().map(from_row).collect()
    }

    /// The compare-and-set both kinds share: the decision columns change (and, for
    /// access requests, `ends_at`) only if status and approvals are still `old`'s.
    async fn update_decision(
        &self,
        table: &str,
        id: Uuid,
        old: &Approvals,
        new: &Approvals,
        ends_at: Option<Option<OffsetDateTime>>,
        event: &Event,
    ) -> Result<bool> {
        let ends = if ends_at.is_some() {
            ", ends_at = $9"
        } else {
            ""
        };
        let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {table} SET status = $1, approvals_json = $2, decided_by = $3, \
             decision_comment = $4, decided_at = $5{ends} \
             WHERE id = $6 AND status = $7 AND approvals_json = $8"
        )))
        .bind(new.status.as_str())
        .bind(serde_json::to_string(&new.approvals)?)
        .bind(new.decided_by.as_deref())
        .bind(new.comment.as_deref())
        .bind(opt_micros(new.decided_at))
        .bind(id.to_string())
        .bind(old.status.as_str())
        .bind(serde_json::to_string(&old.approvals)?);
        if let Some(ends_at) = ends_at {
            q = q.bind(opt_micros(ends_at));
        }
        let mut tx = self.begin_audited().await?;
        let rows = q.execute(tx.conn()).await?.rows_affected();
        tx.commit_if_changed(rows, event).await
    }
}

/// `SELECT` with the filter's clauses, newest first, and the values to bind.
fn filtered(columns: &str, table: &str, f: &RequestFilter) -> (String, Vec<String>) {
    let mut sql = format!("SELECT {columns} FROM {table} WHERE 1 = 1");
    let mut args = Vec::new();
    for (column, value) in [
        ("subject", f.subject.clone()),
        ("connection", f.connection.clone()),
        ("status", f.status.map(|s| s.as_str().to_string())),
    ] {
        if let Some(v) = value {
            args.push(v);
            sql.push_str(&format!(" AND {column} = ${}", args.len()));
        }
    }
    sql.push_str(&format!(
        " ORDER BY created_at DESC LIMIT {}",
        f.limit.clamp(1, 1000)
    ));
    (sql, args)
}

fn approvals_from_row(row: &AnyRow) -> Result<Approvals> {
    let status: String = row.try_get("status")?;
    Ok(Approvals {
        status: RequestStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("status `{status}`")))?,
        reviewers: serde_json::from_str(&row.try_get::<String, _>("reviewers_json")?)?,
        required: u32::try_from(row.try_get::<i64, _>("required_approvals")?)
            .map_err(|_| StoreError::Corrupt("required approvals".into()))?,
        approvals: serde_json::from_str(&row.try_get::<String, _>("approvals_json")?)?,
        decided_by: row.try_get("decided_by")?,
        comment: row.try_get("decision_comment")?,
        decided_at: opt_time_from_db(row.try_get("decided_at")?)?,
    })
}

fn uuid_from(text: &str) -> Result<Uuid> {
    text.parse()
        .map_err(|_| StoreError::Corrupt(format!("id `{text}`")))
}

fn access_from_row(row: &AnyRow) -> Result<AccessRequest> {
    Ok(AccessRequest {
        id: uuid_from(&row.try_get::<String, _>("id")?)?,
        connection: row.try_get("connection")?,
        subject: row.try_get("subject")?,
        groups: serde_json::from_str(&row.try_get::<String, _>("groups_json")?)?,
        reason: row.try_get("reason")?,
        duration_secs: u64::try_from(row.try_get::<i64, _>("duration_secs")?).unwrap_or(0),
        decision: approvals_from_row(row)?,
        created_at: time_from_db(row.try_get("created_at")?)?,
        ends_at: opt_time_from_db(row.try_get("ends_at")?)?,
    })
}

fn review_from_row(row: &AnyRow) -> Result<Review> {
    let session: Option<String> = row.try_get("session_id")?;
    Ok(Review {
        id: uuid_from(&row.try_get::<String, _>("id")?)?,
        session_id: session.as_deref().map(uuid_from).transpose()?,
        connection: row.try_get("connection")?,
        subject: row.try_get("subject")?,
        groups: serde_json::from_str(&row.try_get::<String, _>("groups_json")?)?,
        command: row.try_get("command")?,
        rule: row.try_get("rule")?,
        decision: approvals_from_row(row)?,
        created_at: time_from_db(row.try_get("created_at")?)?,
        expires_at: time_from_db(row.try_get("expires_at")?)?,
        used_at: opt_time_from_db(row.try_get("used_at")?)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_self_approval_and_rejection() {
        let now = timefmt::now();
        let mut a = Approvals::new(vec!["dba".into()], 2);
        assert_eq!(
            a.approve("alice", "alice", true, None, now),
            Err(DecisionError::OwnRequest)
        );
        assert_eq!(
            a.approve("alice", "bob", false, None, now),
            Err(DecisionError::NotReviewer)
        );
        assert_eq!(a.approve("alice", "bob", true, None, now), Ok(false));
        assert_eq!(
            a.approve("alice", "bob", true, None, now),
            Err(DecisionError::AlreadyApproved)
        );
        assert_eq!(a.status, RequestStatus::Pending);
        assert_eq!(a.approve("alice", "carol", true, None, now), Ok(true));
        assert_eq!(a.status, RequestStatus::Approved);
        assert_eq!(
            a.reject("alice", "dave", true, None, now),
            Err(DecisionError::NotPending("approved"))
        );
        let mut b = Approvals::new(vec![], 0);
        assert_eq!(b.required, 1);
        b.reject("alice", "bob", true, Some("no".into()), now)
            .unwrap();
        assert_eq!(b.status, RequestStatus::Rejected);
        assert_eq!(b.decided_by.as_deref(), Some("bob"));
    }
}
