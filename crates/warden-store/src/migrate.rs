//! Schema migrations: an ordered list of portable SQL files, applied once each.

use sqlx::{AnyPool, Executor};

use crate::{Backend, Result, StoreError};

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "initial schema",
        include_str!("../migrations/0001_initial.sql"),
    ),
    (
        2,
        "policy sets",
        include_str!("../migrations/0002_policy_sets.sql"),
    ),
    (3, "ssh", include_str!("../migrations/0003_ssh.sql")),
    (
        4,
        "access requests, reviews, event delivery",
        include_str!("../migrations/0004_access.sql"),
    ),
    (
        5,
        "the API key an SSH key was registered with",
        include_str!("../migrations/0005_ssh_key_origin.sql"),
    ),
    (
        6,
        "the gateway instance serving a session",
        include_str!("../migrations/0006_session_owner.sql"),
    ),
    (
        7,
        "audit archives",
        include_str!("../migrations/0007_audit_archives.sql"),
    ),
    (
        8,
        "kubernetes and http options",
        include_str!("../migrations/0008_http.sql"),
    ),
    (
        9,
        "network agents",
        include_str!("../migrations/0009_agents.sql"),
    ),
    (
        10,
        "audit stretches instead of three per-event indexes",
        include_str!("../migrations/0010_audit_keys.sql"),
    ),
];

/// Arbitrary constant naming the advisory lock that keeps two gateways sharing one
/// PostgreSQL store from migrating it at the same time.
const PG_MIGRATION_LOCK: i64 = 0x5741_5244_454e;

pub(crate) async fn run(pool: &AnyPool, backend: Backend) -> Result<()> {
    let mut conn = pool.acquire().await?;
    if backend == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(PG_MIGRATION_LOCK)
            .execute(&mut *conn)
            .await?;
    }
    let result = apply(&mut conn).await;
    if backend == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(PG_MIGRATION_LOCK)
            .execute(&mut *conn)
            .await?;
    }
    result
}

async fn apply(conn: &mut sqlx::AnyConnection) -> Result<()> {
    conn.execute(
        "CREATE TABLE IF NOT EXISTS warden_migrations (\
           version BIGINT PRIMARY KEY, description TEXT NOT NULL, applied_at BIGINT NOT NULL)",
    )
    .await?;
    let applied: Vec<(i64,)> = sqlx::query_as("SELECT version FROM warden_migrations")
        .fetch_all(&mut *conn)
        .await?;
    let newest_known = MIGRATIONS.last().map_or(0, |m| m.0);
    if let Some(v) = applied.iter().map(|a| a.0).find(|v| *v > newest_known) {
        return Err(StoreError::Corrupt(format!(
            "store has schema version {v}, newer than this gateway understands ({newest_known})"
        )));
    }
    for (version, description, sql) in MIGRATIONS {
        if applied.iter().any(|a| a.0 == *version) {
            continue;
        }
        tracing::info!(version, description, "applying store migration");
        let mut tx = sqlx::Acquire::begin(&mut *conn).await?;
        for statement in split_statements(sql) {
            tx.execute(sqlx::AssertSqlSafe(statement)).await?;
        }
        sqlx::query(
            "INSERT INTO warden_migrations (version, description, applied_at) VALUES ($1, $2, $3)",
        )
        .bind(*version)
        .bind(*description)
        .bind(warden_core::timefmt::to_micros(warden_core::timefmt::now()))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    }
    Ok(())
}

/// Splits a migration file into statements: drops `--` comment lines and splits on
/// `;` at line ends. Migrations are ours, so this simple rule is enough.
fn split_statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in sql.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with("--") {
            continue;
        }
        current.push_str(line);
        current.push('\n');
        if trimmed.ends_with(';') {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.trim().is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_the_initial_migration() {
        let statements = split_statements(MIGRATIONS[0].2);
        assert!(statements.len() > 10);
        assert!(statements.iter().all(|s| s.trim_end().ends_with(';')));
    }
}
