//! SSH public keys that users registered to their identity, for key logins to SSH
//! connections. A registration keeps the groups the registering token had and
//! expires; deleting it (or letting it expire) ends the key's access.

use sqlx::Row;
use sqlx::any::AnyRow;
use time::OffsetDateTime;
use warden_core::{Event, timefmt};

use crate::util::{placeholders, time_from_db};
use crate::{Result, Store, StoreError};

/// A registered key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshUserKey {
    /// `SHA256:<base64>`, unique across users.
    pub fingerprint: String,
    /// The OpenSSH public key line, without its comment.
    pub public_key: String,
    pub name: String,
    pub subject: String,
    pub groups: Vec<String>,
    pub created_at: OffsetDateTime,
    /// Never later than the expiry of the token that registered it.
    pub expires_at: OffsetDateTime,
    /// The API key it was registered with, if it was: revoked or expired, it takes
    /// the registration with it.
    pub api_key_id: Option<String>,
}

const COLUMNS: &str =
    "fingerprint, public_key, name, subject, groups_json, created_at, expires_at, api_key_id";

impl Store {
    /// Registers a key and records `event`, atomically. A fingerprint registered
    /// before (by anyone) is a conflict.
    pub async fn insert_ssh_user_key(&self, key: &SshUserKey, event: &Event) -> Result<()> {
        let mut tx = self.begin_audited().await?;
        let done = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO ssh_user_keys ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (fingerprint) DO NOTHING"
        )))
        .bind(&key.fingerprint)
        .bind(&key.public_key)
        .bind(&key.name)
        .bind(&key.subject)
        .bind(serde_json::to_string(&key.groups)?)
        .bind(timefmt::to_micros(key.created_at))
        .bind(timefmt::to_micros(key.expires_at))
        .bind(key.api_key_id.as_deref())
        .execute(tx.conn())
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "ssh key `{}`",
                key.fingerprint
            )));
        }
        tx.commit_with(event).await?;
        Ok(())
    }

    pub async fn ssh_user_key(&self, fingerprint: &str) -> Result<Option<SshUserKey>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM ssh_user_keys WHERE fingerprint = $1"
        )))
        .bind(fingerprint)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(key_from_row).transpose()
    }

    /// The registrations among `fingerprints` that exist.
    pub async fn ssh_user_keys_by_fingerprint(
        &self,
        fingerprints: &[String],
    ) -> Result<Vec<SshUserKey>> {
        let mut out = Vec::with_capacity(fingerprints.len());
        for chunk in fingerprints.chunks(100) {
            let sql = format!(
                "SELECT {COLUMNS} FROM ssh_user_keys WHERE fingerprint IN ({})",
                placeholders(chunk.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for f in chunk {
                q = q.bind(f);
            }
            for row in q.fetch_all(&self.pool).await? {
                out.push(key_from_row(&row)?);
            }
        }
        Ok(out)
    }

    /// Keys of one subject, or of everyone when `subject` is `None`.
    pub async fn list_ssh_user_keys(&self, subject: Option<&str>) -> Result<Vec<SshUserKey>> {
        let rows = match subject {
            Some(s) => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {COLUMNS} FROM ssh_user_keys WHERE subject = $1 \
                     ORDER BY created_at, fingerprint"
                )))
                .bind(s)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {COLUMNS} FROM ssh_user_keys ORDER BY created_at, fingerprint"
                )))
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(key_from_row).collect()
    }

    /// Deletes a key and records `event`, atomically; false (nothing recorded) when
    /// there is no such key.
    pub async fn delete_ssh_user_key(&self, fingerprint: &str, event: &Event) -> Result<bool> {
        let mut tx = self.begin_audited().await?;
        let done = sqlx::query("DELETE FROM ssh_user_keys WHERE fingerprint = $1")
            .bind(fingerprint)
            .execute(tx.conn())
            .await?;
        tx.commit_if_changed(done.rows_affected(), event).await
    }
}

fn key_from_row(row: &AnyRow) -> Result<SshUserKey> {
    Ok(SshUserKey {
        fingerprint: row.try_get("fingerprint")?,
        public_key: row.try_get("public_key")?,
        name: row.try_get("name")?,
        subject: row.try_get("subject")?,
        groups: serde_json::from_str(&row.try_get::<String, _>("groups_json")?)?,
        created_at: time_from_db(row.try_get("created_at")?)?,
        expires_at: time_from_db(row.try_get("expires_at")?)?,
        api_key_id: row.try_get("api_key_id")?,
    })
}
