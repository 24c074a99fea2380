//! Gives memory back once a burst is over: when the audit chain has not grown for
//! [`QUIET`] and the journal holds nothing unshipped, the store's connection caches
//! are released. (The allocator returns freed pages to the system by itself.)

use std::sync::Arc;
use std::time::Duration;
use warden_store::{AuditJournal, Store};

/// How long the chain must stay unchanged before the gateway counts as idle.
pub const QUIET: Duration = Duration::from_secs(5);

pub async fn release_when_idle(
    store: Arc<Store>,
    journal: Arc<AuditJournal>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut chain = store.chain_changes();
    loop {
        // Activity first, then quiet: an idle gateway releases once, not every QUIET.
        tokio::select! {
            changed = chain.changed() => if changed.is_err() { return },
            _ = shutdown.changed() => return,
        }
        loop {
            tokio::select! {
                changed = chain.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(QUIET) => break,
                _ = shutdown.changed() => return,
            }
        }
        if journal.backlog() > 0 {
            continue;
        }
        match store.release_memory().await {
            Ok(()) => tracing::debug!("idle: store caches released"),
            Err(e) => tracing::warn!(error = %e, "idle: store caches not released"),
        }
    }
}
