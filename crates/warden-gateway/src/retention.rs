//! Keeping the record in bounds, on a schedule (`audit.retention_interval_secs`):
//! the audit chain's oldest events beyond `audit.keep_events` move into archive files
//! (see `warden_store::archive`), and recordings of sessions that ended more than
//! `recordings.keep_days` ago, or the oldest ones while all recordings take more than
//! `recordings.max_total_bytes`, are deleted with a `recording.prune` event each.
//! The defaults keep everything.

use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;
use warden_core::{Event, timefmt};
use warden_store::Store;

use crate::config::Config;

/// Sessions looked at per pruning round.
const PRUNE_BATCH: i64 = 500;

pub struct Retention {
    store: Arc<Store>,
    archive_dir: PathBuf,
    keep_events: u64,
    archive_events: u64,
    recordings_dir: PathBuf,
    keep_days: u64,
    max_total_bytes: u64,
    interval: Duration,
}

impl Retention {
    pub fn new(store: Arc<Store>, config: &Config) -> Self {
        Self {
            store,
            archive_dir: config.audit_archive_dir(),
            keep_events: config.audit.keep_events,
            archive_events: config.audit.archive_events,
            recordings_dir: config.recordings_dir(),
            keep_days: config.recordings.keep_days,
            max_total_bytes: config.recordings.max_total_bytes,
            interval: Duration::from_secs(config.audit.retention_interval_secs.max(1)),
        }
    }

    fn enabled(&self) -> bool {
        self.keep_events > 0 || self.keep_days > 0 || self.max_total_bytes > 0
    }

    /// One round: archive, then prune. Errors are logged; the next round retries.
    pub async fn run_once(&self) {
        if self.keep_events > 0 {
            loop {
                match self
                    .store
                    .archive_audit(&self.archive_dir, self.keep_events, self.archive_events)
                    .await
                {
                    Ok(Some(a)) => tracing::info!(
                        first = a.first_seq,
                        last = a.last_seq,
                        file = %a.file,
                        "audit events archived"
                    ),
                    Ok(None) => break,
                    Err(e) => {
                        tracing::error!(error = %e, "audit events not archived");
                        break;
                    }
                }
            }
        }
        if self.keep_days > 0 {
            let days = i64::try_from(self.keep_days).unwrap_or(i64::MAX / 86_400);
            let before = timefmt::now() - time::Duration::days(days);
            let reason = format!("ended more than {} days ago", self.keep_days);
            self.prune(Some(before), &reason, |_| true).await;
        }
        if self.max_total_bytes > 0 {
            let mut total = dir_size(&self.recordings_dir);
            let reason = format!(
                "recordings took more than recordings.max_total_bytes ({})",
                self.max_total_bytes
            );
            let max = self.max_total_bytes;
            self.prune(None, &reason, |freed| {
                total = total.saturating_sub(freed);
                total > max
            })
            .await;
        }
    }

    /// Deletes recordings of ended sessions, oldest first, while `go_on(bytes of
    /// the last one deleted)` says so.
    async fn prune(
        &self,
        before: Option<time::OffsetDateTime>,
        reason: &str,
        mut go_on: impl FnMut(u64) -> bool,
    ) {
        let mut freed = 0;
        loop {
            let sessions = match self
                .store
                .sessions_with_recordings(before, PRUNE_BATCH)
                .await
            {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "recordings not pruned");
                    return;
                }
            };
            if sessions.is_empty() {
                return;
            }
            for s in sessions {
                if !go_on(freed) {
                    return;
                }
                let (files, bytes) = match delete_recording(&self.recordings_dir, s.id) {
                    Ok(done) => done,
                    Err(e) => {
                        tracing::error!(error = %e, session = %s.id, "recording not pruned");
                        return;
                    }
                };
                freed = bytes;
                let event = Event::new(
                    "recording.prune",
                    json!({"files": files, "bytes": bytes, "reason": reason,
                           "ended_at": s.ended_at.map(timefmt::rfc3339)}),
                )
                .on_connection(&s.connection)
                .in_session(s.id);
                if let Err(e) = self.store.clear_session_recording(s.id, &event).await {
                    tracing::error!(error = %e, session = %s.id, "pruned recording not recorded");
                    return;
                }
            }
        }
    }

    /// Runs a round every interval until shutdown (nothing when all is kept).
    pub async fn run(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        if !self.enabled() {
            return;
        }
        loop {
            self.run_once().await;
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Deletes a session's recording files (its timeline and terminals); returns their
/// names and total size.
fn delete_recording(dir: &Path, session: Uuid) -> std::io::Result<(Vec<String>, u64)> {
    let prefix = format!("{session}.");
    let mut files = Vec::new();
    let mut bytes = 0;
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((files, 0)),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) {
            bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
            std::fs::remove_file(entry.path())?;
            files.push(name);
        }
    }
    Ok((files, bytes))
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
