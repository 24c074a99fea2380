//! Sessions: rows the proxies open when a client connects and close when it leaves.

use sqlx::Row;
use sqlx::any::AnyRow;
use time::OffsetDateTime;
use uuid::Uuid;
use warden_core::{Session, SessionStatus, timefmt};

use crate::util::{opt_time_from_db, time_from_db};
use crate::{Result, Store, StoreError};

#[derive(Debug, Clone, Default)]
pub struct SessionFilter {
    pub connection: Option<String>,
    pub subject: Option<String>,
    pub status: Option<SessionStatus>,
    pub since: Option<OffsetDateTime>,
    pub limit: i64,
}

/// Counters a proxy adds to a session as it goes.
#[derive(Debug, Clone, Copy, Default)]
pub struct SessionCounts {
    pub commands: i64,
    pub denied: i64,
    pub bytes_in: i64,
    pub bytes_out: i64,
}

const COLUMNS: &str = "id, connection, protocol, subject, groups_json, client_addr, started_at, \
                       ended_at, status, end_reason, commands, denied, bytes_in, bytes_out, recording";

impl Store {
    /// Records a new session, served by gateway instance `gateway` (when known).
    pub async fn create_session(&self, s: &Session, gateway: Option<&str>) -> Result<()> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO sessions ({COLUMNS}, gateway_id) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
        )))
        .bind(s.id.to_string())
        .bind(&s.connection)
        .bind(&s.protocol)
        .bind(&s.subject)
        .bind(serde_json::to_string(&s.groups)?)
        .bind(s.client_addr.as_deref())
        .bind(timefmt::to_micros(s.started_at))
        .bind(s.ended_at.map(timefmt::to_micros))
        .bind(s.status.as_str())
        .bind(s.end_reason.as_deref())
        .bind(s.commands)
        .bind(s.denied)
        .bind(s.bytes_in)
        .bind(s.bytes_out)
        .bind(s.recording.as_deref())
        .bind(gateway)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Closes as interrupted, at `at`, the sessions gateway instance `gateway` left
    /// open (it died), and returns them. On SQLite, which one gateway owns, sessions
    /// from before instances were recorded are included.
    /// Ends the sessions `gateway` left active as `interrupted` and chains the events
    /// `events_for` makes of them, in one transaction: a crash half-way leaves
    /// either both or neither.
    pub async fn interrupt_sessions(
        &self,
        gateway: &str,
        reason: &str,
        at: OffsetDateTime,
        events_for: impl FnOnce(&[Session]) -> Vec<warden_core::Event>,
    ) -> Result<Vec<Session>> {
        let orphans = if self.backend == crate::Backend::Sqlite {
            " OR gateway_id IS NULL"
        } else {
            ""
        };
        let mut tx = self.begin_audited().await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM sessions WHERE status = 'active' AND (gateway_id = $1{orphans})"
        )))
        .bind(gateway)
        .fetch_all(tx.conn())
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut s = session_from_row(row)?;
            sqlx::query(
                "UPDATE sessions SET status = $1, end_reason = $2, ended_at = $3 \
                 WHERE id = $4 AND status = 'active'",
            )
            .bind(SessionStatus::Interrupted.as_str())
            .bind(reason)
            .bind(timefmt::to_micros(at))
            .bind(s.id.to_string())
            .execute(tx.conn())
            .await?;
            s.status = SessionStatus::Interrupted;
            s.ended_at = Some(at);
            s.end_reason = Some(reason.to_string());
            out.push(s);
        }
        tx.commit_with_all(&events_for(&out)).await?;
        Ok(out)
    }

    pub async fn add_session_counts(&self, id: Uuid, c: SessionCounts) -> Result<()> {
        sqlx::query(
            "UPDATE sessions SET commands = commands + $1, denied = denied + $2, \
             bytes_in = bytes_in + $3, bytes_out = bytes_out + $4 WHERE id = $5",
        )
        .bind(c.commands)
        .bind(c.denied)
        .bind(c.bytes_in)
        .bind(c.bytes_out)
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn set_session_recording(&self, id: Uuid, location: &str) -> Result<()> {
        sqlx::query("UPDATE sessions SET recording = $1 WHERE id = $2")
            .bind(location)
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Ended sessions that still have a recording, the longest-ended first; with
    /// `ended_before`, only those that ended before it.
    pub async fn sessions_with_recordings(
        &self,
        ended_before: Option<OffsetDateTime>,
        limit: i64,
    ) -> Result<Vec<Session>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM sessions WHERE status <> 'active' AND recording IS NOT NULL \
             AND ended_at IS NOT NULL AND ended_at < $1 ORDER BY ended_at, id LIMIT $2"
        )))
        .bind(ended_before.map_or(i64::MAX, timefmt::to_micros))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(session_from_row).collect()
    }

    /// Forgets a session's recording (its files were deleted), recording `event`,
    /// atomically.
    pub async fn clear_session_recording(
        &self,
        id: Uuid,
        event: &warden_core::Event,
    ) -> Result<bool> {
        let mut tx = self.begin_audited().await?;
        let done = sqlx::query(
            "UPDATE sessions SET recording = NULL WHERE id = $1 AND recording IS NOT NULL",
        )
        .bind(id.to_string())
        .execute(tx.conn())
        .await?;
        tx.commit_if_changed(done.rows_affected(), event).await
    }

    /// Marks an active session ended. Ending an already-ended session changes nothing.
    pub async fn end_session(
        &self,
        id: Uuid,
        status: SessionStatus,
        reason: Option<&str>,
        at: OffsetDateTime,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE sessions SET status = $1, end_reason = $2, ended_at = $3 \
             WHERE id = $4 AND status = 'active'",
        )
        .bind(status.as_str())
        .bind(reason)
        .bind(timefmt::to_micros(at))
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn session(&self, id: Uuid) -> Result<Option<Session>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM sessions WHERE id = $1"
        )))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(session_from_row).transpose()
    }

    /// Newest first.
    pub async fn list_sessions(&self, f: &SessionFilter) -> Result<Vec<Session>> {
        let mut sql = format!("SELECT {COLUMNS} FROM sessions WHERE 1 = 1");
        let mut texts: Vec<String> = Vec::new();
        let mut n = 0;
        let mut next = || {
            n += 1;
            format!("${n}")
        };
        if let Some(c) = &f.connection {
            sql.push_str(&format!(" AND connection = {}", next()));
            texts.push(c.clone());
        }
        if let Some(s) = &f.subject {
            sql.push_str(&format!(" AND subject = {}", next()));
            texts.push(s.clone());
        }
        if let Some(s) = f.status {
            sql.push_str(&format!(" AND status = {}", next()));
            texts.push(s.as_str().to_string());
        }
        let since_p = f.since.map(|_| next());
        if let Some(p) = &since_p {
            sql.push_str(&format!(" AND started_at >= {p}"));
        }
        let limit_p = next();
        sql.push_str(&format!(" ORDER BY started_at DESC, id LIMIT {limit_p}"));
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
        for t in texts {
            query = query.bind(t);
        }
        if let Some(t) = f.since {
            query = query.bind(timefmt::to_micros(t));
        }
        query = query.bind(f.limit.clamp(1, 10_000));
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(session_from_row).collect()
    }
}

fn session_from_row(row: &AnyRow) -> Result<Session> {
    let id: String = row.try_get("id")?;
    let status: String = row.try_get("status")?;
    Ok(Session {
        id: id
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("session id `{id}`")))?,
        connection: row.try_get("connection")?,
        protocol: row.try_get("protocol")?,
        subject: row.try_get("subject")?,
        groups: serde_json::from_str(&row.try_get::<String, _>("groups_json")?)?,
        client_addr: row.try_get("client_addr")?,
        started_at: time_from_db(row.try_get("started_at")?)?,
        ended_at: opt_time_from_db(row.try_get("ended_at")?)?,
        status: SessionStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("session status `{status}`")))?,
        end_reason: row.try_get("end_reason")?,
        commands: row.try_get("commands")?,
        denied: row.try_get("denied")?,
        bytes_in: row.try_get("bytes_in")?,
        bytes_out: row.try_get("bytes_out")?,
        recording: row.try_get("recording")?,
    })
}
