//! Warden API keys: `wdn_<id>_<secret>`, stored as a SHA-256 of the whole token.
//!
//! The secret part is 256 random bits, so a fast hash is as strong as a slow one here
//! (nothing to brute-force); lookup is by id, comparison in constant time.

use sqlx::Row;
use sqlx::any::AnyRow;
use time::OffsetDateTime;
use warden_core::{Event, timefmt};

use crate::util::{opt_time_from_db, placeholders, time_from_db};
use crate::{Result, Store, StoreError};

/// A stored API key, without its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub id: String,
    pub name: String,
    /// The identity the key authenticates as.
    pub subject: String,
    pub groups: Vec<String>,
    pub secret_hash: String,
    pub created_by: String,
    pub created_at: OffsetDateTime,
    pub expires_at: Option<OffsetDateTime>,
    pub revoked_at: Option<OffsetDateTime>,
}

const COLUMNS: &str =
    "id, name, subject, groups_json, secret_hash, created_by, created_at, expires_at, revoked_at";

impl Store {
    /// Stores a new key and records `event`, atomically.
    pub async fn insert_api_key(&self, key: &ApiKeyRecord, event: &Event) -> Result<()> {
        let mut tx = self.begin_audited().await?;
        let done = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO api_keys ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (id) DO NOTHING"
        )))
        .bind(&key.id)
        .bind(&key.name)
        .bind(&key.subject)
        .bind(serde_json::to_string(&key.groups)?)
        .bind(&key.secret_hash)
        .bind(&key.created_by)
        .bind(timefmt::to_micros(key.created_at))
        .bind(key.expires_at.map(timefmt::to_micros))
        .bind(key.revoked_at.map(timefmt::to_micros))
        .execute(tx.conn())
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!("api key `{}`", key.id)));
        }
        tx.commit_with(event).await?;
        Ok(())
    }

    /// Replaces the hash of a key in place and un-revokes it (used for the configured
    /// admin token), recording `event`, atomically.
    pub async fn replace_api_key_secret(
        &self,
        id: &str,
        secret_hash: &str,
        expires_at: Option<OffsetDateTime>,
        event: &Event,
    ) -> Result<()> {
        let mut tx = self.begin_audited().await?;
        sqlx::query(
            "UPDATE api_keys SET secret_hash = $1, revoked_at = NULL, expires_at = $2 WHERE id = $3",
        )
        .bind(secret_hash)
        .bind(expires_at.map(timefmt::to_micros))
        .bind(id)
            .execute(tx.conn())
            .await?;
        tx.commit_with(event).await?;
        Ok(())
    }

    /// Gives a key that has none an expiry, recording `event`, atomically.
    pub async fn set_api_key_expiry(
        &self,
        id: &str,
        expires_at: OffsetDateTime,
        event: &Event,
    ) -> Result<bool> {
        let mut tx = self.begin_audited().await?;
        let done =
            sqlx::query("UPDATE api_keys SET expires_at = $1 WHERE id = $2 AND expires_at IS NULL")
                .bind(timefmt::to_micros(expires_at))
                .bind(id)
                .execute(tx.conn())
                .await?;
        tx.commit_if_changed(done.rows_affected(), event).await
    }

    pub async fn api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM api_keys WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(api_key_from_row).transpose()
    }

    /// The keys among `ids` that exist (a deleted one is simply absent).
    pub async fn api_keys_by_id(&self, ids: &[String]) -> Result<Vec<ApiKeyRecord>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(100) {
            let sql = format!(
                "SELECT {COLUMNS} FROM api_keys WHERE id IN ({})",
                placeholders(chunk.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                q = q.bind(id);
            }
            for row in q.fetch_all(&self.pool).await? {
                out.push(api_key_from_row(&row)?);
            }
        }
        Ok(out)
    }

    pub async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM api_keys ORDER BY created_at, id"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(api_key_from_row).collect()
    }

    /// Marks a key revoked and records `event`, atomically; returns false (recording
    /// nothing) when no such key exists. Revoking twice keeps the first revocation time.
    pub async fn revoke_api_key(
        &self,
        id: &str,
        at: OffsetDateTime,
        event: &Event,
    ) -> Result<bool> {
        let mut tx = self.begin_audited().await?;
        let done =
            sqlx::query("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2")
                .bind(timefmt::to_micros(at))
                .bind(id)
                .execute(tx.conn())
                .await?;
        tx.commit_if_changed(done.rows_affected(), event).await
    }
}

fn api_key_from_row(row: &AnyRow) -> Result<ApiKeyRecord> {
    Ok(ApiKeyRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        subject: row.try_get("subject")?,
        groups: serde_json::from_str(&row.try_get::<String, _>("groups_json")?)?,
        secret_hash: row.try_get("secret_hash")?,
        created_by: row.try_get("created_by")?,
        created_at: time_from_db(row.try_get("created_at")?)?,
        expires_at: opt_time_from_db(row.try_get("expires_at")?)?,
        revoked_at: opt_time_from_db(row.try_get("revoked_at")?)?,
    })
}
