//! The audit journal: where events that must be durable *before* an action proceeds
//! (audit-before-execute) are written first.
//!
//! A store transaction costs several database round trips; appending a line to a local
//! file and syncing it costs one disk flush. So events go to a writer thread that
//! group-commits them (everything waiting at that moment, one `write`, one
//! `fdatasync`), and a background task ships them into the store's hash chain a few
//! milliseconds later, a segment at a time, each in one transaction, from memory (the
//! file is read back only after a failure or a crash). What that buys and what it keeps:
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

/// When an appended event counts as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JournalSync {
    /// On disk (`fdatasync`): survives a power loss.
    #[default]
    Disk,
    /// Handed to the operating system: survives the gateway being killed, not the
    /// machine crashing. Much faster on slow disks.
    Os,
}

/// How often the journal is shipped into the store.
pub const SHIP_INTERVAL: Duration = Duration::from_millis(10);

/// Work for the journal's writer thread, in order.
enum Command {
    /// A line to make durable, its event (shipped from memory), and who waits for it
    /// (nobody, for [`AuditJournal::append_later`]).
    Append(Vec<u8>, Box<Event>, Option<oneshot::Sender<Result<()>>>),
    /// Close the current segment after everything before it is written; answer with
    /// its number and events, and start the next (an empty one stays open).
    Rotate(oneshot::Sender<Result<(u64, Vec<Event>)>>),
}

struct Segment {
    file: std::fs::File,
    number: u64,
    /// Events written to this segment, to ship without reading the file back.
    events: Vec<Event>,
}

pub struct AuditJournal {
    dir: PathBuf,
    store: Arc<Store>,
    /// To the writer thread, which owns the current segment.
    writer: std::sync::mpsc::Sender<Command>,
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
        events: Vec::new(),
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
    pub async fn open(dir: &Path, store: Arc<Store>, sync: JournalSync) -> Result<Arc<Self>> {
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
        let segment = create_segment(dir, next)?;
        let (tx, rx) = std::sync::mpsc::channel();
        let writer_dir = dir.to_path_buf();
        std::thread::Builder::new()
            .name("audit-journal".into())
            .spawn(move || write_loop(&writer_dir, segment, &rx, sync))
            .map_err(|e| io_error("starting its writer", e))?;
        let journal = Arc::new(Self {
            dir: dir.to_path_buf(),
            store,
            writer: tx,
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
        let (tx, rx) = oneshot::channel();
        self.send(Command::Append(line, Box::new(event.clone()), Some(tx)))?;
        rx.await
            .unwrap_or_else(|_| Err(StoreError::AppendFailed("the append was lost".into())))
    }

    /// Queues an event that nothing waits for (a statement's outcome): it is written
    /// after the events appended before it, so the chain keeps their order. A failure
    /// is logged.
    pub fn append_later(&self, event: &Event) {
        let sent = serde_json::to_vec(event)
            .map_err(StoreError::from)
            .and_then(|mut line| {
                line.push(b'\n');
                self.send(Command::Append(line, Box::new(event.clone()), None))
            });
        if let Err(e) = sent {
            tracing::error!(error = %e, kind = %event.kind, "an audit event was lost");
        }
    }

    fn send(&self, command: Command) -> Result<()> {
        self.writer
            .send(command)
            .map_err(|_| StoreError::AppendFailed("the audit journal writer stopped".into()))
    }

    /// Moves everything journaled so far into the store's chain.
    pub async fn ship_now(&self) -> Result<()> {
        let _shipping = self.ship_lock.lock().await;
        let result = self.ship().await;
        *self.lock_failing() = result.as_ref().err().map(ToString::to_string);
        result
    }

    async fn ship(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Rotate(tx))?;
        let (number, events) = rx.await.unwrap_or_else(|_| {
            Err(StoreError::AppendFailed(
                "the audit journal writer stopped".into(),
            ))
        })?;
        // Segments a failed shipment left behind go first, read back from disk.
        for (n, path) in segments(&self.dir)? {
            if n < number {
                ship_segment(&self.store, &path).await?;
            }
        }
        if events.is_empty() {
            return Ok(());
        }
        let path = self.dir.join(segment_name(number));
        // On failure the segment stays on disk and is shipped from there next time.
        self.store.append_audit_batch(&events).await?;
        tokio::fs::remove_file(&path)
            .await
            .map_err(|e| io_error("removing a shipped segment", e))
    }

    /// Stops the background shipping after shipping what is left.
    pub async fn close(&self) -> Result<()> {
        self.stopped.store(true, Ordering::Release);
        self.ship_now().await
    }

    fn lock_failing(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The writer thread: takes every command waiting, writes the lines with one
/// `write` and one `fdatasync`, answers, and rotates segments when asked. Ends when
/// the journal is dropped.
fn write_loop(
    dir: &Path,
    mut segment: Segment,
    commands: &std::sync::mpsc::Receiver<Command>,
    sync: JournalSync,
) {
    use std::io::Write;
    // Lines nobody waits for stay here until a line somebody waits for, or a
    // rotation, writes them: they cost no `fdatasync` of their own.
    let mut bytes = Vec::new();
    let mut waiting = Vec::new();
    let mut events = Vec::new();
    while let Ok(first) = commands.recv() {
        let mut batch = vec![first];
        batch.extend(commands.try_iter());
        for command in batch {
            match command {
                Command::Append(line, event, reply) => {
                    bytes.extend_from_slice(&line);
                    events.push(*event);
                    waiting.extend(reply);
                }
                Command::Rotate(reply) => {
                    flush(&mut segment, &mut bytes, &mut events, &mut waiting, sync);
                    if segment.events.is_empty() {
                        // Nothing to ship: keep writing to this segment.
                        let _ = reply.send(Ok((segment.number, Vec::new())));
                        continue;
                    }
                    let next = segment.number + 1;
                    let answer = create_segment(dir, next).map(|fresh| {
                        let old = std::mem::replace(&mut segment, fresh);
                        (old.number, old.events)
                    });
                    let _ = reply.send(answer);
                }
            }
        }
        if !waiting.is_empty() {
            flush(&mut segment, &mut bytes, &mut events, &mut waiting, sync);
        }
    }
    flush(&mut segment, &mut bytes, &mut events, &mut waiting, sync);

    fn flush(
        segment: &mut Segment,
        bytes: &mut Vec<u8>,
        events: &mut Vec<Event>,
        waiting: &mut Vec<oneshot::Sender<Result<()>>>,
        sync: JournalSync,
    ) {
        if bytes.is_empty() {
            return;
        }
        let written = segment.file.write_all(bytes).and_then(|()| match sync {
            JournalSync::Disk => segment.file.sync_data(),
            JournalSync::Os => Ok(()),
        });
        bytes.clear();
        match written {
            Ok(()) => {
                segment.events.append(events);
                for w in waiting.drain(..) {
                    let _ = w.send(Ok(()));
                }
            }
            Err(e) => {
                // Part of it may be in the file: a restart ships what is readable.
                let message = format!("audit journal: writing: {e}");
                tracing::error!(error = %message, lost = events.len(), "audit journal write failed");
                events.clear();
                for w in waiting.drain(..) {
                    let _ = w.send(Err(StoreError::AppendFailed(message.clone())));
                }
            }
        }
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
