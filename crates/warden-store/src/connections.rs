//! Registered connections and their sealed backend secrets.

use sqlx::Row;
use sqlx::any::AnyRow;
use warden_core::{Connection, Event, Secret, SecretKind, SshOptions, timefmt};

use crate::util::time_from_db;
use crate::{Result, Store, StoreError};

/// What an update does to the backend secret.
pub enum SecretChange {
    Keep,
    Set(SecretKind, Secret<String>),
    Clear,
}

fn seal_context(name: &str) -> String {
    format!("connection:{name}")
}

const COLUMNS: &str = "name, kind, target, username, secret_kind, tls, allowed_groups, policies, \
                       ssh_options, access_options, kubernetes_options, http_options, description, \
                       created_at, updated_at, agent";

impl Store {
    /// Registers a connection and records `event`, atomically.
    pub async fn create_connection(
        &self,
        conn: &Connection,
        secret: Option<(SecretKind, Secret<String>)>,
        event: &Event,
    ) -> Result<()> {
        let (kind, sealed) = match &secret {
            Some((kind, value)) => (
                Some(kind.as_str()),
                Some(
                    self.sealer
                        .seal(value.expose().as_bytes(), &seal_context(&conn.name))?,
                ),
            ),
            None => (None, None),
        };
        let mut tx = self.begin_audited().await?;
        let done = sqlx::query(
            "INSERT INTO connections (name, kind, target, username, secret_kind, secret_sealed, \
             tls, allowed_groups, policies, description, created_at, updated_at, ssh_options, \
             access_options, kubernetes_options, http_options, agent) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(&conn.name)
        .bind(conn.kind.as_str())
        .bind(&conn.target)
        .bind(conn.username.as_deref())
        .bind(kind)
        .bind(sealed)
        .bind(serde_json::to_string(&conn.tls)?)
        .bind(serde_json::to_string(&conn.allowed_groups)?)
        .bind(serde_json::to_string(&conn.policies)?)
        .bind(conn.description.as_deref())
        .bind(timefmt::to_micros(conn.created_at))
        .bind(timefmt::to_micros(conn.updated_at))
        .bind(serde_json::to_string(&conn.ssh)?)
        .bind(serde_json::to_string(&conn.access)?)
        .bind(serde_json::to_string(&conn.kubernetes)?)
        .bind(serde_json::to_string(&conn.http)?)
        .bind(conn.agent.as_deref())
        .execute(tx.conn())
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!("connection `{}`", conn.name)));
        }
        tx.commit_with(event).await?;
        Ok(())
    }

    pub async fn get_connection(&self, name: &str) -> Result<Option<Connection>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM connections WHERE name = $1"
        )))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(connection_from_row).transpose()
    }

    pub async fn list_connections(&self) -> Result<Vec<Connection>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM connections ORDER BY name"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(connection_from_row).collect()
    }

    /// Replaces the stored fields of `conn` (found by name), applies `secret`, and
    /// records `event`, atomically.
    pub async fn update_connection(
        &self,
        conn: &Connection,
        secret: SecretChange,
        event: &Event,
    ) -> Result<()> {
        let mut sql = String::from(
            "UPDATE connections SET kind = $1, target = $2, username = $3, tls = $4, \
             allowed_groups = $5, policies = $6, description = $7, updated_at = $8, ssh_options = $10, \
             access_options = $11, kubernetes_options = $12, http_options = $13, agent = $14",
        );
        let (secret_kind, sealed) = match &secret {
            SecretChange::Keep => (None, None),
            SecretChange::Set(kind, value) => (
                Some(kind.as_str()),
                Some(
                    self.sealer
                        .seal(value.expose().as_bytes(), &seal_context(&conn.name))?,
                ),
            ),
            SecretChange::Clear => (None, None),
        };
        if !matches!(secret, SecretChange::Keep) {
            sql.push_str(", secret_kind = $15, secret_sealed = $16");
        }
        sql.push_str(" WHERE name = $9");
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(conn.kind.as_str())
            .bind(&conn.target)
            .bind(conn.username.as_deref())
            .bind(serde_json::to_string(&conn.tls)?)
            .bind(serde_json::to_string(&conn.allowed_groups)?)
            .bind(serde_json::to_string(&conn.policies)?)
            .bind(conn.description.as_deref())
            .bind(timefmt::to_micros(conn.updated_at))
            .bind(&conn.name)
            .bind(serde_json::to_string(&conn.ssh)?)
            .bind(serde_json::to_string(&conn.access)?)
            .bind(serde_json::to_string(&conn.kubernetes)?)
            .bind(serde_json::to_string(&conn.http)?)
            .bind(conn.agent.as_deref());
        if !matches!(secret, SecretChange::Keep) {
            query = query.bind(secret_kind).bind(sealed);
        }
        let mut tx = self.begin_audited().await?;
        let done = query.execute(tx.conn()).await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("connection `{}`", conn.name)));
        }
        tx.commit_with(event).await?;
        Ok(())
    }

    /// Deletes a connection and records `event`, atomically; returns whether it
    /// existed (nothing is recorded when it did not).
    pub async fn delete_connection(&self, name: &str, event: &Event) -> Result<bool> {
        let mut tx = self.begin_audited().await?;
        let done = sqlx::query("DELETE FROM connections WHERE name = $1")
            .bind(name)
            .execute(tx.conn())
            .await?;
        tx.commit_if_changed(done.rows_affected(), event).await
    }

    /// Pins an SSH target's host key, if none is pinned yet, and records `event`,
    /// atomically. Returns the key that is pinned afterwards: `host_key`, or the one
    /// another session pinned first.
    pub async fn pin_ssh_host_key(
        &self,
        name: &str,
        host_key: &str,
        event: &Event,
    ) -> Result<Option<String>> {
        let mut tx = self.begin_audited().await?;
        let row: Option<(String,)> =
            sqlx::query_as("SELECT ssh_options FROM connections WHERE name = $1")
                .bind(name)
                .fetch_optional(tx.conn())
                .await?;
        let Some((options,)) = row else {
            return Err(StoreError::NotFound(format!("connection `{name}`")));
        };
        let mut ssh: SshOptions = serde_json::from_str(&options)?;
        if ssh.host_key.is_some() {
            return Ok(ssh.host_key);
        }
        ssh.host_key = Some(host_key.to_string());
        // Compare-and-set: a concurrent first session may have pinned another key.
        let done = sqlx::query(
            "UPDATE connections SET ssh_options = $1, updated_at = $2 \
             WHERE name = $3 AND ssh_options = $4",
        )
        .bind(serde_json::to_string(&ssh)?)
        .bind(timefmt::to_micros(timefmt::now()))
        .bind(name)
        .bind(&options)
        .execute(tx.conn())
        .await?;
        if done.rows_affected() == 0 {
            drop(tx);
            return Ok(self
                .get_connection(name)
                .await?
                .and_then(|c| c.ssh.host_key));
        }
        tx.commit_with(event).await?;
        Ok(ssh.host_key)
    }

    /// The backend secret, unsealed, for the proxy that dials the target.
    pub async fn connection_secret(
        &self,
        name: &str,
    ) -> Result<Option<(SecretKind, Secret<String>)>> {
        let row: Option<(Option<String>, Option<String>)> =
            sqlx::query_as("SELECT secret_kind, secret_sealed FROM connections WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
        let Some((Some(kind), Some(sealed))) = row else {
            return Ok(None);
        };
        let kind = kind.parse::<SecretKind>().map_err(StoreError::Corrupt)?;
        let plain = self.sealer.open(&sealed, &seal_context(name))?;
        let text = String::from_utf8(plain.expose().clone())
            .map_err(|_| StoreError::Corrupt("secret is not UTF-8".into()))?;
        Ok(Some((kind, Secret::new(text))))
    }
}

fn connection_from_row(row: &AnyRow) -> Result<Connection> {
    let kind: String = row.try_get("kind")?;
    let secret_kind: Option<String> = row.try_get("secret_kind")?;
    Ok(Connection {
        name: row.try_get("name")?,
        kind: kind.parse().map_err(StoreError::Corrupt)?,
        target: row.try_get("target")?,
        username: row.try_get("username")?,
        secret_kind: secret_kind
            .map(|k| k.parse().map_err(StoreError::Corrupt))
            .transpose()?,
        tls: serde_json::from_str(&row.try_get::<String, _>("tls")?)?,
        allowed_groups: serde_json::from_str(&row.try_get::<String, _>("allowed_groups")?)?,
        policies: serde_json::from_str(&row.try_get::<String, _>("policies")?)?,
        ssh: serde_json::from_str(&row.try_get::<String, _>("ssh_options")?)?,
        access: serde_json::from_str(&row.try_get::<String, _>("access_options")?)?,
        kubernetes: serde_json::from_str(&row.try_get::<String, _>("kubernetes_options")?)?,
        http: serde_json::from_str(&row.try_get::<String, _>("http_options")?)?,
        agent: row.try_get("agent")?,
        description: row.try_get("description")?,
        created_at: time_from_db(row.try_get("created_at")?)?,
        updated_at: time_from_db(row.try_get("updated_at")?)?,
    })
}
