//! Terminal recordings: asciicast v2 (a JSON header line, then `[seconds, "o"|"i"|"r",
//! data]` lines), compressed at rest as a sequence of independent zstd frames.
//!
//! Lines are buffered for at most [`FLUSH_INTERVAL`] (or [`FLUSH_BYTES`]) and then
//! written as one frame, so a gateway killed mid-session leaves every frame before
//! the last whole; reading stops at the first damaged frame and keeps what came
//! before. Exported, the file is plain asciicast that `asciinema play` accepts.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use warden_core::{BoxFuture, RecordingError, TerminalRecorder, TerminalSpec};

/// Buffered lines are written at least this often.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(500);
/// ... or when this much is buffered.
pub const FLUSH_BYTES: usize = 64 * 1024;
/// Fast: a recording is written once and rarely read; level 1 keeps up with a
/// terminal at full speed.
const ZSTD_LEVEL: i32 = 1;

/// The file name of one terminal of a session.
pub fn cast_name(session: &str, channel: u32) -> String {
    format!("{session}.{channel}.cast.zst")
}

/// What the proxy hands the writer thread, stamped when it happened.
enum CastCommand {
    Event {
        t: f64,
        code: &'static str,
        data: Vec<u8>,
    },
    Resize {
        t: f64,
        width: u32,
        height: u32,
    },
    /// Write everything buffered and sync; answer when done.
    Finish(tokio::sync::oneshot::Sender<Result<(), RecordingError>>),
}

/// Commands queued before the proxy waits for the writer: bounds memory while the
/// writer compresses, and slows a session that outruns its recording rather than
/// dropping any of it.
const QUEUE: usize = 64;

/// Streams one terminal to its file. Escaping, compression and the final sync run
/// on a thread of their own, so recording a fast terminal overlaps with relaying it
/// and no runtime thread ever waits on the disk: a proxy that is [`QUEUE`] commands
/// ahead waits for a permit (a future), which the writer returns per command done.
pub struct CastRecorder {
    started: Instant,
    queue: std::sync::mpsc::Sender<CastCommand>,
    /// Room in the queue; closed when the writer stops.
    room: Arc<tokio::sync::Semaphore>,
    failed: Arc<Mutex<Option<String>>>,
    /// Bytes of input and output kept at most; the rest is counted in `dropped`.
    limit: Option<u64>,
    kept: AtomicU64,
    dropped: AtomicU64,
}

impl CastRecorder {
    /// Creates the file (owner-only) with the asciicast header, and the thread that
    /// writes it: buffered lines go out every [`FLUSH_INTERVAL`] or [`FLUSH_BYTES`].
    pub fn create(
        dir: &Path,
        session: &str,
        title: &str,
        spec: &TerminalSpec,
        limit: Option<u64>,
    ) -> std::io::Result<Arc<Self>> {
        let path = dir.join(cast_name(session, spec.channel));
        let mut options = std::fs::OpenOptions::new();
        options.create_new(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let file = options.open(&path)?;
        let mut env = serde_json::Map::new();
        if let Some(term) = &spec.term {
            env.insert("TERM".into(), json!(term));
        }
        let header = json!({
            "version": 2,
            "width": spec.width.max(1),
            "height": spec.height.max(1),
            "timestamp": time::OffsetDateTime::now_utc().unix_timestamp(),
            "title": title,
            "env": env,
        });
        let mut pending = serde_json::to_vec(&header).map_err(std::io::Error::other)?;
        pending.push(b'\n');
        let mut writer = CastWriter {
            file,
            pending,
            last_t: 0.0,
            carry_out: Vec::new(),
            carry_in: Vec::new(),
        };
        writer.write_frame()?;
        let (queue, commands) = std::sync::mpsc::channel();
        let room = Arc::new(tokio::sync::Semaphore::new(QUEUE));
        let failed = Arc::new(Mutex::new(None));
        let failed_in_thread = failed.clone();
        let room_in_thread = room.clone();
        std::thread::Builder::new()
            .name("warden-cast".into())
            .spawn(move || {
                writer.run(&commands, &failed_in_thread, &room_in_thread);
                // Nothing is written any more: whoever waits for room hears so.
                room_in_thread.close();
            })?;
        Ok(Arc::new(Self {
            started: Instant::now(),
            queue,
            room,
            failed,
            limit,
            kept: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }))
    }

    fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Input or output: kept while under the limit, counted after it.
    async fn data(&self, code: &'static str, data: &[u8]) -> Result<(), RecordingError> {
        let len = data.len() as u64;
        if let Some(limit) = self.limit
            && self.kept.fetch_add(len, Ordering::Relaxed) >= limit
        {
            self.dropped.fetch_add(len, Ordering::Relaxed);
            return Ok(());
        }
        self.send(CastCommand::Event {
            t: self.now(),
            code,
            data: data.to_vec(),
        })
        .await
    }

    /// Queues a command once there is room for it.
    async fn send(&self, command: CastCommand) -> Result<(), RecordingError> {
        let stopped = || {
            let failure = self.failed.lock().ok().and_then(|f| f.clone());
            RecordingError(failure.unwrap_or_else(|| "the terminal recording stopped".into()))
        };
        if self.failed.lock().ok().is_some_and(|f| f.is_some()) {
            return Err(stopped());
        }
        // The writer gives the permit back when it has handled the command.
        self.room.acquire().await.map_err(|_| stopped())?.forget();
        self.queue.send(command).map_err(|_| stopped())
    }

    async fn finish_now(&self) -> Result<(), RecordingError> {
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            let note = format!(
                "\r\n[warden: {dropped} more bytes of input and output were not recorded (recordings.exec_output_bytes)]\r\n"
            );
            self.send(CastCommand::Event {
                t: self.now(),
                code: "o",
                data: note.into_bytes(),
            })
            .await?;
        }
        let (reply, done) = tokio::sync::oneshot::channel();
        self.send(CastCommand::Finish(reply)).await?;
        done.await
            .map_err(|_| RecordingError("the terminal recording stopped".into()))?
    }
}

/// The writer thread's state: the file, lines not yet compressed, and UTF-8
/// sequences cut at the end of the last chunk of each stream.
struct CastWriter {
    file: std::fs::File,
    pending: Vec<u8>,
    /// The time of the last line, for a line written at the end.
    last_t: f64,
    carry_out: Vec<u8>,
    carry_in: Vec<u8>,
}

impl CastWriter {
    fn run(
        &mut self,
        commands: &std::sync::mpsc::Receiver<CastCommand>,
        failed: &Mutex<Option<String>>,
        room: &tokio::sync::Semaphore,
    ) {
        use std::sync::mpsc::RecvTimeoutError;
        let mut oldest: Option<Instant> = None;
        loop {
            let wait = oldest.map_or(FLUSH_INTERVAL, |o| {
                FLUSH_INTERVAL.saturating_sub(o.elapsed())
            });
            let received = commands.recv_timeout(wait);
            if received.is_ok() {
                room.add_permits(1);
            }
            let result = match received {
                Ok(CastCommand::Event { t, code, data }) => self.event(t, code, &data),
                Ok(CastCommand::Resize { t, width, height }) => {
                    self.line(t, "r", &format!("{width}x{height}"))
                }
                Ok(CastCommand::Finish(reply)) => {
                    let done = self.finish();
                    let failure = done.as_ref().err().map(ToString::to_string);
                    let _ = reply.send(done.map_err(|e| RecordingError(e.to_string())));
                    if failure.is_none() {
                        oldest = None;
                        continue;
                    }
                    Err(std::io::Error::other(failure.unwrap_or_default()))
                }
                Err(RecvTimeoutError::Timeout) => self.write_frame(),
                // The recorder is gone: write what is left.
                Err(RecvTimeoutError::Disconnected) => {
                    if let Err(e) = self.finish() {
                        tracing::error!(error = %e, "terminal recording not finished");
                    }
                    return;
                }
            };
            if let Err(e) = result {
                tracing::error!(error = %e, "terminal recording failed");
                if let Ok(mut f) = failed.lock() {
                    *f = Some(format!("terminal recording cannot be written: {e}"));
                }
                return;
            }
            if self.pending.is_empty() {
                oldest = None;
            } else if oldest.is_none() {
                oldest = Some(Instant::now());
            }
            if self.pending.len() >= FLUSH_BYTES
                || oldest.is_some_and(|o| o.elapsed() >= FLUSH_INTERVAL)
            {
                if let Err(e) = self.write_frame() {
                    tracing::error!(error = %e, "terminal recording failed");
                    if let Ok(mut f) = failed.lock() {
                        *f = Some(format!("terminal recording cannot be written: {e}"));
                    }
                    return;
                }
                oldest = None;
            }
        }
    }

    fn event(&mut self, t: f64, code: &str, data: &[u8]) -> std::io::Result<()> {
        let carry = if code == "i" {
            &mut self.carry_in
        } else {
            &mut self.carry_out
        };
        let text = utf8_stream(carry, data);
        if text.is_empty() {
            return Ok(());
        }
        self.line(t, code, &text)
    }

    fn line(&mut self, t: f64, code: &str, text: &str) -> std::io::Result<()> {
        let t = (t * 1e6).round() / 1e6;
        self.last_t = t;
        serde_json::to_writer(&mut self.pending, &(t, code, text))
            .map_err(std::io::Error::other)?;
        self.pending.push(b'\n');
        Ok(())
    }

    /// Compresses the buffered lines into one frame and appends it with one write.
    fn write_frame(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let frame = zstd::bulk::compress(&self.pending, ZSTD_LEVEL)?;
        self.file.write_all(&frame)?;
        self.pending.clear();
        Ok(())
    }

    fn finish(&mut self) -> std::io::Result<()> {
        let out = std::mem::take(&mut self.carry_out);
        if !out.is_empty() {
            // The recording ends inside a UTF-8 sequence: keep what there is.
            let text = String::from_utf8_lossy(&out).into_owned();
            self.line(self.last_t, "o", &text)?;
        }
        self.write_frame()?;
        self.file.sync_data()
    }
}

/// Decodes the next piece of a byte stream as UTF-8, keeping a sequence cut at the
/// end for the next piece; invalid bytes become U+FFFD.
fn utf8_stream(carry: &mut Vec<u8>, data: &[u8]) -> String {
    carry.extend_from_slice(data);
    let keep = match std::str::from_utf8(carry) {
        Ok(_) => 0,
        Err(e) if e.error_len().is_none() => carry.len() - e.valid_up_to(),
        // Invalid inside: decode lossily, keeping a possibly cut tail.
        Err(_) => incomplete_tail(carry),
    };
    let rest = carry.split_off(carry.len() - keep);
    let text = String::from_utf8_lossy(carry).into_owned();
    *carry = rest;
    text
}

/// Length of a UTF-8 sequence started but not finished at the end of `bytes`.
fn incomplete_tail(bytes: &[u8]) -> usize {
    for back in 1..=3.min(bytes.len()) {
        let b = bytes[bytes.len() - back];
        if b & 0xc0 == 0x80 {
            continue;
        }
        let need = match b {
            0xc0..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf7 => 4,
            _ => return 0,
        };
        return if need > back { back } else { 0 };
    }
    0
}

impl TerminalRecorder for CastRecorder {
    fn output<'a>(&'a self, data: &'a [u8]) -> BoxFuture<'a, Result<(), RecordingError>> {
        Box::pin(self.data("o", data))
    }

    fn input<'a>(&'a self, data: &'a [u8]) -> BoxFuture<'a, Result<(), RecordingError>> {
        Box::pin(self.data("i", data))
    }

    fn resize(&self, width: u32, height: u32) -> BoxFuture<'_, Result<(), RecordingError>> {
        Box::pin(self.send(CastCommand::Resize {
            t: self.now(),
            width,
            height,
        }))
    }

    fn finish(&self) -> BoxFuture<'_, Result<(), RecordingError>> {
        Box::pin(self.finish_now())
    }
}

/// A terminal recording read back, decompressed.
#[derive(Debug, Clone)]
pub struct Cast {
    /// The asciicast header line.
    pub header: serde_json::Value,
    /// `(seconds, code, data)`.
    pub events: Vec<(f64, String, String)>,
    /// The file ends in a damaged frame or line (the gateway stopped mid-write).
    pub truncated: bool,
}

impl Cast {
    /// The recording as a plain asciicast v2 file.
    pub fn to_asciicast(&self) -> String {
        let mut out = self.header.to_string();
        out.push('\n');
        for (t, code, data) in &self.events {
            out.push_str(&json!([t, code, data]).to_string());
            out.push('\n');
        }
        out
    }

    /// Reads a plain asciicast v2 file (as the API serves terminals); `None` when
    /// it has no header line. Lines that are not events are skipped.
    pub fn from_asciicast(text: &str) -> Option<Cast> {
        let mut lines = text.lines();
        let header: serde_json::Value = serde_json::from_str(lines.next()?).ok()?;
        let events = lines
            .filter_map(|l| serde_json::from_str::<(f64, String, String)>(l).ok())
            .collect();
        Some(Cast {
            header,
            events,
            truncated: false,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CastReadError {
    #[error("there is no terminal recording {0}")]
    NotFound(PathBuf),
    #[error("cannot read terminal recording {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("terminal recording {0} has no asciicast header")]
    NoHeader(PathBuf),
}

/// Reads `<dir>/<session>.<channel>.cast.zst`.
pub fn read_cast(dir: &Path, session: &str, channel: u32) -> Result<Cast, CastReadError> {
    let path = dir.join(cast_name(session, channel));
    let file = std::fs::File::open(&path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            CastReadError::NotFound(path.clone())
        } else {
            CastReadError::Io {
                path: path.clone(),
                source,
            }
        }
    })?;
    let mut text = Vec::new();
    let mut truncated = false;
    let decoder = zstd::stream::read::Decoder::new(file).map_err(|source| CastReadError::Io {
        path: path.clone(),
        source,
    })?;
    // A cut last frame is an error after everything before it was decoded.
    if decoder.take(u64::MAX).read_to_end(&mut text).is_err() {
        truncated = true;
    }
    let mut lines = text.split(|b| *b == b'\n').filter(|l| !l.is_empty());
    let header: serde_json::Value = lines
        .next()
        .and_then(|l| serde_json::from_slice(l).ok())
        .ok_or_else(|| CastReadError::NoHeader(path.clone()))?;
    let mut events = Vec::new();
    for line in lines {
        match serde_json::from_slice::<(f64, String, String)>(line) {
            Ok(e) => events.push(e),
            Err(_) => {
                truncated = true;
                break;
            }
        }
    }
    Ok(Cast {
        header,
        events,
        truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TerminalSpec {
        TerminalSpec {
            channel: 3,
            width: 100,
            height: 30,
            term: Some("xterm".into()),
            command: None,
        }
    }

    #[tokio::test]
    async fn a_terminal_round_trips_through_frames_even_when_cut() {
        let dir = tempfile::tempdir().unwrap();
        let r = CastRecorder::create(dir.path(), "s1", "t", &spec(), None).unwrap();
        r.output(b"hello \xc3").await.unwrap(); // é cut in two
        r.output(b"\xa9\r\n").await.unwrap();
        r.input(b"ls\r").await.unwrap();
        r.resize(120, 40).await.unwrap();
        r.finish().await.unwrap();
        r.output(b"after").await.unwrap();
        r.finish().await.unwrap();
        let cast = read_cast(dir.path(), "s1", 3).unwrap();
        assert_eq!(cast.header["version"], 2);
        assert_eq!(cast.header["width"], 100);
        let codes: Vec<_> = cast
            .events
            .iter()
            .map(|e| (e.1.as_str(), e.2.as_str()))
            .collect();
        assert_eq!(
            codes,
            vec![
                ("o", "hello "),
                ("o", "é\r\n"),
                ("i", "ls\r"),
                ("r", "120x40"),
                ("o", "after")
            ]
        );
        assert!(!cast.truncated);
        // A frame cut short by a crash: everything before it still reads.
        let path = dir.path().join(cast_name("s1", 3));
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        let frame = zstd::bulk::compress(b"[9.0,\"o\",\"lost\"]\n", 3).unwrap();
        f.write_all(&frame[..frame.len() / 2]).unwrap();
        let cast = read_cast(dir.path(), "s1", 3).unwrap();
        assert!(cast.truncated);
        assert_eq!(cast.events.len(), 5);
        assert!(cast.to_asciicast().starts_with("{\""));
    }

    #[tokio::test]
    async fn a_capped_recording_keeps_its_first_bytes_and_says_how_many_it_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let r = CastRecorder::create(dir.path(), "s2", "t", &spec(), Some(10)).unwrap();
        r.output(b"0123456789").await.unwrap();
        r.output(b"abcdef").await.unwrap();
        r.input(b"xyz").await.unwrap();
        r.finish().await.unwrap();
        let cast = read_cast(dir.path(), "s2", 3).unwrap();
        let texts: Vec<_> = cast.events.iter().map(|e| e.2.as_str()).collect();
        assert_eq!(texts[0], "0123456789");
        assert_eq!(texts.len(), 2, "{texts:?}");
        assert!(texts[1].contains("9 more bytes"), "{}", texts[1]);
    }

    #[test]
    fn invalid_utf8_is_replaced_and_cut_sequences_wait() {
        let mut carry = Vec::new();
        assert_eq!(utf8_stream(&mut carry, b"a\xffb\xe2\x82"), "a\u{fffd}b");
        assert_eq!(carry, b"\xe2\x82");
        assert_eq!(utf8_stream(&mut carry, b"\xac"), "€");
        assert!(carry.is_empty());
    }
}
