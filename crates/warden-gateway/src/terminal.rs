//! Terminal recordings: asciicast v2 (a JSON header line, then `[seconds, "o"|"i"|"r",
//! data]` lines), compressed at rest as a sequence of independent zstd frames.
//!
//! Lines are buffered for at most [`FLUSH_INTERVAL`] (or [`FLUSH_BYTES`]) and then
//! written as one frame, so a gateway killed mid-session leaves every frame before
//! the last whole; reading stops at the first damaged frame and keeps what came
//! before. Exported, the file is plain asciicast that `asciinema play` accepts.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde_json::json;
use warden_core::{RecordingError, TerminalRecorder, TerminalSpec};

/// Buffered lines are written at least this often.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(500);
/// ... or when this much is buffered.
pub const FLUSH_BYTES: usize = 64 * 1024;
const ZSTD_LEVEL: i32 = 3;

/// The file name of one terminal of a session.
pub fn cast_name(session: &str, channel: u32) -> String {
    format!("{session}.{channel}.cast.zst")
}

struct CastState {
    file: std::fs::File,
    pending: Vec<u8>,
    /// Bytes of a UTF-8 sequence cut at the end of the last chunk, per stream.
    carry_out: Vec<u8>,
    carry_in: Vec<u8>,
    failed: Option<String>,
}

/// Streams one terminal to its file.
pub struct CastRecorder {
    started: Instant,
    state: Mutex<CastState>,
}

impl CastRecorder {
    /// Creates the file (owner-only) with the asciicast header, and a task that
    /// writes buffered lines every [`FLUSH_INTERVAL`] while the recorder lives.
    pub fn create(
        dir: &Path,
        session: &str,
        title: &str,
        spec: &TerminalSpec,
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
        let recorder = Arc::new(Self {
            started: Instant::now(),
            state: Mutex::new(CastState {
                file,
                pending,
                carry_out: Vec::new(),
                carry_in: Vec::new(),
                failed: None,
            }),
        });
        recorder.flush().map_err(|e| std::io::Error::other(e.0))?;
        let weak: Weak<Self> = Arc::downgrade(&recorder);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(FLUSH_INTERVAL).await;
                let Some(r) = weak.upgrade() else { break };
                if r.flush().is_err() {
                    break;
                }
            }
        });
        Ok(recorder)
    }

    fn event(&self, code: &str, data: &[u8]) -> Result<(), RecordingError> {
        let t = self.started.elapsed().as_secs_f64();
        let mut state = self.lock()?;
        let carry = if code == "i" {
            &mut state.carry_in
        } else {
            &mut state.carry_out
        };
        let text = utf8_stream(carry, data);
        if text.is_empty() {
            return Ok(());
        }
        let line = json!([(t * 1e6).round() / 1e6, code, text]);
        push_line(&mut state, &line)?;
        if state.pending.len() >= FLUSH_BYTES {
            write_frame(&mut state)?;
        }
        Ok(())
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, CastState>, RecordingError> {
        let state = self
            .state
            .lock()
            .map_err(|_| RecordingError("terminal recording lock poisoned".into()))?;
        if let Some(e) = &state.failed {
            return Err(RecordingError(e.clone()));
        }
        Ok(state)
    }

    fn flush(&self) -> Result<(), RecordingError> {
        let mut state = self.lock()?;
        write_frame(&mut state)
    }
}

fn push_line(state: &mut CastState, line: &serde_json::Value) -> Result<(), RecordingError> {
    serde_json::to_writer(&mut state.pending, line).map_err(|e| RecordingError(e.to_string()))?;
    state.pending.push(b'\n');
    Ok(())
}

/// Compresses the buffered lines into one frame and appends it with one write.
fn write_frame(state: &mut CastState) -> Result<(), RecordingError> {
    if state.pending.is_empty() {
        return Ok(());
    }
    let result = zstd::bulk::compress(&state.pending, ZSTD_LEVEL)
        .and_then(|frame| state.file.write_all(&frame));
    match result {
        Ok(()) => {
            state.pending.clear();
            Ok(())
        }
        Err(e) => {
            let message = format!("terminal recording cannot be written: {e}");
            state.failed = Some(message.clone());
            Err(RecordingError(message))
        }
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
    fn output(&self, data: &[u8]) -> Result<(), RecordingError> {
        self.event("o", data)
    }

    fn input(&self, data: &[u8]) -> Result<(), RecordingError> {
        self.event("i", data)
    }

    fn resize(&self, width: u32, height: u32) -> Result<(), RecordingError> {
        let t = self.started.elapsed().as_secs_f64();
        let mut state = self.lock()?;
        let line = json!([(t * 1e6).round() / 1e6, "r", format!("{width}x{height}")]);
        push_line(&mut state, &line)
    }

    fn finish(&self) -> Result<(), RecordingError> {
        let mut state = self.lock()?;
        let out = std::mem::take(&mut state.carry_out);
        if !out.is_empty() {
            let t = self.started.elapsed().as_secs_f64();
            let line = json!([t, "o", String::from_utf8_lossy(&out)]);
            push_line(&mut state, &line)?;
        }
        write_frame(&mut state)?;
        state
            .file
            .sync_data()
            .map_err(|e| RecordingError(e.to_string()))
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
        let r = CastRecorder::create(dir.path(), "s1", "t", &spec()).unwrap();
        r.output(b"hello \xc3").unwrap(); // é cut in two
        r.output(b"\xa9\r\n").unwrap();
        r.input(b"ls\r").unwrap();
        r.resize(120, 40).unwrap();
        r.finish().unwrap();
        r.output(b"after").unwrap();
        r.flush().unwrap();
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

    #[test]
    fn invalid_utf8_is_replaced_and_cut_sequences_wait() {
        let mut carry = Vec::new();
        assert_eq!(utf8_stream(&mut carry, b"a\xffb\xe2\x82"), "a\u{fffd}b");
        assert_eq!(carry, b"\xe2\x82");
        assert_eq!(utf8_stream(&mut carry, b"\xac"), "€");
        assert!(carry.is_empty());
    }
}
