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

/// What a write of a set expects to find, so two admins cannot overwrite each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyExpect {
    /// Create or replace, whatever is there.
    Any,
    /// Create only: a set of that name must not exist (`If-None-Match: *`).
    Absent,
    /// Replace only the set of this [`policy_version`] (`If-Match`).
    Version(String),
}

/// A stored set's version: the first 16 hex digits of the SHA-256 of its JSON, read
/// and written again (so the way it was formatted does not count).
pub fn policy_version(body: &str) -> String {
    let text = serde_json::from_str::<serde_json::Value>(body)
        .map(|v| v.to_string())
        .unwrap_or_else(|_| body.to_string());
    let mut hex = crate::sha256_hex(text.as_bytes());
    hex.truncate(16);
    hex
}

impl Store {
    /// One stored set's JSON, if there is one.
    pub async fn policy_set_body(&self, kind: &str, name: &str) -> Result<Option<String>> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT body FROM policy_sets WHERE kind = $1 AND name = $2")
                .bind(kind)
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|r| r.0))
    }

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
    /// was created. [`StoreError::Conflict`](crate::StoreError::Conflict) when it is
    /// not as `expect` says (the check and the write are one compare-and-set).
    pub async fn put_policy_set(
        &self,
        kind: &str,
        name: &str,
        body: &str,
        event: &Event,
        expect: &PolicyExpect,
    ) -> Result<bool> {
        let now = timefmt::to_micros(timefmt::now());
        let mut tx = self.begin_audited().await?;
        let current: Option<(String,)> =
            sqlx::query_as("SELECT body FROM policy_sets WHERE kind = $1 AND name = $2")
                .bind(kind)
                .bind(name)
                .fetch_optional(tx.conn())
                .await?;
        let changed = || crate::StoreError::Conflict(format!("{kind} policy `{name}` changed"));
        match (expect, &current) {
            (PolicyExpect::Absent, Some(_)) => {
                return Err(crate::StoreError::Conflict(format!(
                    "{kind} policy `{name}` exists"
                )));
            }
            (PolicyExpect::Version(_), None) => return Err(changed()),
            (PolicyExpect::Version(v), Some((text,))) if policy_version(text) != *v => {
                return Err(changed());
            }
            _ => {}
        }
        // Replaced only if it is still what was read: another writer in between
        // makes this a conflict, not a lost update.
        let updated = match &current {
            Some((text,)) => sqlx::query(
                "UPDATE policy_sets SET body = $1, updated_at = $2 \
                 WHERE kind = $3 AND name = $4 AND body = $5",
            )
            .bind(body)
            .bind(now)
            .bind(kind)
            .bind(name)
            .bind(text)
            .execute(tx.conn())
            .await?
            .rows_affected(),
            None => 0,
        };
        if current.is_some() && updated == 0 {
            return Err(changed());
        }
        if updated == 0 {
            // Another writer creating it at the same moment: a conflict, not an error.
            let inserted = sqlx::query(
                "INSERT INTO policy_sets (kind, name, body, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $4) ON CONFLICT (kind, name) DO NOTHING",
            )
            .bind(kind)
            .bind(name)
            .bind(body)
            .bind(now)
            .execute(tx.conn())
            .await?
            .rows_affected();
            if inserted == 0 {
                return Err(changed());
            }
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
