//! Warden's state store.
//!
//! One [`Store`] over SQLite (the embedded default) or PostgreSQL (shared by several
//! gateways). Both run the same portable migrations and the same queries through
//! sqlx's `Any` driver; the few places where the engines differ (locking, pragmas)
//! branch on [`Backend`]. The store owns sealing of backend secrets ([`sealed`]) and
//! the append-only, hash-chained audit log ([`audit`]) with its local journal
//! ([`AuditJournal`]) for events that must be durable before an action proceeds.

pub mod access;
pub mod agents;
pub mod api_keys;
pub mod archive;
pub mod audit;
mod audit_keys;
mod canonical;
mod chain_tx;
pub mod connections;
mod error;
mod fold;
mod journal;
mod journal_lines;
mod journal_marks;
mod migrate;
pub mod outbox;
pub mod policies;
pub mod sealed;
pub mod sessions;
pub mod ssh_keys;
#[cfg(feature = "testing")]
pub mod testing;
mod util;

pub use error::{Result, StoreError};
pub use journal::{AuditJournal, JournalSync, SHIP_INTERVAL};
pub use sealed::{MasterKey, SecretSealer};
pub use util::{hex, redact_url, sha256_hex, url_origin};

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, ConnectOptions, Executor};
use std::str::FromStr;
use std::time::Duration;

/// Which database engine backs the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn from_url(url: &str) -> Result<Self> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            Err(StoreError::UnsupportedUrl(util::redact_url(url)))
        }
    }
}

/// The gateway's state: connections, API keys, sessions and the audit log.
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    sealer: SecretSealer,
    /// Authenticates the audit journal's lines (derived from the master key).
    journal_key: warden_core::Secret<Vec<u8>>,
    /// Serializes audit appends inside this process; the database lock on the chain
    /// head serializes them across gateways sharing a PostgreSQL store.
    audit_lock: tokio::sync::Mutex<()>,
    /// Events waiting for the next group commit, with where to send each result.
    pending_audit: std::sync::Mutex<Vec<PendingAppend>>,
    /// Bumped after each commit that chained events (wakes event delivery).
    chained: tokio::sync::watch::Sender<u64>,
}

/// An event waiting for the next group commit, with where to send its result.
type PendingAppend = (
    warden_core::Event,
    tokio::sync::oneshot::Sender<Result<audit::Appended>>,
);

const KEY_CHECK: &str = "master_key_check";
const KEY_CHECK_PLAINTEXT: &[u8] = b"warden master key check";

impl Store {
    /// The key the audit journal authenticates its lines with.
    pub(crate) fn journal_key(&self) -> &warden_core::Secret<Vec<u8>> {
        &self.journal_key
    }

    /// Connects, migrates, and checks that `master_key` is the one this store was
    /// created with (so a wrong key fails at start, not at the first backend dial).
    pub async fn open(url: &str, master_key: &MasterKey) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = Backend::from_url(url)?;
        let url = match backend {
            Backend::Sqlite if !url.contains("mode=") => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}mode=rwc")
            }
            _ => url.to_string(),
        };
        let options = AnyConnectOptions::from_str(&url)?.disable_statement_logging();
        let pool = AnyPoolOptions::new()
            .max_connections(match backend {
                Backend::Sqlite => 4,
                Backend::Postgres => 10,
            })
            .acquire_timeout(Duration::from_secs(10))
            // A SQLite connection cannot go stale; skipping the ping saves a round
            // trip on every query, the audit append included.
            .test_before_acquire(backend == Backend::Postgres)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                        conn.execute("PRAGMA synchronous = FULL").await?;
                        // Statement journals (kept by a statement that may abort
                        // halfway inside a transaction; the audit INSERTs avoid
                        // them, see `insert_rows`) in memory, not in a temporary
                        // file per statement: they only matter until it ends.
                        conn.execute("PRAGMA temp_store = MEMORY").await?;
                        // The audit log's table and five indexes are written at every
                        // shipment; SQLite's default 2 MB cache rereads their pages.
                        conn.execute("PRAGMA cache_size = -32768").await?;
                        // Checkpoint every 64 MB of WAL instead of 4 MB: the audit
                        // log's last pages change at every shipment, and each
                        // checkpoint copies them back once however often they changed
                        // (a quarter less time per shipment in `cargo bench -p
                        // warden-store`). Shipments are off the statement path.
                        conn.execute("PRAGMA wal_autocheckpoint = 16384").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        if backend == Backend::Sqlite {
            // WAL lets readers (API, verify) run while a proxy appends audit events.
            pool.execute("PRAGMA journal_mode = WAL").await?;
        }
        migrate::run(&pool, backend).await?;
        let store = Self {
            pool,
            backend,
            sealer: SecretSealer::new(master_key)?,
            journal_key: master_key.derive("warden audit journal mac v1"),
            audit_lock: tokio::sync::Mutex::new(()),
            pending_audit: std::sync::Mutex::new(Vec::new()),
            chained: tokio::sync::watch::Sender::new(0),
        };
        store.check_master_key().await?;
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Round trip to the database, for readiness checks.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Gives back the memory the database connections cache (SQLite's page cache, up
    /// to `cache_size` per connection), for a gateway gone idle after a burst. Only
    /// idle connections are touched; the cache refills on use.
    pub async fn release_memory(&self) -> Result<()> {
        if self.backend != Backend::Sqlite {
            return Ok(());
        }
        // Held together so that each `try_acquire` yields another connection.
        let mut idle = Vec::new();
        while let Some(conn) = self.pool.try_acquire() {
            idle.push(conn);
        }
        for conn in &mut idle {
            sqlx::query("PRAGMA shrink_memory")
                .execute(&mut **conn)
                .await?;
        }
        Ok(())
    }

    async fn check_master_key(&self) -> Result<()> {
        match self.state(KEY_CHECK).await? {
            Some(sealed) => match self.sealer.open(&sealed, KEY_CHECK) {
                Ok(p) if p.expose().as_slice() == KEY_CHECK_PLAINTEXT => Ok(()),
                _ => Err(StoreError::WrongMasterKey),
            },
            None => {
                let sealed = self.sealer.seal(KEY_CHECK_PLAINTEXT, KEY_CHECK)?;
                self.insert_state_if_absent(KEY_CHECK, &sealed).await?;
                // Another gateway may have raced us with a different key.
                Box::pin(self.check_master_key()).await
            }
        }
    }

    /// A value from the gateway's key/value state.
    pub async fn state(&self, key: &str) -> Result<Option<String>> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT value FROM gateway_state WHERE key = $1")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|r| r.0))
    }

    /// Stores `value` under `key` unless the key exists; returns whether it was stored.
    pub async fn insert_state_if_absent(&self, key: &str, value: &str) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO gateway_state (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
        )
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn put_state(&self, key: &str, value: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO gateway_state (key, value) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    #[cfg(feature = "testing")]
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }
}
