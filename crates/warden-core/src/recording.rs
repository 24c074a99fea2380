//! Session recordings of database sessions: what a proxy hands to its recorder, and
//! the on-disk form that replay reads.
//!
//! A recording is JSON Lines: one [`RecordingHeader`], then one [`TimelineEntry`] per
//! statement, result, error or notice, each written when it happens, so a recording cut
//! short by a crash is still readable up to its last line. Results carry values as the
//! client saw them, i.e. already masked, and only their first rows.

use serde::{Deserialize, Serialize};

use crate::{BoxFuture, Decision};

/// The first line of a recording.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordingHeader {
    /// Format version of the lines that follow.
    pub version: u32,
    pub session: String,
    pub connection: String,
    pub protocol: String,
    pub subject: String,
    /// RFC 3339; entry times count microseconds from here.
    pub started_at: String,
    /// Rows kept per result; `rows_total` in a result says how many there were.
    pub rows_per_result: usize,
}

/// One moment of a session, `t` microseconds after it started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEntry {
    pub t: u64,
    #[serde(flatten)]
    pub event: TimelineEvent,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TimelineEvent {
    /// A statement as the client sent it, and what policy decided.
    Statement {
        via: String,
        sql: String,
        decision: Decision,
    },
    /// A statement finished: its command tag and its first rows, masked.
    Result {
        tag: String,
        columns: Vec<String>,
        rows: Vec<Vec<Option<String>>>,
        /// Rows the statement returned.
        rows_total: u64,
        /// Rows the statement changed, as the database reported them (`INSERT`,
        /// `UPDATE`, `DELETE`, `MERGE`; MySQL's OK packets); absent for reads.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rows_affected: Option<u64>,
        /// From the request being forwarded to its completion, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration_us: Option<u64>,
    },
    /// An error the client received (a denial, or the database's own, masked).
    Error {
        code: String,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration_us: Option<u64>,
    },
    /// Bulk data through COPY, summarized.
    Copy {
        direction: String,
        bytes: u64,
        rows: u64,
    },
    /// A terminal (SSH shell or command) whose bytes are in a separate asciicast
    /// recording, `file`, in the recordings directory.
    Terminal {
        channel: u32,
        file: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        command: Option<String>,
    },
    /// Something an SSH session did besides commands: a file transfer, a forwarded
    /// port, a refused channel. `detail` is the audit event's payload.
    Activity {
        what: String,
        detail: serde_json::Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        decision: Option<Decision>,
    },
    /// An HTTP or Kubernetes request was answered: its status and the body bytes the
    /// client received (for streams: when the stream ended).
    Response {
        status: u16,
        bytes: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration_us: Option<u64>,
    },
    /// A command (or shell) finished.
    Exit {
        channel: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<String>,
    },
    /// The session ended; `reason` is set when it did not end by the client's choice.
    End {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

/// A recording could not be written; the proxy ends the session (fail closed).
#[derive(Debug, Clone, thiserror::Error)]
#[error("the session recording cannot be written: {0}")]
pub struct RecordingError(pub String);

/// Where a proxy writes a session's timeline. Implementations stamp the time when
/// `record` is called and write the entry without blocking a thread: a recorder that
/// is behind makes `record` wait (a future), so a session that outruns its recording
/// slows down instead of losing any of it. An error means the recording cannot be
/// written: the session ends.
pub trait SessionRecorder: Send + Sync {
    fn record(&self, event: TimelineEvent) -> BoxFuture<'_, Result<(), RecordingError>>;
    /// Records an action's outcome, naming the action's audit event (`statement`)
    /// when the proxy knows it. Recorders that keep no audit log just record it.
    fn record_outcome(
        &self,
        statement: Option<uuid::Uuid>,
        event: TimelineEvent,
    ) -> BoxFuture<'_, Result<(), RecordingError>> {
        let _ = statement;
        self.record(event)
    }
    /// How many rows of each result to keep.
    fn rows_per_result(&self) -> usize;
    /// Waits until everything recorded so far is written.
    fn flush(&self) -> BoxFuture<'_, Result<(), RecordingError>> {
        Box::pin(std::future::ready(Ok(())))
    }
}

/// A terminal to record: one SSH channel's shell or command.
#[derive(Debug, Clone)]
pub struct TerminalSpec {
    /// The SSH channel number, unique within the session.
    pub channel: u32,
    pub width: u32,
    pub height: u32,
    /// `TERM`, when the client asked for a PTY.
    pub term: Option<String>,
    /// The command, for exec channels.
    pub command: Option<String>,
}

/// Where a proxy streams a terminal's bytes, in the order they happened. Output and
/// input are raw bytes (not necessarily whole UTF-8 sequences). Each call waits (as
/// a future, never blocking a thread) while the recorder is behind, so a terminal
/// that outruns its recording slows down instead of losing any of it.
pub trait TerminalRecorder: Send + Sync {
    fn output<'a>(&'a self, data: &'a [u8]) -> BoxFuture<'a, Result<(), RecordingError>>;
    fn input<'a>(&'a self, data: &'a [u8]) -> BoxFuture<'a, Result<(), RecordingError>>;
    fn resize(&self, width: u32, height: u32) -> BoxFuture<'_, Result<(), RecordingError>>;
    /// Writes what is buffered, durably; the recording stays open.
    fn finish(&self) -> BoxFuture<'_, Result<(), RecordingError>>;
}

/// A recorder that keeps nothing, for proxies used without a gateway (tests, tools).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRecording;

impl SessionRecorder for NoRecording {
    fn record(&self, _event: TimelineEvent) -> BoxFuture<'_, Result<(), RecordingError>> {
        Box::pin(std::future::ready(Ok(())))
    }
    fn rows_per_result(&self) -> usize {
        0
    }
}

impl TerminalRecorder for NoRecording {
    fn output<'a>(&'a self, _data: &'a [u8]) -> BoxFuture<'a, Result<(), RecordingError>> {
        Box::pin(std::future::ready(Ok(())))
    }
    fn input<'a>(&'a self, _data: &'a [u8]) -> BoxFuture<'a, Result<(), RecordingError>> {
        Box::pin(std::future::ready(Ok(())))
    }
    fn resize(&self, _width: u32, _height: u32) -> BoxFuture<'_, Result<(), RecordingError>> {
        Box::pin(std::future::ready(Ok(())))
    }
    fn finish(&self) -> BoxFuture<'_, Result<(), RecordingError>> {
        Box::pin(std::future::ready(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_flat_json_lines_that_round_trip() {
        let e = TimelineEntry {
            t: 42,
            event: TimelineEvent::Statement {
                via: "Query".into(),
                sql: "SELECT 1".into(),
                decision: Decision::Deny {
                    rule: "r".into(),
                    reason: "no".into(),
                },
            },
        };
        let line = serde_json::to_string(&e).unwrap();
        assert!(line.starts_with(r#"{"t":42,"kind":"statement""#), "{line}");
        assert!(!line.contains('\n'));
        let back: TimelineEntry = serde_json::from_str(&line).unwrap();
        assert_eq!(back, e);
    }
}
