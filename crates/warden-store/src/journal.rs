//! The audit journal: where events that must be durable *before* an action proceeds
//! (audit-before-execute) are written first.
//!
//! A store transaction costs several database round trips; appending a line to a local
//! file and syncing it costs one disk flush. So events go to a writer thread that
//! group-commits them (everything waiting at that moment, one write, one
//! `fdatasync`) — or, with [`JournalSync::Os`], the caller writes its line itself
//! under a lock (no sync to share, so no thread to hand it to) — and a background
//! task ships them into the store's hash chain every few milliseconds, from memory,
//! one transaction per shipment. What that buys and what it keeps:
//!
//! - An appended event is on disk before the caller proceeds; a killed gateway ships
//!   what it left when it starts again.
//! - Segments are zero-filled to their full size when created, so a sync after a write
//!   inside one flushes data only (no size or block-allocation change to journal):
//!   about half the cost of syncing an append that grows a file.
//! - Fail closed stays true: while shipping fails (the store cannot write), appends
//!   are refused, so nothing proceeds on the promise of a journal that cannot drain.
//! - After a failed shipment or a crash the journal is read back from disk and every
//!   event already in the store is skipped, so none is chained twice or lost.
//! - Readers that must see every event (the audit API) call [`AuditJournal::ship_now`].

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use warden_core::Event;
use warden_core::ablation::{self, Stage};

use crate::journal_lines::{self, LineKey};
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

/// How often the journal is shipped into the store. Every shipment is a store
/// transaction with fixed costs (the chain head, the journal marks, a WAL commit and
/// its sync on SQLite) whatever it holds: at 10 ms they were most of the store's CPU
/// for one client's statements (45 µs per statement; 17 µs at 50 ms). Nothing waits
/// for a shipment: the journal holds each event durably, and readers that must see
/// everything ([`AuditJournal::ship_now`]) ship first.
pub const SHIP_INTERVAL: Duration = Duration::from_millis(50);

/// After a shipment of at least [`BUSY_SHIPMENT`] events the next one waits this long:
/// under load, a bigger shipment costs the store less per event (`cargo bench -p
/// warden-store`), and more outcomes ship with their statements and fold into their
/// rows (about 1,600 events a shipment at 8 clients of `pgbench -S`).
const BUSY_SHIP_INTERVAL: Duration = Duration::from_millis(100);
const BUSY_SHIPMENT: usize = 256;

/// Events the journal keeps in memory for shipping (written or queued, not yet handed
/// to a shipment) before appends wait for the store to catch up: memory stays bounded
/// (about 1 KB per event) however slow the store, and admissions slow down instead of
/// events being dropped or skipped.
pub const MAX_BACKLOG: usize = 16_384;

/// Size a segment is created with (zero-filled).
const SEGMENT_BYTES: u64 = 4 * 1024 * 1024;

/// Work for the journal's writer thread, in order.
enum Command {
    /// An event (and its JSON) to make durable, shipped from memory, and who waits.
    Append(Vec<u8>, Box<Event>, oneshot::Sender<Result<()>>),
    /// Hand over what was written since the last take.
    Take(oneshot::Sender<Taken>),
}

/// What the writer hands to the shipper.
struct Taken {
    /// Events written (and synced) since the last take, in order.
    events: Vec<Event>,
    /// Segments finished since the last take: all their events are in this take or
    /// an earlier one.
    finished: Vec<u64>,
    /// The segment being written and how far, at the take.
    segment: u64,
    len: u64,
    /// This run and the sequence number of its last line written.
    run: Arc<str>,
    written_through: u64,
}

/// Events appended with [`AuditJournal::append_later`], with their JSON.
type Later = Arc<Mutex<Vec<(Vec<u8>, Event)>>>;

struct Segment {
    file: std::fs::File,
    number: u64,
    /// Bytes written; the rest of the file is zeros.
    len: u64,
}

/// Who writes the journal.
enum Sink {
    /// With `fdatasync`: a thread that owns the segment and group-commits what waits,
    /// so one sync serves every statement that arrived during the last one.
    Thread(std::sync::mpsc::Sender<Command>),
    /// Handed to the OS: the caller writes under a lock, which costs one `pwrite`
    /// and no hand-off to another thread and back.
    Inline(Box<Mutex<Writer>>),
}

pub struct AuditJournal {
    dir: PathBuf,
    /// Authenticates its lines (see [`journal_lines`]).
    key: Arc<LineKey>,
    store: Arc<Store>,
    writer: Sink,
    /// Lines nobody waits for, picked up by the writer whenever it next wakes (for an
    /// append or a take): queuing them here costs no wake-up of their own.
    later: Later,
    /// Held while shipping, so the ticker and [`Self::ship_now`] do not race.
    ship_lock: tokio::sync::Mutex<()>,
    /// Why the last shipping attempt failed; appends are refused while it is set.
    failing: Mutex<Option<String>>,
    /// A shipment failed, and what it held in memory is gone: read the disk next time.
    from_disk: AtomicBool,
    /// Events in memory not yet handed to a shipment, and the bound appends wait at.
    backlog: Arc<std::sync::atomic::AtomicUsize>,
    max_backlog: std::sync::atomic::AtomicUsize,
    /// Signalled whenever a shipment takes the backlog.
    drained: tokio::sync::Notify,
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

/// Creates a zero-filled segment and makes it and its directory entry durable.
fn create_segment(dir: &Path, number: u64) -> Result<Segment> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.create_new(true).write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let path = dir.join(segment_name(number));
    let mut file = options
        .open(&path)
        .map_err(|e| io_error("creating a segment", e))?;
    let zeros = vec![0u8; 64 * 1024];
    let mut left = SEGMENT_BYTES;
    while left > 0 {
        let n = usize::try_from(left.min(zeros.len() as u64)).unwrap_or(zeros.len());
        file.write_all(&zeros[..n])
            .map_err(|e| io_error("filling a segment", e))?;
        left -= n as u64;
    }
    file.sync_all()
        .map_err(|e| io_error("syncing a new segment", e))?;
    sync_dir(dir)?;
    Ok(Segment {
        file,
        number,
        len: 0,
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

/// Segments read back from disk, checked line by line and against one another.
struct ReadBack {
    /// With their run and sequence number.
    events: Vec<(Arc<str>, u64, Event)>,
    problems: Vec<String>,
}

/// Reads `segments` (oldest first; the last one up to `last_len` bytes when given):
/// their authentic events in order, and what was wrong — including segments missing
/// between two of one run, or a segment not starting where the one before it ended.
fn read_back(
    key: &LineKey,
    segments: &[(u64, PathBuf)],
    last_len: Option<u64>,
) -> Result<ReadBack> {
    let mut out = ReadBack {
        events: Vec::new(),
        problems: Vec::new(),
    };
    let mut previous: Option<(u64, Option<String>, Option<u64>)> = None;
    for (i, (number, path)) in segments.iter().enumerate() {
        let mut data = std::fs::read(path).map_err(|e| io_error("reading a segment", e))?;
        if i + 1 == segments.len()
            && let Some(len) = last_len
        {
            data.truncate(usize::try_from(len).unwrap_or(usize::MAX));
        }
        let read = journal_lines::read(key, *number, &data);
        let last = i + 1 == segments.len();
        // Only the segment being written may be empty: an emptied one hid its lines.
        if read.run.is_none() && !last && read.problems.is_empty() {
            out.problems.push(format!(
                "segment {number} is empty or zeroed though later segments follow: its lines were removed"
            ));
        }
        // A run begins at seq 1; a segment of another run in the middle of one that
        // does not is a substitute.
        if let (Some((_, Some(run), _)), Some(this_run)) = (&previous, &read.run)
            && run != this_run
            && read.first_seq != Some(1)
        {
            out.problems.push(format!(
                "segment {number} belongs to another journal run and does not start it: it was substituted"
            ));
        }
        if let (Some((before, run, next)), Some(this_run)) = (&previous, &read.run)
            && run.as_ref() == Some(this_run)
        {
            if *number != before + 1 {
                out.problems.push(format!(
                    "segments {} to {} of the journal are missing",
                    before + 1,
                    number - 1
                ));
            } else if read.first_seq != *next {
                out.problems.push(format!(
                    "segment {number} starts at seq {:?}, not where segment {before} ended ({next:?}): lines were deleted",
                    read.first_seq
                ));
            }
        }
        if read.run.is_some() {
            previous = Some((*number, read.run.clone(), read.next_seq));
        }
        let run: Arc<str> = read.run.as_deref().unwrap_or_default().into();
        out.events.extend(
            read.events
                .into_iter()
                .map(|(seq, event)| (run.clone(), seq, event)),
        );
        out.problems.extend(read.problems);
    }
    Ok(out)
}

/// Chains what `read` recovered that the store lacks, and reports damage it found as
/// an `audit.journal_damaged` event (never silently). Returns the runs read.
async fn ship_read_back(store: &Store, read: ReadBack) -> Result<Vec<Arc<str>>> {
    let recovered = read.events.len();
    let mut runs: Vec<Arc<str>> = Vec::new();
    for (run, _, _) in &read.events {
        if !runs.contains(run) {
            runs.push(run.clone());
        }
    }
    ship_unshipped(store, read.events).await?;
    if !read.problems.is_empty() {
        tracing::error!(problems = ?read.problems, "the audit journal was found damaged");
        store
            .append_audit(&Event::new(
                "audit.journal_damaged",
                serde_json::json!({"problems": read.problems, "events_recovered": recovered}),
            ))
            .await?;
    }
    Ok(runs)
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
        let key = Arc::new(LineKey::new(store.journal_key().expose()));
        let left = segments(dir)?;
        let next = left.last().map_or(1, |(n, _)| n + 1);
        let runs = ship_read_back(&store, read_back(&key, &left, None)?).await?;
        for (_, path) in &left {
            std::fs::remove_file(path).map_err(|e| io_error("removing a shipped segment", e))?;
        }
        // The removals are made durable before the marks covering those lines go: a
        // power loss must not bring segments back without their marks, as their lines
        // would then be looked up by id, which finds no outcome folded into its
        // statement's row (it would be chained a second time).
        sync_dir(dir)?;
        // Those runs' lines are gone with their segments: their marks are not needed.
        let runs: Vec<&str> = runs.iter().map(|r| &**r).collect();
        store.forget_journal_marks(&runs).await?;
        let segment = create_segment(dir, next)?;
        let later = Later::default();
        let backlog = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let w = Writer::new(dir, segment, sync, key.clone(), backlog.clone());
        let writer = match sync {
            JournalSync::Disk => {
                let (tx, rx) = std::sync::mpsc::channel();
                let writer_later = later.clone();
                std::thread::Builder::new()
                    .name("audit-journal".into())
                    .spawn(move || write_loop(w, &rx, &writer_later))
                    .map_err(|e| io_error("starting its writer", e))?;
                Sink::Thread(tx)
            }
            JournalSync::Os => Sink::Inline(Box::new(Mutex::new(w))),
        };
        let journal = Arc::new(Self {
            dir: dir.to_path_buf(),
            key,
            store,
            writer,
            later,
            ship_lock: tokio::sync::Mutex::new(()),
            failing: Mutex::new(None),
            from_disk: AtomicBool::new(false),
            backlog,
            max_backlog: std::sync::atomic::AtomicUsize::new(MAX_BACKLOG),
            drained: tokio::sync::Notify::new(),
            stopped: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&journal);
        tokio::spawn(async move {
            let mut wait = SHIP_INTERVAL;
            loop {
                tokio::time::sleep(wait).await;
                let Some(journal) = weak.upgrade() else {
                    return;
                };
                if journal.stopped.load(Ordering::Acquire) {
                    return;
                }
                wait = match journal.ship_counted().await {
                    Ok(n) if n >= BUSY_SHIPMENT => BUSY_SHIP_INTERVAL,
                    Ok(_) => SHIP_INTERVAL,
                    Err(e) => {
                        tracing::error!(error = %e, "the audit journal cannot be shipped to the store");
                        SHIP_INTERVAL
                    }
                };
            }
        });
        Ok(journal)
    }

    /// Appends `event` durably: when this returns `Ok`, the event is on disk and
    /// will be in the store's chain. An error means "do not act".
    pub async fn append(&self, event: Event) -> Result<()> {
        if ablation::skipped(Stage::Journal) {
            return Ok(());
        }
        if let Some(why) = self.lock_failing().clone() {
            return Err(StoreError::AppendFailed(format!(
                "the store is not taking audit events: {why}"
            )));
        }
        self.wait_for_room().await;
        let json = event
            .to_json()
            .map_err(|e| StoreError::AppendFailed(e.to_string()))?;
        self.backlog.fetch_add(1, Ordering::SeqCst);
        match &self.writer {
            Sink::Thread(commands) => {
                let (tx, rx) = oneshot::channel();
                commands
                    .send(Command::Append(json, Box::new(event), tx))
                    .map_err(|_| writer_stopped())?;
                rx.await
                    .unwrap_or_else(|_| Err(StoreError::AppendFailed("the append was lost".into())))
            }
            Sink::Inline(writer) => {
                let mut w = lock_writer(writer)?;
                w.take_later(&self.later);
                w.push(&json, event);
                w.flush()
            }
        }
    }

    /// Queues an event that nothing waits for (a statement's outcome): it is written
    /// with the next append or take — after every append that returned before this
    /// call, so the chain keeps a session's order — and never waits for a sync of its
    /// own. A failure is logged.
    pub fn append_later(&self, event: Event) {
        if ablation::skipped(Stage::Journal) {
            return;
        }
        let line = match event.to_json() {
            Ok(line) => line,
            Err(e) => {
                tracing::error!(error = %e, kind = %event.kind, "an audit event was lost");
                return;
            }
        };
        match self.later.lock() {
            Ok(mut later) => {
                later.push((line, event));
                self.backlog.fetch_add(1, Ordering::SeqCst);
            }
            Err(_) => {
                tracing::error!(kind = %event.kind, "an audit event was lost: the audit journal broke");
            }
        }
    }

    /// Waits while the backlog is at its bound (the store is behind).
    async fn wait_for_room(&self) {
        loop {
            let drained = self.drained.notified();
            if self.backlog.load(Ordering::SeqCst) < self.max_backlog.load(Ordering::Relaxed) {
                return;
            }
            // Woken by the next shipment's take; re-checked now and then in case a
            // take happened between the check and the wait.
            let _ = tokio::time::timeout(Duration::from_millis(100), drained).await;
        }
    }

    /// Lowers the backlog bound (tests of a slow store).
    pub fn set_max_backlog(&self, events: usize) {
        self.max_backlog.store(events.max(1), Ordering::Relaxed);
    }

    /// Events in memory waiting to be shipped.
    pub fn backlog(&self) -> usize {
        self.backlog.load(Ordering::SeqCst)
    }

    /// Everything written since the last take (writing what waits first).
    async fn take(&self) -> Result<Taken> {
        match &self.writer {
            Sink::Thread(commands) => {
                let (tx, rx) = oneshot::channel();
                commands
                    .send(Command::Take(tx))
                    .map_err(|_| writer_stopped())?;
                rx.await.map_err(|_| writer_stopped())
            }
            Sink::Inline(writer) => {
                let mut w = lock_writer(writer)?;
                w.take_later(&self.later);
                // A failure is logged and answered to nobody: the lines queued
                // for later are lost, as they would be on the writer thread.
                let _ = w.flush();
                Ok(w.take())
            }
        }
    }

    /// Moves everything journaled so far into the store's chain.
    pub async fn ship_now(&self) -> Result<()> {
        self.ship_counted().await.map(|_| ())
    }

    /// [`Self::ship_now`], saying how many events it shipped from memory.
    async fn ship_counted(&self) -> Result<usize> {
        let _shipping = self.ship_lock.lock().await;
        let result = self.ship().await;
        *self.lock_failing() = result.as_ref().err().map(ToString::to_string);
        result
    }

    async fn ship(&self) -> Result<usize> {
        let taken = self.take().await?;
        // Out of the backlog: appends waiting for room may go on while this ships.
        self.backlog.fetch_sub(taken.events.len(), Ordering::SeqCst);
        self.drained.notify_waiters();
        if self.from_disk.load(Ordering::Acquire) {
            // What a failed shipment held is on disk, and so is everything taken
            // since, up to the point of this take.
            let on_disk: Vec<(u64, PathBuf)> = segments(&self.dir)?
                .into_iter()
                .filter(|(n, _)| *n <= taken.segment)
                .collect();
            ship_read_back(
                &self.store,
                read_back(&self.key, &on_disk, Some(taken.len))?,
            )
            .await?;
            for (n, path) in &on_disk {
                if *n < taken.segment {
                    remove_segment(path).await?;
                }
            }
            self.from_disk.store(false, Ordering::Release);
            return Ok(0);
        }
        let shipped = taken.events.len();
        if ablation::skipped(Stage::Ship) {
            return Ok(shipped);
        }
        if shipped > 0
            && let Err(e) = self
                .store
                .append_journal_batch(
                    taken.events,
                    &[(taken.run.to_string(), taken.written_through)],
                )
                .await
        {
            self.from_disk.store(true, Ordering::Release);
            return Err(e);
        }
        for n in taken.finished {
            remove_segment(&self.dir.join(segment_name(n))).await?;
        }
        Ok(shipped)
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

impl Drop for AuditJournal {
    /// Writes the lines queued for later, as the writer thread does when it ends.
    fn drop(&mut self) {
        if let Sink::Inline(writer) = &self.writer
            && let Ok(mut w) = writer.lock()
        {
            w.take_later(&self.later);
            let _ = w.flush();
        }
    }
}

fn writer_stopped() -> StoreError {
    StoreError::AppendFailed("the audit journal writer stopped".into())
}

fn lock_writer(writer: &Mutex<Writer>) -> Result<std::sync::MutexGuard<'_, Writer>> {
    writer
        .lock()
        .map_err(|_| StoreError::AppendFailed("the audit journal broke".into()))
}

async fn remove_segment(path: &Path) -> Result<()> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error("removing a shipped segment", e)),
    }
}

/// Chains those of `events` (read back from segments) the store does not hold yet,
/// in one transaction that also marks each run shipped through its last line read.
/// What a run's mark covers is skipped without a lookup: it may have been archived
/// out of the store since. The rest is looked up by id (lines from before marks).
async fn ship_unshipped(store: &Store, events: Vec<(Arc<str>, u64, Event)>) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let mut reached: Vec<(String, u64)> = Vec::new();
    for (run, seq, _) in &events {
        match reached.iter_mut().find(|(r, _)| r.as_str() == &**run) {
            Some((_, last)) => *last = (*last).max(*seq),
            None => reached.push((run.to_string(), *seq)),
        }
    }
    let runs: Vec<&str> = reached.iter().map(|(r, _)| r.as_str()).collect();
    let marks = store.journal_marks(&runs).await?;
    let past_marks: Vec<Event> = events
        .into_iter()
        .filter(|(run, seq, _)| marks.get(&**run).is_none_or(|m| seq > m))
        .map(|(_, _, event)| event)
        .collect();
    let ids: Vec<uuid::Uuid> = past_marks.iter().map(|e| e.id).collect();
    let stored = store.existing_audit_ids(&ids).await?;
    let missing: Vec<Event> = past_marks
        .into_iter()
        .filter(|e| !stored.contains(&e.id))
        .collect();
    store.append_journal_batch(missing, &reached).await
}

/// The writer thread: takes every command waiting, writes the lines with one write
/// and (by default) one `fdatasync`, answers, and hands written events to the
/// shipper. Ends when the journal is dropped.
fn write_loop(mut w: Writer, commands: &std::sync::mpsc::Receiver<Command>, later: &Later) {
    while let Ok(first) = commands.recv() {
        // Lines queued for later go first: each was queued after the appends its
        // caller had seen complete, which are written already.
        w.take_later(later);
        let mut batch = vec![first];
        batch.extend(commands.try_iter());
        for command in batch {
            match command {
                Command::Append(json, event, reply) => {
                    w.push(&json, *event);
                    w.waiting.push(reply);
                }
                Command::Take(reply) => {
                    let _ = w.flush();
                    let _ = reply.send(w.take());
                }
            }
        }
        // A batch of takes only has written everything already; one with appends is
        // written (and synced) once, for all of them and the lines queued for later.
        if !w.waiting.is_empty() {
            let _ = w.flush();
        }
    }
    w.take_later(later);
    let _ = w.flush();
}

/// The writer thread's state.
struct Writer {
    dir: PathBuf,
    segment: Segment,
    sync: JournalSync,
    key: Arc<LineKey>,
    /// The journal's backlog: lowered by lines lost to a failed write.
    backlog: Arc<std::sync::atomic::AtomicUsize>,
    /// This run's id: its lines' sequence numbers count from 1.
    run: Arc<str>,
    /// The sequence number of the last line written.
    written_through: u64,
    next_seq: u64,
    /// The sequence number of the first line buffered and not written yet.
    batch_first: Option<u64>,
    /// Lines not written yet, their events, and who waits for them.
    bytes: Vec<u8>,
    pending: Vec<Event>,
    waiting: Vec<oneshot::Sender<Result<()>>>,
    /// Written since the last take.
    written: Vec<Event>,
    finished: Vec<u64>,
    /// The next segment, being zero-filled ahead of need.
    next: Option<std::thread::JoinHandle<Result<Segment>>>,
}

impl Writer {
    fn new(
        dir: &Path,
        segment: Segment,
        sync: JournalSync,
        key: Arc<LineKey>,
        backlog: Arc<std::sync::atomic::AtomicUsize>,
    ) -> Self {
        Self {
            dir: dir.to_path_buf(),
            segment,
            sync,
            key,
            backlog,
            run: uuid::Uuid::now_v7().to_string().into(),
            written_through: 0,
            next_seq: 1,
            batch_first: None,
            bytes: Vec::new(),
            pending: Vec::new(),
            waiting: Vec::new(),
            written: Vec::new(),
            finished: Vec::new(),
            next: None,
        }
    }

    /// Hands over what was written since the last take.
    fn take(&mut self) -> Taken {
        Taken {
            events: std::mem::take(&mut self.written),
            finished: std::mem::take(&mut self.finished),
            segment: self.segment.number,
            len: self.segment.len,
            run: self.run.clone(),
            written_through: self.written_through,
        }
    }

    /// Buffers one event's line, numbered in write order.
    fn push(&mut self, json: &[u8], event: Event) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.batch_first.get_or_insert(seq);
        self.key.line_into(&self.run, seq, json, &mut self.bytes);
        self.pending.push(event);
    }

    /// Buffers the lines queued for later.
    fn take_later(&mut self, later: &Later) {
        let queued: Vec<(Vec<u8>, Event)> = match later.lock() {
            Ok(mut queued) => queued.drain(..).collect(),
            Err(_) => return,
        };
        for (json, event) in queued {
            self.push(&json, event);
        }
    }

    /// Writes what is buffered and answers whoever waits for it; the result is also
    /// returned, for a caller that wrote inline.
    fn flush(&mut self) -> Result<()> {
        if self.bytes.is_empty() {
            return Ok(());
        }
        let result = self.write();
        let message = result.as_ref().err().map(ToString::to_string);
        match &message {
            None => {
                self.written.append(&mut self.pending);
                self.written_through = self.next_seq - 1;
            }
            Some(m) => {
                tracing::error!(error = %m, lost = self.pending.len(), "audit journal write failed");
                self.backlog.fetch_sub(self.pending.len(), Ordering::SeqCst);
                self.pending.clear();
                // Nobody was told these were written: their numbers are reused, so
                // the run has no gap.
                if let Some(first) = self.batch_first {
                    self.next_seq = first;
                }
            }
        }
        self.batch_first = None;
        self.bytes.clear();
        let answer = || match &message {
            None => Ok(()),
            Some(m) => Err(StoreError::AppendFailed(m.clone())),
        };
        for w in self.waiting.drain(..) {
            let _ = w.send(answer());
        }
        answer()
    }

    fn write(&mut self) -> Result<()> {
        let first = self.batch_first.unwrap_or(self.next_seq);
        let mut size = self.bytes.len() as u64;
        if self.segment.len > 0 && self.segment.len + size > SEGMENT_BYTES {
            let fresh = match self.next.take() {
                Some(handle) => handle.join().unwrap_or_else(|_| {
                    Err(StoreError::AppendFailed(
                        "audit journal: preparing a segment failed".into(),
                    ))
                }),
                None => create_segment(&self.dir, self.segment.number + 1),
            }?;
            let old = std::mem::replace(&mut self.segment, fresh);
            self.finished.push(old.number);
        }
        // A segment starts with its header: which run, which segment, which seq.
        if self.segment.len == 0 {
            let header = self.key.header(&self.run, self.segment.number, first);
            size += header.len() as u64;
            let mut bytes = header;
            bytes.append(&mut self.bytes);
            self.bytes = bytes;
        }
        let offset = self.segment.len;
        let mut written = self
            .segment
            .file
            .write_all_at(&self.bytes, offset)
            .map_err(|e| io_error("writing", e));
        if written.is_ok() && self.sync == JournalSync::Disk {
            written = self
                .segment
                .file
                .sync_data()
                .map_err(|e| io_error("syncing", e));
        }
        if written.is_err() {
            // Nobody was told these lines were written and the next write reuses
            // their numbers at this offset: zero whatever part of them reached the
            // file, so that a shorter next write leaves no stale line behind it
            // (reading stops at the zero fill). Best effort: the disk is failing.
            let _ = self
                .segment
                .file
                .write_all_at(&vec![0; self.bytes.len()], offset);
        }
        written?;
        self.segment.len += size;
        if self.next.is_none() && self.segment.len > SEGMENT_BYTES / 2 {
            let (dir, number) = (self.dir.clone(), self.segment.number + 1);
            self.next = Some(std::thread::spawn(move || create_segment(&dir, number)));
        }
        Ok(())
    }
}
