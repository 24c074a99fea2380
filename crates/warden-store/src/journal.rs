//! The audit journal: where events that must be durable *before* an action proceeds
//! (audit-before-execute) are written first.
//!
//! A store transaction costs several database round trips; appending a line to a local
//! file and syncing it costs one disk flush. So events are group-committed to the
//! journal (many waiting callers, one `fdatasync`), and a background task ships them
//! into the store's hash chain a few milliseconds later, a segment at a time, each in
//! one transaction. What that buys and what it keeps:
//!
//! - An appended event is on disk before the caller proceeds; a killed gateway ships
//!   the segments it left when it starts again.
//! - Fail closed stays true: while shipping fails (the store cannot write), appends
//!   are refused, so nothing proceeds on the promise of a journal that cannot drain.
//! - A segment commits atomically, so after a crash between commit and delete, its
//!   first event tells whether it is already in the store; it is never chained twice.
//! - Readers that must see every event (the audit API) call [`AuditJournal::ship_now`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use warden_core::Event;

use crate::{Result, Store, StoreError};

/// How often the journal is shipped into the store.
pub const SHIP_INTERVAL: Duration = Duration::from_millis(10);

/// Lines waiting for the next journal write, with their callers (none for lines
/// appended with [`AuditJournal::append_later`]).
type PendingLines = Vec<(Vec<u8>, Option<oneshot::Sender<Result<()>>>)>;

struct Segment {
    file: std::fs::File,
    number: u64,
    bytes: u64,
}

pub struct AuditJournal {
    dir: PathBuf,
    store: Arc<Store>,
    current: Arc<Mutex<Segment>>,
    pending: Mutex<PendingLines>,
    /// Held while a batch is written and synced, and while segments rotate.
    write_lock: tokio::sync::Mutex<()>,
    /// Held while shipping, so the ticker and [`Self::ship_now`] do not race.
    ship_lock: tokio::sync::Mutex<()>,
    /// Why the last shipping attempt failed; appends are refused while it is set.
    failing: Mutex<Option<String>>,
    stopped: AtomicBool,
}

fn segment_name(number: u64) -> String {
    format!("segment-{number:020}.jsonl")
}

fn segment_number(path: &Path) -> Option<u64> {
    path.file_name()?
        .to_str()?
        .strip_prefix("segment-")?
        .strip_suffix(".jsonl")?
        .parse()
        .ok()
}

fn io_error(what: &str, e: std::io::Error) -> StoreError {
    StoreError::AppendFailed(format!("audit journal: {what}: {e}"))
}

/// Opens a new, empty segment and makes its directory entry durable.
fn create_segment(dir: &Path, number: u64) -> Result<Segment> {
    let mut options = std::fs::OpenOptions::new();
    options.create_new(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let file = options
        .open(dir.join(segment_name(number)))
        .map_err(|e| io_error("creating a segment", e))?;
    sync_dir(dir)?;
    Ok(Segment {
        file,
        number,
        bytes: 0,
    })
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("syncing its directory", e))
}

/// Segment files in `dir`, oldest first.
fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_error("listing segments", e))? {
        let path = entry.map_err(|e| io_error("listing segments", e))?.path();
        if let Some(n) = segment_number(&path) {
            found.push((n, path));
        }
    }
    found.sort();
    Ok(found)
}

impl AuditJournal {
    /// Opens the journal in `dir`, ships what an earlier run left behind (so a
    /// crash loses nothing), and starts shipping every [`SHIP_INTERVAL`].
    pub async fn open(dir: &Path, store: Arc<Store>) -> Result<Arc<Self>> {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder
            .create(dir)
            .map_err(|e| io_error("creating its directory", e))?;
        let left = segments(dir)?;
        let next = left.last().map_or(1, |(n, _)| n + 1);
        for (_, path) in &left {
            ship_segment(&store, path).await?;
        }
        let journal = Arc::new(Self {
            dir: dir.to_path_buf(),
            store,
            current: Arc::new(Mutex::new(create_segment(dir, next)?)),
            pending: Mutex::new(Vec::new()),
            write_lock: tokio::sync::Mutex::new(()),
            ship_lock: tokio::sync::Mutex::new(()),
            failing: Mutex::new(None),
            stopped: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&journal);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SHIP_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(journal) = weak.upgrade() else {
                    return;
                };
                if journal.stopped.load(Ordering::Acquire) {
                    return;
                }
                if let Err(e) = journal.ship_now().await {
                    tracing::error!(error = %e, "the audit journal cannot be shipped to the store");
                }
            }
        });
        Ok(journal)
    }

    /// Appends `event` durably: when this returns `Ok`, the event is on disk and
    /// will be in the store's chain. An error means "do not act".
    pub async fn append(&self, event: &Event) -> Result<()> {
        if let Some(why) = self.lock_failing().clone() {
            return Err(StoreError::AppendFailed(format!(
                "the store is not taking audit events: {why}"
            )));
        }
        let mut line = serde_json::to_vec(event)?;
        line.push(b'\n');
        let (tx, mut rx) = oneshot::channel();
        self.lock_pending().push((line, Some(tx)));
        let _serial = self.write_lock.lock().await;
        // A write made while we waited may have carried our line.
        if let Ok(result) = rx.try_recv() {
            return result;
        }
        self.write_pending().await;
        rx.await
            .unwrap_or_else(|_| Err(StoreError::AppendFailed("the append was lost".into())))
    }

    /// Queues an event that nothing waits for (a statement's outcome): it is written
    /// after the events appended before it, with the next write or shipment, so the
    /// chain keeps their order. A failure is logged.
    pub fn append_later(&self, event: &Event) {
        match serde_json::to_vec(event) {
            Ok(mut line) => {
                line.push(b'\n');
                self.lock_pending().push((line, None));
            }
            Err(e) => {
                tracing::error!(error = %e, kind = %event.kind, "an audit event could not be encoded")
            }
        }
    }

    /// Writes and syncs the queued lines and answers their callers; with the write
    /// lock held.
    async fn write_pending(&self) {
        let batch = std::mem::take(&mut *self.lock_pending());
        if batch.is_empty() {
            return;
        }
        let mut bytes = Vec::with_capacity(batch.iter().map(|(l, _)| l.len()).sum());
        for (l, _) in &batch {
            bytes.extend_from_slice(l);
        }
        let current = self.current.clone();
        let written = tokio::task::spawn_blocking(move || -> Result<()> {
            use std::io::Write;
            let mut seg = current
                .lock()
                .map_err(|_| StoreError::AppendFailed("audit journal lock poisoned".into()))?;
            let result = seg
                .file
                .write_all(&bytes)
                .and_then(|()| seg.file.sync_data());
            // Counted even on failure: part of it may be in the file, to be shipped.
            seg.bytes += bytes.len() as u64;
            result.map_err(|e| io_error("writing", e))
        })
        .await
        .unwrap_or_else(|e| Err(StoreError::AppendFailed(format!("audit journal: {e}"))));
        let message = written.as_ref().err().map(ToString::to_string);
        for (_, reply) in batch {
            match (reply, &message) {
                (Some(reply), None) => {
                    let _ = reply.send(Ok(()));
                }
                (Some(reply), Some(m)) => {
                    let _ = reply.send(Err(StoreError::AppendFailed(m.clone())));
                }
                (None, Some(m)) => {
                    tracing::error!(error = %m, "an audit event appended for later was lost");
                }
                (None, None) => {}
            }
        }
    }

    /// Moves everything journaled so far into the store's chain.
    pub async fn ship_now(&self) -> Result<()> {
        let _shipping = self.ship_lock.lock().await;
        // Start a new segment, so the full one can be shipped without holding writers.
        {
            let _serial = self.write_lock.lock().await;
            self.write_pending().await;
            let next = {
                let seg = self
                    .current
                    .lock()
                    .map_err(|_| StoreError::AppendFailed("audit journal lock poisoned".into()))?;
                (seg.bytes > 0).then_some(seg.number + 1)
            };
            if let Some(n) = next {
                let fresh = create_segment(&self.dir, n)?;
                let mut seg = self
                    .current
                    .lock()
                    .map_err(|_| StoreError::AppendFailed("audit journal lock poisoned".into()))?;
                *seg = fresh;
            }
        }
        let current = self
            .current
            .lock()
            .map_err(|_| StoreError::AppendFailed("audit journal lock poisoned".into()))?
            .number;
        let result = async {
            for (n, path) in segments(&self.dir)? {
                if n < current {
                    ship_segment(&self.store, &path).await?;
                }
            }
            Ok(())
        }
        .await;
        *self.lock_failing() = result.as_ref().err().map(ToString::to_string);
        result
    }

    /// Stops the background shipping after shipping what is left.
    pub async fn close(&self) -> Result<()> {
        self.stopped.store(true, Ordering::Release);
        self.ship_now().await
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, PendingLines> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_failing(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Chains one segment's events in one transaction, then deletes the segment. A
/// segment whose first event is already stored was committed before a crash.
async fn ship_segment(store: &Store, path: &Path) -> Result<()> {
    let text = tokio::fs::read(path)
        .await
        .map_err(|e| io_error("reading a segment", e))?;
    let mut events = Vec::new();
    for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        match serde_json::from_slice::<Event>(line) {
            Ok(e) => events.push(e),
            // A line cut by a crash mid-write was never acknowledged to anyone.
            Err(e) => {
                tracing::warn!(segment = %path.display(), error = %e, "skipping a torn audit journal line")
            }
        }
    }
    if let Some(first) = events.first()
        && !store.audit_event_exists(first.id).await?
    {
        store.append_audit_batch(&events).await?;
    }
    tokio::fs::remove_file(path)
        .await
        .map_err(|e| io_error("removing a shipped segment", e))
}
