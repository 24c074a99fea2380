//! Session recording files: one JSON Lines file per session in the recordings
//! directory, written line by line as the session goes (see
//! [`warden_core::recording`] for the format), and read back for replay and the API.
//!
//! Lines are written by one thread for the whole gateway ([`RecordingWriter`]): a
//! session queues its line (stamped when it happened) and goes on; the writer writes
//! what is queued, grouped per file, and flushes whenever the queue is empty. The
//! queue is bounded: sessions wait (a future, never a blocked runtime thread) while
//! the disk is behind. A file that cannot be written fails the next entry of its
//! session, which then ends.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;
use warden_core::{
    BoxFuture, RecordingError, RecordingHeader, SessionRecorder, TimelineEntry, TimelineEvent,
};

/// Lines queued for the writer, for all sessions together.
const QUEUE: usize = 4096;

/// Work for the writer thread.
enum Job {
    Line {
        file: Arc<RecordingFile>,
        line: Vec<u8>,
    },
    /// Answer once everything queued before is written.
    Flush(oneshot::Sender<()>),
}

/// One recording file as the writer holds it.
struct RecordingFile {
    file: Mutex<std::io::BufWriter<std::fs::File>>,
    /// Why it cannot be written, once it cannot.
    failed: Mutex<Option<String>>,
}

impl RecordingFile {
    fn fail(&self, e: &std::io::Error) {
        tracing::error!(error = %e, "session recording cannot be written");
        if let Ok(mut f) = self.failed.lock() {
            f.get_or_insert_with(|| e.to_string());
        }
    }

    fn failure(&self) -> Option<String> {
        self.failed.lock().ok().and_then(|f| f.clone())
    }
}

/// The gateway's recording writer: one thread writes every session's timeline.
#[derive(Clone)]
pub struct RecordingWriter {
    queue: mpsc::Sender<Job>,
}

impl RecordingWriter {
    /// Starts the writer thread; it ends when the last handle is dropped.
    pub fn start() -> std::io::Result<Self> {
        let (queue, jobs) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("warden-recordings".into())
            .spawn(move || write_recordings(jobs))?;
        Ok(Self { queue })
    }
}

/// How long the writer rests after writing, so that the lines of the next few
/// milliseconds are written together: one wake-up and one `write` per file for many
/// statements instead of per line. (A rest with nothing queued costs nothing: the
/// writer then blocks until a line comes.)
const BATCH_PAUSE: std::time::Duration = std::time::Duration::from_millis(2);

/// The writer thread: writes lines as they come, grouped per file, and flushes the
/// files it wrote to whenever nothing more is queued.
fn write_recordings(mut jobs: mpsc::Receiver<Job>) {
    let mut dirty: HashMap<*const RecordingFile, Arc<RecordingFile>> = HashMap::new();
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    while let Some(job) = jobs.blocking_recv() {
        let mut next = Some(job);
        while let Some(job) = next.take() {
            match job {
                Job::Line { file, line } => {
                    if file.failure().is_none() {
                        let written = file
                            .file
                            .lock()
                            .map_err(|_| std::io::Error::other("recording lock poisoned"))
                            .and_then(|mut f| f.write_all(&line));
                        match written {
                            Ok(()) => {
                                dirty.insert(Arc::as_ptr(&file), file);
                            }
                            Err(e) => file.fail(&e),
                        }
                    }
                }
                Job::Flush(reply) => waiting.push(reply),
            }
            next = jobs.try_recv().ok();
        }
        for (_, file) in dirty.drain() {
            let flushed = file
                .file
                .lock()
                .map_err(|_| std::io::Error::other("recording lock poisoned"))
                .and_then(|mut f| f.flush());
            if let Err(e) = flushed {
                file.fail(&e);
            }
        }
        for reply in waiting.drain(..) {
            let _ = reply.send(());
        }
        std::thread::sleep(BATCH_PAUSE);
    }
}

/// Format version written in headers.
pub const RECORDING_VERSION: u32 = 1;

/// The file name of a session's recording, relative to the recordings directory.
pub fn recording_name(session: Uuid) -> String {
    format!("{session}.jsonl")
}

/// Appends a session's timeline to its file. Each entry is one `write` of one line to
/// a file opened for appending, so a killed gateway leaves whole lines behind.
pub struct FileRecorder {
    file: Arc<RecordingFile>,
    writer: RecordingWriter,
    started: Instant,
    rows_per_result: usize,
}

impl FileRecorder {
    /// Creates `<dir>/<session>.jsonl` (owner-only: results in it may be sensitive even
    /// when masked) and writes the header.
    pub fn create(
        dir: &Path,
        header: &RecordingHeader,
        writer: RecordingWriter,
    ) -> std::io::Result<Self> {
        create_private_dir(dir)?;
        let session: Uuid = header
            .session
            .parse()
            .map_err(|_| std::io::Error::other("session id is not a UUID"))?;
        let mut options = std::fs::OpenOptions::new();
        options.create_new(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(dir.join(recording_name(session)))?;
        let mut line = serde_json::to_vec(header).map_err(std::io::Error::other)?;
        line.push(b'\n');
        file.write_all(&line)?;
        Ok(Self {
            file: Arc::new(RecordingFile {
                file: Mutex::new(std::io::BufWriter::new(file)),
                failed: Mutex::new(None),
            }),
            writer,
            started: Instant::now(),
            rows_per_result: header.rows_per_result,
        })
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

impl FileRecorder {
    async fn write(&self, event: TimelineEvent) -> Result<(), RecordingError> {
        if warden_core::ablation::skipped(warden_core::ablation::Stage::Record) {
            return Ok(());
        }
        if let Some(e) = self.file.failure() {
            return Err(RecordingError(e));
        }
        let entry = TimelineEntry {
            t: u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX),
            event,
        };
        let mut line = entry.to_json().map_err(|e| RecordingError(e.to_string()))?;
        line.push(b'\n');
        let job = Job::Line {
            file: self.file.clone(),
            line,
        };
        self.writer
            .queue
            .send(job)
            .await
            .map_err(|_| RecordingError("the recording writer stopped".into()))
    }

    async fn written(&self) -> Result<(), RecordingError> {
        let (reply, done) = oneshot::channel();
        let stopped = || RecordingError("the recording writer stopped".into());
        self.writer
            .queue
            .send(Job::Flush(reply))
            .await
            .map_err(|_| stopped())?;
        done.await.map_err(|_| stopped())?;
        match self.file.failure() {
            Some(e) => Err(RecordingError(e)),
            None => Ok(()),
        }
    }
}

impl SessionRecorder for FileRecorder {
    fn record(&self, event: TimelineEvent) -> BoxFuture<'_, Result<(), RecordingError>> {
        Box::pin(self.write(event))
    }

    fn rows_per_result(&self) -> usize {
        self.rows_per_result
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), RecordingError>> {
        Box::pin(self.written())
    }
}

/// A recording read back. `truncated` says the last line was cut (the gateway died
/// while writing it); everything before it is intact.
#[derive(Debug, Clone)]
pub struct Recording {
    pub header: RecordingHeader,
    pub entries: Vec<TimelineEntry>,
    pub truncated: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordingReadError {
    #[error("there is no recording for session {0}")]
    NotFound(Uuid),
    #[error("cannot read recording {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("recording {path} is damaged at line {line}: {message}")]
    Damaged {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// Reads a session's recording from `dir`.
pub fn read_recording(dir: &Path, session: Uuid) -> Result<Recording, RecordingReadError> {
    let path = dir.join(recording_name(session));
    let file = std::fs::File::open(&path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            RecordingReadError::NotFound(session)
        } else {
            RecordingReadError::Io {
                path: path.clone(),
                source,
            }
        }
    })?;
    let io = |source| RecordingReadError::Io {
        path: path.clone(),
        source,
    };
    let damaged = |line: usize, message: String| RecordingReadError::Damaged {
        path: path.clone(),
        line,
        message,
    };
    let mut lines = std::io::BufReader::new(file).split(b'\n').enumerate();
    let header: RecordingHeader = match lines.next() {
        Some((_, line)) => {
            serde_json::from_slice(&line.map_err(io)?).map_err(|e| damaged(1, e.to_string()))?
        }
        None => return Err(damaged(1, "empty file".into())),
    };
    let mut entries = Vec::new();
    let mut truncated = false;
    let mut lines = lines.peekable();
    while let Some((i, line)) = lines.next() {
        let line = line.map_err(io)?;
        match serde_json::from_slice::<TimelineEntry>(&line) {
            Ok(e) => entries.push(e),
            // Only the very last line may be cut short.
            Err(_) if lines.peek().is_none() => truncated = true,
            Err(e) => return Err(damaged(i + 1, e.to_string())),
        }
    }
    Ok(Recording {
        header,
        entries,
        truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_core::Decision;

    #[tokio::test]
    async fn a_recording_cut_mid_line_reads_up_to_its_last_whole_line() {
        let dir = tempfile::tempdir().unwrap();
        let id = Uuid::now_v7();
        let header = RecordingHeader {
            version: RECORDING_VERSION,
            session: id.to_string(),
            connection: "db".into(),
            protocol: "postgres".into(),
            subject: "alice".into(),
            started_at: "2026-01-01T00:00:00Z".into(),
            rows_per_result: 3,
        };
        let writer = RecordingWriter::start().unwrap();
        let rec = FileRecorder::create(dir.path(), &header, writer).unwrap();
        rec.record(TimelineEvent::Statement {
            via: "Query".into(),
            sql: "SELECT 1".into(),
            decision: Decision::Allow,
        })
        .await
        .unwrap();
        rec.flush().await.unwrap();
        drop(rec);
        let path = dir.path().join(recording_name(id));
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(br#"{"t":5,"kind":"res"#).unwrap();
        let r = read_recording(dir.path(), id).unwrap();
        assert_eq!(r.header, header);
        assert_eq!(r.entries.len(), 1);
        assert!(r.truncated);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(matches!(
            read_recording(dir.path(), Uuid::now_v7()),
            Err(RecordingReadError::NotFound(_))
        ));
    }
}
