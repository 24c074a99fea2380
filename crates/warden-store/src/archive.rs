//! Keeping the audit chain's size in bounds: its oldest part is moved into archive
//! files (zstd-compressed JSON lines, one file per range: a header with the range's
//! first and last sequence numbers, the hash it continues from and its last hash,
//! then each event's stored body and hash) and removed from the store, in one
//! audited step (`audit.archive`, naming the file and its SHA-256). Verification
//! walks the archives, then the store, as one chain: a missing, altered or
//! substituted archive, or one the store no longer lists, is reported.

use serde::{Deserialize, Serialize};
use sqlx::Row;
use std::io::Write;
use std::path::{Path, PathBuf};
use warden_core::{Event, timefmt};

use crate::audit::{ChainProblem, GENESIS_HASH};
use crate::util::sha256_hex;
use crate::{Result, Store, StoreError};

/// What one archive file says about itself (its first line).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Header {
    first_seq: i64,
    last_seq: i64,
    /// The hash the range continues from (the previous event's, or the genesis).
    prev_hash: String,
    last_hash: String,
    count: i64,
}

/// One archived event: its stored body (canonical JSON, which holds its `seq` and
/// `prev_hash`) and its hash.
#[derive(Serialize, Deserialize)]
struct Line {
    seq: i64,
    hash: String,
    body: String,
}

/// An archive as the store lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArchiveInfo {
    pub first_seq: i64,
    pub last_seq: i64,
    pub file: String,
    pub file_sha256: String,
}

fn archive_name(first: i64, last: i64) -> String {
    format!("audit-{first:020}-{last:020}.jsonl.zst")
}

fn io(what: &str, e: std::io::Error) -> StoreError {
    StoreError::AppendFailed(format!("audit archive: {what}: {e}"))
}

/// What the archives checked so far say: where the store's part of the chain must
/// continue.
pub(crate) struct ArchivedPart {
    pub next_seq: i64,
    pub prev_hash: String,
    pub events: u64,
    /// The last archived `audit.journal_damaged` event, if any: the record stays
    /// known to be incomplete after it is archived.
    pub journal_damaged: Option<i64>,
}

impl Store {
    /// Archives listed in the store, oldest first.
    pub async fn audit_archives(&self) -> Result<Vec<ArchiveInfo>> {
        let rows = sqlx::query(
            "SELECT first_seq, last_seq, file, file_sha256 FROM audit_archives ORDER BY first_seq",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ArchiveInfo {
                    first_seq: r.try_get("first_seq")?,
                    last_seq: r.try_get("last_seq")?,
                    file: r.try_get("file")?,
                    file_sha256: r.try_get("file_sha256")?,
                })
            })
            .collect()
    }

    /// Moves the oldest events into an archive file in `dir` so that at most `keep`
    /// stay in the store (at most `max_events` per file). Returns the archive made,
    /// if anything was old enough. The chain must be intact up to there: a broken
    /// range is not archived (verification reports it).
    pub async fn archive_audit(
        &self,
        dir: &Path,
        keep: u64,
        max_events: u64,
    ) -> Result<Option<ArchiveInfo>> {
        let head: i64 = sqlx::query("SELECT seq FROM audit_head WHERE id = 1")
            .fetch_one(&self.pool)
            .await?
            .try_get("seq")?;
        let oldest: Option<i64> = sqlx::query("SELECT MIN(seq) AS seq FROM audit_events")
            .fetch_one(&self.pool)
            .await?
            .try_get("seq")?;
        let Some(oldest) = oldest else {
            return Ok(None);
        };
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        let max_events = i64::try_from(max_events.max(1)).unwrap_or(i64::MAX);
        let last = (head - keep).min(oldest + max_events - 1);
        // Each archive adds its own event: ranges too small to be worth a file (a
        // tenth of what is kept, or a full file) wait, so archiving converges.
        let worth = (keep / 10 + 1).min(max_events);
        if last - oldest + 1 < worth {
            return Ok(None);
        }
        let prev_hash =
            match sqlx::query("SELECT last_hash FROM audit_archives WHERE last_seq = $1")
                .bind(oldest - 1)
                .fetch_optional(&self.pool)
                .await?
            {
                Some(r) => r.try_get::<String, _>("last_hash")?,
                None if oldest == 1 => GENESIS_HASH.to_string(),
                None => {
                    return Err(StoreError::Corrupt(format!(
                        "events before {oldest} are neither in the store nor in a listed archive"
                    )));
                }
            };
        let rows = sqlx::query(
            "SELECT seq, body, hash FROM audit_events WHERE seq >= $1 AND seq <= $2 ORDER BY seq",
        )
        .bind(oldest)
        .bind(last)
        .fetch_all(&self.pool)
        .await?;
        let mut lines = Vec::with_capacity(rows.len());
        let mut prev = prev_hash.clone();
        for (expected, row) in (oldest..).zip(rows.iter()) {
            let line = Line {
                seq: row.try_get("seq")?,
                body: row.try_get("body")?,
                hash: row.try_get("hash")?,
            };
            if let Some(why) = check_line(&line, expected, &prev) {
                return Err(StoreError::Corrupt(format!(
                    "not archiving a broken chain: {}",
                    why.reason
                )));
            }
            prev.clone_from(&line.hash);
            lines.push(line);
        }
        let header = Header {
            first_seq: oldest,
            last_seq: last,
            prev_hash,
            last_hash: prev,
            count: i64::try_from(lines.len()).unwrap_or(i64::MAX),
        };
        let file = archive_name(oldest, last);
        let bytes = write_archive(dir, &file, &header, &lines)?;
        let info = ArchiveInfo {
            first_seq: oldest,
            last_seq: last,
            file: file.clone(),
            file_sha256: sha256_hex(&bytes),
        };
        let event = Event::new(
            "audit.archive",
            serde_json::json!({"first_seq": oldest, "last_seq": last, "events": header.count,
                               "file": file, "file_sha256": info.file_sha256,
                               "last_hash": header.last_hash}),
        );
        let mut tx = self.begin_audited().await?;
        sqlx::query(
            "INSERT INTO audit_archives (first_seq, last_seq, prev_hash, last_hash, file, file_sha256, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(oldest)
        .bind(last)
        .bind(&header.prev_hash)
        .bind(&header.last_hash)
        .bind(&info.file)
        .bind(&info.file_sha256)
        .bind(timefmt::to_micros(timefmt::now()))
        .execute(tx.conn())
        .await?;
        sqlx::query("DELETE FROM audit_events WHERE seq >= $1 AND seq <= $2")
            .bind(oldest)
            .bind(last)
            .execute(tx.conn())
            .await?;
        // Stretches that end in the archive point at nothing now (one that reaches
        // past it stays: its later events are still here).
        sqlx::query("DELETE FROM audit_keys WHERE first_seq <= $1 AND last_seq <= $1")
            .bind(last)
            .execute(tx.conn())
            .await?;
        tx.commit_with(&event).await?;
        Ok(Some(info))
    }

    /// Walks the archives the store lists (in `dir`) as the start of the chain.
    pub(crate) async fn check_archives(
        &self,
        dir: Option<&Path>,
    ) -> Result<std::result::Result<ArchivedPart, ChainProblem>> {
        let archives = self.audit_archives().await?;
        let mut part = ArchivedPart {
            next_seq: 1,
            prev_hash: GENESIS_HASH.to_string(),
            events: 0,
            journal_damaged: None,
        };
        if archives.is_empty() {
            return Ok(Ok(part));
        }
        let Some(dir) = dir else {
            return Ok(Err(ChainProblem {
                seq: 1,
                event_id: None,
                reason: format!(
                    "events 1 to {} are archived in files, and no archive directory was given to check them",
                    archives.last().map_or(0, |a| a.last_seq)
                ),
            }));
        };
        for a in archives {
            if a.first_seq != part.next_seq {
                return Ok(Err(ChainProblem {
                    seq: part.next_seq,
                    event_id: None,
                    reason: format!(
                        "events {} to {} are in no listed archive",
                        part.next_seq,
                        a.first_seq - 1
                    ),
                }));
            }
            let problem = |reason: String| {
                Ok(Err(ChainProblem {
                    seq: a.first_seq,
                    event_id: None,
                    reason,
                }))
            };
            let path: PathBuf = dir.join(&a.file);
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) => {
                    return problem(format!(
                        "archive {} (events {} to {}) cannot be read: {e}",
                        a.file, a.first_seq, a.last_seq
                    ));
                }
            };
            if sha256_hex(&bytes) != a.file_sha256 {
                return problem(format!(
                    "archive {} was altered: its SHA-256 is not the one recorded when it was made",
                    a.file
                ));
            }
            let text = match zstd::decode_all(&bytes[..]) {
                Ok(t) => t,
                Err(e) => return problem(format!("archive {} does not decompress: {e}", a.file)),
            };
            let mut lines = text.split(|b| *b == b'\n').filter(|l| !l.is_empty());
            let header: Option<Header> = lines.next().and_then(|l| serde_json::from_slice(l).ok());
            let Some(header) = header.filter(|h| {
                h.first_seq == a.first_seq
                    && h.last_seq == a.last_seq
                    && h.prev_hash == part.prev_hash
            }) else {
                return problem(format!(
                    "archive {} does not continue the chain where the one before it ended",
                    a.file
                ));
            };
            let mut expected = a.first_seq;
            let mut prev = part.prev_hash.clone();
            for raw in lines {
                let Ok(line) = serde_json::from_slice::<Line>(raw) else {
                    return problem(format!("archive {}: a line does not decode", a.file));
                };
                if let Some(p) = check_line(&line, expected, &prev) {
                    return Ok(Err(p));
                }
                if line.body.contains("\"kind\":\"audit.journal_damaged\"") {
                    part.journal_damaged = Some(line.seq);
                }
                prev = line.hash;
                expected += 1;
            }
            if expected != a.last_seq + 1 || prev != header.last_hash {
                return problem(format!(
                    "archive {} ends at event {} with another hash than its header says",
                    a.file,
                    expected - 1
                ));
            }
            part.events += u64::try_from(a.last_seq - a.first_seq + 1).unwrap_or(0);
            part.next_seq = expected;
            part.prev_hash = prev;
        }
        Ok(Ok(part))
    }
}

/// Checks one archived event against its place in the chain.
fn check_line(line: &Line, expected: i64, prev_hash: &str) -> Option<ChainProblem> {
    let problem = |reason: String| {
        Some(ChainProblem {
            seq: line.seq,
            event_id: None,
            reason,
        })
    };
    if line.seq != expected {
        return problem(format!(
            "event {expected} is missing (next is {})",
            line.seq
        ));
    }
    if sha256_hex(line.body.as_bytes()) != line.hash {
        return problem("archived event content was altered: it no longer matches its hash".into());
    }
    let Ok(parsed) = serde_json::from_str::<serde_json::Value>(&line.body) else {
        return problem("an archived event is not valid JSON".into());
    };
    if parsed.get("seq").and_then(serde_json::Value::as_i64) != Some(expected)
        || parsed.get("prev_hash").and_then(serde_json::Value::as_str) != Some(prev_hash)
    {
        return problem(
            "chain broken in an archive: an event was altered, removed or reordered".into(),
        );
    }
    None
}

/// Writes an archive file durably (a temporary name, synced, then renamed) and
/// returns its bytes.
fn write_archive(dir: &Path, file: &str, header: &Header, lines: &[Line]) -> Result<Vec<u8>> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .map_err(|e| io("creating its directory", e))?;
    let mut plain = serde_json::to_vec(header)?;
    plain.push(b'\n');
    for l in lines {
        plain.extend(serde_json::to_vec(l)?);
        plain.push(b'\n');
    }
    let bytes = zstd::encode_all(&plain[..], 9).map_err(|e| io("compressing", e))?;
    let tmp = dir.join(format!("{file}.tmp"));
    let mut options = std::fs::OpenOptions::new();
    options.create(true).truncate(true).write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(&tmp).map_err(|e| io("creating a file", e))?;
    f.write_all(&bytes).map_err(|e| io("writing", e))?;
    f.sync_all().map_err(|e| io("syncing", e))?;
    std::fs::rename(&tmp, dir.join(file)).map_err(|e| io("naming", e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("syncing its directory", e))?;
    Ok(bytes)
}
