//! Helpers for tests that need a real store: a fresh SQLite file or a fresh database
//! on the machine's PostgreSQL (`WARDEN_TEST_PG_URL`, default the local trust-auth
//! server). Test databases are named `warden_t_*`; the test script drops old ones.

use sqlx::any::AnyPoolOptions;

use crate::{Backend, Result};

/// Where the tests' PostgreSQL admin connection goes.
pub fn postgres_admin_url() -> String {
    std::env::var("WARDEN_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// Creates an empty database and returns its URL.
pub async fn fresh_postgres_url() -> Result<String> {
    sqlx::any::install_default_drivers();
    let admin = postgres_admin_url();
    let name = format!("warden_t_{}", uuid::Uuid::now_v7().simple());
    let pool = AnyPoolOptions::new()
        .max_connections(1)
        .connect(&admin)
        .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&pool)
        .await?;
    pool.close().await;
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
    Ok(format!("{base}/{name}"))
}

/// A store URL of the given kind; SQLite files go under `dir`.
pub async fn fresh_url(backend: Backend, dir: &std::path::Path) -> Result<String> {
    match backend {
        Backend::Sqlite => Ok(format!("sqlite://{}", dir.join("warden.db").display())),
        Backend::Postgres => fresh_postgres_url().await,
    }
}

/// A journal segment as the journal writes it (header, then one authenticated line
/// per event, seq from `first_seq`), for tests that leave or damage one.
pub fn journal_segment(
    store: &crate::Store,
    number: u64,
    run: &str,
    first_seq: u64,
    events: &[warden_core::Event],
) -> Vec<u8> {
    let key = crate::journal_lines::LineKey::new(store.journal_key().expose());
    let mut data = key.header(run, number, first_seq);
    for (i, e) in events.iter().enumerate() {
        let json = serde_json::to_vec(e).unwrap_or_default();
        data.extend(key.line(run, first_seq + i as u64, &json));
    }
    data
}
