//! Gives memory back once a burst is over: when the audit chain has not grown for
//! [`QUIET`] and the journal holds nothing unshipped, the store's connection caches
//! are released, then the allocator's freed pages (through the hook the binary sets
//! with [`set_allocator_release`]: the allocator is the binary's choice).

use std::sync::{Arc, OnceLock};
use std::time::Duration;
use warden_store::{AuditJournal, Store};

/// How long the chain must stay unchanged before the gateway counts as idle.
pub const QUIET: Duration = Duration::from_secs(5);

static ALLOCATOR_RELEASE: OnceLock<fn()> = OnceLock::new();

/// Sets what returns the allocator's freed pages to the system when the gateway is
/// idle (process-wide, like the allocator; the first call wins).
pub fn set_allocator_release(release: fn()) {
    let _ = ALLOCATOR_RELEASE.set(release);
}

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
        if let Some(release) = ALLOCATOR_RELEASE.get() {
            release();
        }
    }
}
