//! Policy sets managed through the API, stored as JSON documents. The store does not
//! interpret them; the gateway validates them with the policy engine before storing.

use sqlx::Row;
use time::OffsetDateTime;
use warden_core::{Event, timefmt};

use crate::util::time_from_db;
use crate::{Result, Store};

/// One stored policy set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPolicySet {
    /// `guardrails` or `masking`.
    pub kind: String,
    pub name: String,
    /// The set as JSON.
    pub body: String,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

impl Store {
    pub async fn list_policy_sets(&self) -> Result<Vec<StoredPolicySet>> {
        let rows = sqlx::query(
            "SELECT kind, name, body, created_at, updated_at FROM policy_sets ORDER BY kind, name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredPolicySet {
                    kind: r.try_get("kind")?,
                    name: r.try_get("name")?,
                    body: r.try_get("body")?,
                    created_at: time_from_db(r.try_get("created_at")?)?,
                    updated_at: time_from_db(r.try_get("updated_at")?)?,
                })
            })
            .collect()
    }

    /// Creates or replaces a set and records `event`, atomically; returns whether it
    /// was created.
    pub async fn put_policy_set(
        &self,
        kind: &str,
        name: &str,
        body: &str,
        event: &Event,
    ) -> Result<bool> {
        let now = timefmt::to_micros(timefmt::now());
        let mut tx = self.begin_audited().await?;
        let updated = sqlx::query(
            "UPDATE policy_sets SET body = $1, updated_at = $2 WHERE kind = $3 AND name = $4",
        )
        .bind(body)
        .bind(now)
        .bind(kind)
        .bind(name)
        .execute(tx.conn())
        .await?
        .rows_affected();
        if updated == 0 {
            sqlx::query(
                "INSERT INTO policy_sets (kind, name, body, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)",
            )
            .bind(kind)
            .bind(name)
            .bind(body)
            .bind(now)
            .execute(tx.conn())
            .await?;
        }
        tx.commit_with(event).await?;
        Ok(updated == 0)
    }

    /// Deletes a set and records `event`, atomically; false (nothing recorded) if absent.
    pub async fn delete_policy_set(&self, kind: &str, name: &str, event: &Event) -> Result<bool> {
        let mut tx = self.begin_audited().await?;
        let done = sqlx::query("DELETE FROM policy_sets WHERE kind = $1 AND name = $2")
            .bind(kind)
            .bind(name)
            .execute(tx.conn())
            .await?;
        tx.commit_if_changed(done.rows_affected(), event).await
    }
}
