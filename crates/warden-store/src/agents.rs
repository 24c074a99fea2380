//! Network agent registrations: name, key (hashed), revocation, and what the gateway
//! last saw of the agent (when, from where, which version, how many sessions it has
//! carried). Live status (which processes are connected now) is the gateway's own.

use sqlx::Row;
use sqlx::any::AnyRow;
use time::OffsetDateTime;
use warden_core::{Event, timefmt};

use crate::util::{opt_time_from_db, time_from_db};
use crate::{Result, Store, StoreError};

/// A registered agent, without its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRecord {
    pub name: String,
    pub key_id: String,
    pub key_hash: String,
    pub description: Option<String>,
    /// Networks (CIDR) the agent's tunnels may come from; empty: anywhere.
    pub sources: Vec<String>,
    pub created_by: String,
    pub created_at: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
    pub last_seen_at: Option<OffsetDateTime>,
    pub last_address: Option<String>,
    pub last_version: Option<String>,
    pub sessions_carried: i64,
}

const COLUMNS: &str = "name, key_id, key_hash, description, sources, created_by, created_at, \
                       revoked_at, last_seen_at, last_address, last_version, sessions_carried";

impl Store {
    /// Registers an agent and records `event`, atomically.
    pub async fn insert_agent(&self, agent: &AgentRecord, event: &Event) -> Result<()> {
        let mut tx = self.begin_audited().await?;
        let done = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO agents ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, NULL, NULL, NULL, 0) \
             ON CONFLICT (name) DO NOTHING"
        )))
        .bind(&agent.name)
        .bind(&agent.key_id)
        .bind(&agent.key_hash)
        .bind(agent.description.as_deref())
        .bind(serde_json::to_string(&agent.sources)?)
        .bind(&agent.created_by)
        .bind(timefmt::to_micros(agent.created_at))
        .execute(tx.conn())
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!("agent `{}`", agent.name)));
        }
        tx.commit_with(event).await?;
        Ok(())
    }

    pub async fn agent(&self, name: &str) -> Result<Option<AgentRecord>> {
        self.agent_where("name", name).await
    }

    pub async fn agent_by_key_id(&self, key_id: &str) -> Result<Option<AgentRecord>> {
        self.agent_where("key_id", key_id).await
    }

    async fn agent_where(&self, column: &'static str, value: &str) -> Result<Option<AgentRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM agents WHERE {column} = $1"
        )))
        .bind(value)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(agent_from_row).transpose()
    }

    pub async fn list_agents(&self) -> Result<Vec<AgentRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM agents ORDER BY name"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(agent_from_row).collect()
    }

    /// Sets an agent's description and source networks, recording `event`,
    /// atomically; false (nothing recorded) when there is no such agent.
    pub async fn update_agent(
        &self,
        name: &str,
        description: Option<&str>,
        sources: &[String],
        event: &Event,
    ) -> Result<bool> {
        let mut tx = self.begin_audited().await?;
        let done = sqlx::query("UPDATE agents SET description = $1, sources = $2 WHERE name = $3")
            .bind(description)
            .bind(serde_json::to_string(sources)?)
            .bind(name)
            .execute(tx.conn())
            .await?;
        tx.commit_if_changed(done.rows_affected(), event).await
    }

    /// Marks an agent revoked (keeping the first time) and records `event`,
    /// atomically; false (nothing recorded) when there is no such agent.
    pub async fn revoke_agent(
        &self,
        name: &str,
        at: OffsetDateTime,
        event: &Event,
    ) -> Result<bool> {
        let mut tx = self.begin_audited().await?;
        let done =
            sqlx::query("UPDATE agents SET revoked_at = COALESCE(revoked_at, $1) WHERE name = $2")
                .bind(timefmt::to_micros(at))
                .bind(name)
                .execute(tx.conn())
                .await?;
        tx.commit_if_changed(done.rows_affected(), event).await
    }

    /// Gives an agent a new key (the old one stops working; a revoked agent is
    /// usable again) and records `event`, atomically.
    pub async fn rotate_agent_key(
        &self,
        name: &str,
        key_id: &str,
        key_hash: &str,
        event: &Event,
    ) -> Result<bool> {
        let mut tx = self.begin_audited().await?;
        let done = sqlx::query(
            "UPDATE agents SET key_id = $1, key_hash = $2, revoked_at = NULL WHERE name = $3",
        )
        .bind(key_id)
        .bind(key_hash)
        .bind(name)
        .execute(tx.conn())
        .await?;
        tx.commit_if_changed(done.rows_affected(), event).await
    }

    /// Deletes an agent no connection names, recording `event`, atomically. Fails
    /// with a conflict naming the connections that still use it.
    pub async fn delete_agent(&self, name: &str, event: &Event) -> Result<bool> {
        let mut tx = self.begin_audited().await?;
        let users: Vec<String> =
            sqlx::query("SELECT name FROM connections WHERE agent = $1 ORDER BY name")
                .bind(name)
                .fetch_all(tx.conn())
                .await?
                .iter()
                .map(|r| r.try_get("name"))
                .collect::<std::result::Result<_, _>>()?;
        if !users.is_empty() {
            return Err(StoreError::Conflict(format!(
                "agent `{name}` is used by connection(s) {}",
                users.join(", ")
            )));
        }
        let done = sqlx::query("DELETE FROM agents WHERE name = $1")
            .bind(name)
            .execute(tx.conn())
            .await?;
        tx.commit_if_changed(done.rows_affected(), event).await
    }

    /// Notes when and where an agent was last seen (not audited: its connects and
    /// disconnects are), adding `sessions` to its count of sessions carried.
    pub async fn note_agent_seen(
        &self,
        name: &str,
        at: OffsetDateTime,
        address: &str,
        version: &str,
        sessions: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE agents SET last_seen_at = $1, last_address = $2, last_version = $3, \
             sessions_carried = sessions_carried + $4 WHERE name = $5",
        )
        .bind(timefmt::to_micros(at))
        .bind(address)
        .bind(version)
        .bind(sessions)
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

fn agent_from_row(row: &AnyRow) -> Result<AgentRecord> {
    Ok(AgentRecord {
        name: row.try_get("name")?,
        key_id: row.try_get("key_id")?,
        key_hash: row.try_get("key_hash")?,
        description: row.try_get("description")?,
        sources: serde_json::from_str(&row.try_get::<String, _>("sources")?)?,
        created_by: row.try_get("created_by")?,
        created_at: time_from_db(row.try_get("created_at")?)?,
        revoked_at: opt_time_from_db(row.try_get("revoked_at")?)?,
        last_seen_at: opt_time_from_db(row.try_get("last_seen_at")?)?,
        last_address: row.try_get("last_address")?,
        last_version: row.try_get("last_version")?,
        sessions_carried: row.try_get("sessions_carried")?,
    })
}
