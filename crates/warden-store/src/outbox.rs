//! Event delivery state: webhook subscriptions, and a cursor per delivery target
//! (`webhook:<id>`, `siem:<name>`) into the audit log. The chained audit log is the
//! outbox: an event is durable once it is chained, and a target's cursor says how
//! far it has been delivered, so delivery adds no write to the path of a statement
//! and survives restarts. Events a target gave up on land in `dead_letters`.

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;
use time::OffsetDateTime;
use uuid::Uuid;
use warden_core::{Event, Secret, timefmt};

use crate::util::{opt_time_from_db, time_from_db};
use crate::{Result, Store, StoreError};

/// A webhook subscription (its signing secret is sealed and never read back out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Webhook {
    pub id: Uuid,
    pub url: String,
    /// Event kinds delivered: exact (`review.request`), a family (`access.*`), a
    /// kind in every family (`*.query`) or `*`. Empty: all.
    pub kinds: Vec<String>,
    /// Only events with one of these decisions (`deny`, `review`, `allow`); empty:
    /// any, including events without a decision.
    pub decisions: Vec<String>,
    pub description: Option<String>,
    pub created_by: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
}

/// How far a target has delivered, and its current trouble.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Cursor {
    pub target: String,
    /// The last audit sequence number handled (delivered, skipped or dead-lettered).
    pub seq: i64,
    /// Failed attempts at the next event.
    pub attempts: u32,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub next_attempt_at: Option<OffsetDateTime>,
    pub last_error: Option<String>,
}

/// An event a target gave up on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct DeadLetter {
    pub id: Uuid,
    pub target: String,
    pub seq: i64,
    pub event_id: Uuid,
    pub kind: String,
    pub attempts: u32,
    pub last_error: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub failed_at: OffsetDateTime,
}

fn seal_context(id: Uuid) -> String {
    format!("webhook:{id}")
}

/// The cursor target of a webhook.
pub fn webhook_target(id: Uuid) -> String {
    format!("webhook:{id}")
}

const WEBHOOK_COLUMNS: &str =
    "id, url, kinds_json, decisions_json, description, created_by, created_at";

impl Store {
    /// Registers a webhook, starting its delivery at the current end of the log, and
    /// records `event`, atomically.
    pub async fn insert_webhook(
        &self,
        w: &Webhook,
        secret: &Secret<String>,
        event: &Event,
    ) -> Result<()> {
        let sealed = self
            .sealer
            .seal(secret.expose().as_bytes(), &seal_context(w.id))?;
        let mut tx = self.begin_audited().await?;
        sqlx::query(
            "INSERT INTO webhooks (id, url, kinds_json, decisions_json, secret_sealed, description, \
             created_by, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(w.id.to_string())
        .bind(&w.url)
        .bind(serde_json::to_string(&w.kinds)?)
        .bind(serde_json::to_string(&w.decisions)?)
        .bind(sealed)
        .bind(w.description.as_deref())
        .bind(&w.created_by)
        .bind(timefmt::to_micros(w.created_at))
        .execute(tx.conn())
        .await?;
        // The event recording the subscription is the first one it may receive.
        sqlx::query(
            "INSERT INTO outbox_cursors (target, seq, attempts, updated_at) \
             SELECT $1, seq, 0, $2 FROM audit_head WHERE id = 1",
        )
        .bind(webhook_target(w.id))
        .bind(timefmt::to_micros(timefmt::now()))
        .execute(tx.conn())
        .await?;
        tx.commit_with(event).await?;
        Ok(())
    }

    /// Changes a webhook's URL, filters and description (and its secret, when given)
    /// and records `event`, atomically; false when there is no such webhook. Its
    /// delivery position is kept; a new URL or secret starts its retries afresh (the
    /// failures were the old receiver's), so a fixed webhook delivers at once.
    pub async fn update_webhook(
        &self,
        w: &Webhook,
        secret: Option<&Secret<String>>,
        new_receiver: bool,
        event: &Event,
    ) -> Result<bool> {
        let sealed = secret
            .map(|s| self.sealer.seal(s.expose().as_bytes(), &seal_context(w.id)))
            .transpose()?;
        let mut tx = self.begin_audited().await?;
        let done = sqlx::query(
            "UPDATE webhooks SET url = $2, kinds_json = $3, decisions_json = $4, description = $5, \
             secret_sealed = COALESCE($6, secret_sealed) WHERE id = $1",
        )
        .bind(w.id.to_string())
        .bind(&w.url)
        .bind(serde_json::to_string(&w.kinds)?)
        .bind(serde_json::to_string(&w.decisions)?)
        .bind(w.description.as_deref())
        .bind(sealed)
        .execute(tx.conn())
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        if new_receiver {
            sqlx::query(
                "UPDATE outbox_cursors SET attempts = 0, next_attempt_at = NULL, \
                 last_error = NULL WHERE target = $1",
            )
            .bind(webhook_target(w.id))
            .execute(tx.conn())
            .await?;
        }
        tx.commit_with(event).await?;
        Ok(true)
    }

    pub async fn list_webhooks(&self) -> Result<Vec<Webhook>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks ORDER BY created_at"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(webhook_from_row).collect()
    }

    pub async fn webhook(&self, id: Uuid) -> Result<Option<Webhook>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = $1"
        )))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(webhook_from_row).transpose()
    }

    /// The signing secret, unsealed, for the delivery worker.
    pub async fn webhook_secret(&self, id: Uuid) -> Result<Option<Secret<Vec<u8>>>> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT secret_sealed FROM webhooks WHERE id = $1")
                .bind(id.to_string())
                .fetch_optional(&self.pool)
                .await?;
        row.map(|(sealed,)| self.sealer.open(&sealed, &seal_context(id)))
            .transpose()
    }

    /// Deletes a webhook and its cursor (its dead letters stay) and records `event`;
    /// false when there is no such webhook.
    pub async fn delete_webhook(&self, id: Uuid, event: &Event) -> Result<bool> {
        let mut tx = self.begin_audited().await?;
        let done = sqlx::query("DELETE FROM webhooks WHERE id = $1")
            .bind(id.to_string())
            .execute(tx.conn())
            .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM outbox_cursors WHERE target = $1")
            .bind(webhook_target(id))
            .execute(tx.conn())
            .await?;
        tx.commit_with(event).await?;
        Ok(true)
    }

    /// A target's cursor, created at the current end of the log if it has none.
    pub async fn ensure_cursor(&self, target: &str) -> Result<Cursor> {
        sqlx::query(
            "INSERT INTO outbox_cursors (target, seq, attempts, updated_at) \
             SELECT $1, seq, 0, $2 FROM audit_head WHERE id = 1 \
             ON CONFLICT (target) DO NOTHING",
        )
        .bind(target)
        .bind(timefmt::to_micros(timefmt::now()))
        .execute(&self.pool)
        .await?;
        self.cursor(target)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("cursor `{target}`")))
    }

    pub async fn cursor(&self, target: &str) -> Result<Option<Cursor>> {
        let row = sqlx::query(
            "SELECT target, seq, attempts, next_attempt_at, last_error FROM outbox_cursors \
             WHERE target = $1",
        )
        .bind(target)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(cursor_from_row).transpose()
    }

    /// Moves a cursor from `from` to `to` and clears its failures; false when it was
    /// not at `from` any more (another gateway delivered meanwhile).
    pub async fn advance_cursor(&self, target: &str, from: i64, to: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE outbox_cursors SET seq = $1, attempts = 0, next_attempt_at = NULL, \
             last_error = NULL, updated_at = $2 WHERE target = $3 AND seq = $4",
        )
        .bind(to)
        .bind(timefmt::to_micros(timefmt::now()))
        .bind(target)
        .bind(from)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records a failed attempt at the event after `at`.
    pub async fn note_delivery_failure(
        &self,
        target: &str,
        at: i64,
        attempts: u32,
        next_attempt_at: OffsetDateTime,
        error: &str,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE outbox_cursors SET attempts = $1, next_attempt_at = $2, last_error = $3, \
             updated_at = $4 WHERE target = $5 AND seq = $6",
        )
        .bind(i64::from(attempts))
        .bind(timefmt::to_micros(next_attempt_at))
        .bind(error)
        .bind(timefmt::to_micros(timefmt::now()))
        .bind(target)
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Gives up on one event: stores it as a dead letter and moves the cursor past
    /// it, in one transaction.
    pub async fn dead_letter(&self, from: i64, letter: &DeadLetter) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let moved = sqlx::query(
            "UPDATE outbox_cursors SET seq = $1, attempts = 0, next_attempt_at = NULL, \
             last_error = NULL, updated_at = $2 WHERE target = $3 AND seq = $4",
        )
        .bind(letter.seq)
        .bind(timefmt::to_micros(letter.failed_at))
        .bind(&letter.target)
        .bind(from)
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO dead_letters (id, target, seq, event_id, kind, attempts, last_error, \
             failed_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(letter.id.to_string())
        .bind(&letter.target)
        .bind(letter.seq)
        .bind(letter.event_id.to_string())
        .bind(&letter.kind)
        .bind(i64::from(letter.attempts))
        .bind(&letter.last_error)
        .bind(timefmt::to_micros(letter.failed_at))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Removes a dead letter of `target` (it was delivered after all) and records
    /// `event`; false when there is no such letter.
    pub async fn delete_dead_letter(&self, target: &str, id: Uuid, event: &Event) -> Result<bool> {
        let mut tx = self.begin_audited().await?;
        let done = sqlx::query("DELETE FROM dead_letters WHERE id = $1 AND target = $2")
            .bind(id.to_string())
            .bind(target)
            .execute(tx.conn())
            .await?;
        tx.commit_if_changed(done.rows_affected(), event).await
    }

    /// A target's dead letters, newest first.
    pub async fn dead_letters(&self, target: &str, limit: i64) -> Result<Vec<DeadLetter>> {
        let rows = sqlx::query(
            "SELECT id, target, seq, event_id, kind, attempts, last_error, failed_at \
             FROM dead_letters WHERE target = $1 ORDER BY failed_at DESC LIMIT $2",
        )
        .bind(target)
        .bind(limit.clamp(1, 1000))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get("id")?;
                let event_id: String = row.try_get("event_id")?;
                Ok(DeadLetter {
                    id: id
                        .parse()
                        .map_err(|_| StoreError::Corrupt("dead letter id".into()))?,
                    target: row.try_get("target")?,
                    seq: row.try_get("seq")?,
                    event_id: event_id
                        .parse()
                        .map_err(|_| StoreError::Corrupt("dead letter event id".into()))?,
                    kind: row.try_get("kind")?,
                    attempts: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(0),
                    last_error: row.try_get("last_error")?,
                    failed_at: time_from_db(row.try_get("failed_at")?)?,
                })
            })
            .collect()
    }
}

fn webhook_from_row(row: &AnyRow) -> Result<Webhook> {
    let id: String = row.try_get("id")?;
    Ok(Webhook {
        id: id
            .parse()
            .map_err(|_| StoreError::Corrupt("webhook id".into()))?,
        url: row.try_get("url")?,
        kinds: serde_json::from_str(&row.try_get::<String, _>("kinds_json")?)?,
        decisions: serde_json::from_str(&row.try_get::<String, _>("decisions_json")?)?,
        description: row.try_get("description")?,
        created_by: row.try_get("created_by")?,
        created_at: time_from_db(row.try_get("created_at")?)?,
    })
}

fn cursor_from_row(row: &AnyRow) -> Result<Cursor> {
    Ok(Cursor {
        target: row.try_get("target")?,
        seq: row.try_get("seq")?,
        attempts: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(u32::MAX),
        next_attempt_at: opt_time_from_db(row.try_get("next_attempt_at")?)?,
        last_error: row.try_get("last_error")?,
    })
}
