//! The append-only, hash-chained audit log.
//!
//! Each event is stored as canonical JSON (keys sorted, no whitespace) that includes
//! its sequence number and the previous event's hash; its own hash is SHA-256 of that
//! text. Altering, removing or reordering any stored event breaks the chain, and
//! [`Store::verify_audit`] names the first event where it breaks. A one-row
//! `audit_head` table holds the newest sequence number and hash: appending updates it
//! first, which takes the write lock that orders appends from every gateway, and lets
//! verification notice events removed from the end.

use serde::Serialize;
use serde_json::Value;
use sqlx::AnyConnection;
use sqlx::Row;
use sqlx::any::AnyRow;
use time::OffsetDateTime;
use uuid::Uuid;
use warden_core::{Event, timefmt};

use crate::audit_keys;
use crate::canonical::canonical_body;
use crate::chain_tx::ChainTx;
use crate::util::{sha256_hex, values_placeholders};
use crate::{Result, Store, StoreError};

/// The hash a chain starts from.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One stored event with its place in the chain.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub seq: i64,
    pub prev_hash: String,
    pub hash: String,
    pub event: Event,
}

/// What an append returns: where the event landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub seq: i64,
    pub hash: String,
}

/// Filters for listing events; all optional, combined with AND.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub since: Option<OffsetDateTime>,
    pub until: Option<OffsetDateTime>,
    pub subject: Option<String>,
    pub connection: Option<String>,
    /// An exact kind (`auth.failure`) or a prefix ending in `.` (`auth.`).
    pub kind: Option<String>,
    pub session_id: Option<Uuid>,
    /// Only events with a larger sequence number (for paging).
    pub after_seq: Option<i64>,
    /// Only events with a smaller sequence number (for paging back from the newest).
    pub before_seq: Option<i64>,
    /// The newest `limit` events, newest first (default: the oldest, oldest first).
    pub newest_first: bool,
    pub limit: i64,
}

/// The outcome of walking the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct VerifyReport {
    pub ok: bool,
    pub events_checked: i64,
    pub head_seq: i64,
    pub head_hash: String,
    /// The first place the chain is broken, when it is.
    pub problem: Option<ChainProblem>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ChainProblem {
    /// Sequence number of the event where the break was found.
    pub seq: i64,
    /// Its id, when the stored row still has one.
    pub event_id: Option<String>,
    pub reason: String,
}

const COLUMNS: &str =
    "seq, id, time_us, session_id, subject, connection, kind, body, prev_hash, hash";

impl Store {
    /// Appends an event durably and returns its place in the chain. Callers that
    /// must audit before acting treat an error here as "do not act".
    ///
    /// Appends that arrive while another is being written are committed together in
    /// the next transaction (group commit): one fsync for many events, each still
    /// durable before its caller proceeds, and all of a failed batch fail.
    pub async fn append_audit(&self, event: &Event) -> Result<Appended> {
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        self.pending().push((event.clone(), tx));
        let _serial = self.audit_lock.lock().await;
        // A batch written while we waited may have carried our event.
        if let Ok(result) = rx.try_recv() {
            return result;
        }
        self.write_pending().await;
        rx.await
            .unwrap_or_else(|_| Err(StoreError::AppendFailed("the append was lost".into())))
    }

    /// Chains `events` in one transaction (the audit journal's segments).
    pub async fn append_audit_batch(&self, events: &[Event]) -> Result<()> {
        let _serial = self.audit_lock.lock().await;
        let mut db = ChainTx::begin(&self.pool).await?;
        append_in(db.conn(), events.iter()).await?;
        db.commit().await?;
        self.chained();
        Ok(())
    }

    /// Which of `ids` are in the chain.
    pub async fn existing_audit_ids(
        &self,
        ids: &[uuid::Uuid],
    ) -> Result<std::collections::HashSet<uuid::Uuid>> {
        let mut found = std::collections::HashSet::new();
        for chunk in ids.chunks(256) {
            let params = (1..=chunk.len())
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ");
            let mut q = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT id FROM audit_events WHERE id IN ({params})"
            )));
            for id in chunk {
                q = q.bind(id.to_string());
            }
            for row in q.fetch_all(&self.pool).await? {
                let id: String = row.try_get("id")?;
                if let Ok(id) = id.parse() {
                    found.insert(id);
                }
            }
        }
        Ok(found)
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Vec<crate::PendingAppend>> {
        self.pending_audit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes the queued events in one transaction and answers their callers; with
    /// the audit lock held.
    async fn write_pending(&self) {
        let batch = std::mem::take(&mut *self.pending());
        if batch.is_empty() {
            return;
        }
        let written: Result<Vec<Appended>> = async {
            let mut db = ChainTx::begin(&self.pool).await?;
            let out = append_in(db.conn(), batch.iter().map(|(e, _)| e)).await?;
            db.commit().await?;
            self.chained();
            Ok(out)
        }
        .await;
        match written {
            Ok(appended) => {
                for ((_, reply), a) in batch.into_iter().zip(appended) {
                    let _ = reply.send(Ok(a));
                }
            }
            Err(e) => {
                let message = e.to_string();
                for (_, reply) in batch {
                    let _ = reply.send(Err(StoreError::AppendFailed(message.clone())));
                }
            }
        }
    }

    /// Lists events in chain order, filtered.
    pub async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>> {
        let limit = filter.limit.clamp(1, 10_000);
        // A session, subject or connection is found through its stretches of the
        // chain (see `audit_keys`), the session first: it has the fewest events.
        let key = match (&filter.session_id, &filter.subject, &filter.connection) {
            (Some(id), _, _) => audit_keys::session_key(*id),
            (None, Some(s), _) => audit_keys::subject_key(s),
            (None, None, Some(c)) => audit_keys::connection_key(c),
            (None, None, None) => return self.list_audit_in(filter, &[], limit).await,
        };
        let mut lo = filter.after_seq.map_or(i64::MIN, |s| s.saturating_add(1));
        let mut hi = filter.before_seq.map_or(i64::MAX, |s| s.saturating_sub(1));
        // A time range bounds the stretches worth reading: no event at or after
        // `since` comes before the first such event in the chain, and so on.
        if let Some(t) = filter.since {
            match self.seq_bound("MIN", ">=", t).await? {
                Some(first) => lo = lo.max(first),
                None => return Ok(Vec::new()),
            }
        }
        if let Some(t) = filter.until {
            match self.seq_bound("MAX", "<", t).await? {
                Some(last) => hi = hi.min(last),
                None => return Ok(Vec::new()),
            }
        }
        let mut stretches = audit_keys::Stretches::new(key, lo, hi, filter.newest_first);
        let mut entries = Vec::new();
        loop {
            // A page of stretches is one query: a value with many small stretches
            // and a filter that matches little in them is not a query per stretch.
            let page = stretches.next_page(&self.pool).await?;
            if page.is_empty() {
                return Ok(entries);
            }
            let left = limit - entries.len() as i64;
            entries.extend(self.list_audit_in(filter, &page, left).await?);
            if entries.len() as i64 >= limit {
                return Ok(entries);
            }
        }
    }

    /// The `MIN` or `MAX` sequence number of the events whose time is `>=` or `<`
    /// `time`; `None` when there are none.
    async fn seq_bound(
        &self,
        aggregate: &str,
        compare: &str,
        time: OffsetDateTime,
    ) -> Result<Option<i64>> {
        let sql =
            format!("SELECT {aggregate}(seq) AS seq FROM audit_events WHERE time_us {compare} $1");
        Ok(sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(timefmt::to_micros(time))
            .fetch_one(&self.pool)
            .await?
            .try_get("seq")?)
    }

    /// [`Store::list_audit`] within the sequence numbers of `stretches` (inclusive
    /// ranges, in the listing's order; none: anywhere), at most `limit` events.
    async fn list_audit_in(
        &self,
        filter: &AuditFilter,
        stretches: &[(i64, i64)],
        limit: i64,
    ) -> Result<Vec<AuditEntry>> {
        let mut sql = format!("SELECT {COLUMNS} FROM audit_events WHERE 1 = 1");
        let mut args: Vec<Arg> = Vec::new();
        let mut push = |clause: &str, arg: Arg, sql: &mut String| {
            args.push(arg);
            sql.push_str(&clause.replace('?', &format!("${}", args.len())));
        };
        // Within stretches, SQLite must read the stretches, not the whole of a kind
        // or a time range through their indexes (it has no statistics to tell which
        // is smaller): a unary `+` keeps it off them. PostgreSQL plans by statistics.
        let (time_us, kind) = if !stretches.is_empty() && self.backend == crate::Backend::Sqlite {
            ("+time_us", "+kind")
        } else {
            ("time_us", "kind")
        };
        if let Some(t) = filter.since {
            push(
                &format!(" AND {time_us} >= ?"),
                Arg::Int(timefmt::to_micros(t)),
                &mut sql,
            );
        }
        if let Some(t) = filter.until {
            push(
                &format!(" AND {time_us} < ?"),
                Arg::Int(timefmt::to_micros(t)),
                &mut sql,
            );
        }
        if let Some(s) = &filter.subject {
            push(" AND subject = ?", Arg::Text(s.clone()), &mut sql);
        }
        if let Some(c) = &filter.connection {
            push(" AND connection = ?", Arg::Text(c.clone()), &mut sql);
        }
        if let Some(k) = &filter.kind {
            if let Some(prefix) = k.strip_suffix('.') {
                // Prefix match without LIKE, so `_` and `%` in kinds mean nothing special.
                let lower = format!("{prefix}.");
                let upper = format!("{prefix}/"); // '/' sorts right after '.'
                push(&format!(" AND {kind} >= ?"), Arg::Text(lower), &mut sql);
                push(&format!(" AND {kind} < ?"), Arg::Text(upper), &mut sql);
            } else {
                push(&format!(" AND {kind} = ?"), Arg::Text(k.clone()), &mut sql);
            }
        }
        if let Some(id) = filter.session_id {
            push(" AND session_id = ?", Arg::Text(id.to_string()), &mut sql);
        }
        if let Some(seq) = filter.after_seq {
            push(" AND seq > ?", Arg::Int(seq), &mut sql);
        }
        if let Some(seq) = filter.before_seq {
            push(" AND seq < ?", Arg::Int(seq), &mut sql);
        }
        if let Some(&padding) = stretches.last() {
            // Always `PAGE` ranges: see `audit_keys::PAGE`.
            let ranges = stretches.iter().chain(std::iter::repeat(&padding));
            for (i, &(first, last)) in ranges
                .take(audit_keys::PAGE.max(stretches.len()))
                .enumerate()
            {
                let open = if i == 0 { " AND ((" } else { " OR (" };
                push(&format!("{open}seq >= ?"), Arg::Int(first), &mut sql);
                push(" AND seq <= ?)", Arg::Int(last), &mut sql);
            }
            sql.push(')');
        }
        let order = if filter.newest_first {
            " ORDER BY seq DESC LIMIT ?"
        } else {
            " ORDER BY seq LIMIT ?"
        };
        push(order, Arg::Int(limit), &mut sql);
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
        for arg in args {
            query = match arg {
                Arg::Int(i) => query.bind(i),
                Arg::Text(s) => query.bind(s),
            };
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(entry_from_row).collect()
    }

    /// Walks the whole chain and reports the first event that was altered, removed
    /// or reordered. Reads in pages so memory stays flat on large logs.
    pub async fn verify_audit(&self) -> Result<VerifyReport> {
        self.verify_audit_in(None).await
    }

    /// [`Self::verify_audit`], starting with the archives in `archives` (the chain's
    /// oldest part, moved out of the store).
    pub async fn verify_audit_in(
        &self,
        archives: Option<&std::path::Path>,
    ) -> Result<VerifyReport> {
        // Archiving moves events from the store into a file between reading the
        // archive list and reading the store: a problem found while the list changed
        // is checked again against the new list, so an archive commit is not taken
        // for a removal.
        let mut attempts = 0;
        loop {
            let listed = self.audit_archives().await?;
            let report = self.verify_audit_once(archives).await?;
            attempts += 1;
            if report.ok || attempts >= 10 || self.audit_archives().await? == listed {
                return Ok(report);
            }
        }
    }

    async fn verify_audit_once(&self, archives: Option<&std::path::Path>) -> Result<VerifyReport> {
        let head = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        let head_seq: i64 = head.try_get("seq")?;
        let head_hash: String = head.try_get("hash")?;
        let mut report = VerifyReport {
            ok: true,
            events_checked: 0,
            head_seq,
            head_hash: head_hash.clone(),
            problem: None,
        };
        // The chain as of the head read above: events appended while this runs
        // (shipping goes on) are beyond it and left to the next verification. The
        // head and its event are written in one transaction, so every event up to it
        // is visible now.
        let archived = match self.check_archives(archives).await? {
            Ok(part) => part,
            Err(problem) => {
                report.ok = false;
                report.problem = Some(problem);
                return Ok(report);
            }
        };
        report.events_checked = i64::try_from(archived.events).unwrap_or(i64::MAX);
        let archived_damage = archived.journal_damaged;
        let mut expected_seq = archived.next_seq;
        let mut prev_hash = archived.prev_hash;
        let mut coverage = audit_keys::Coverage::default();
        // The first event listing by a value would not show: reported when the chain
        // itself is intact (a broken chain is the graver news), after walking it all.
        let mut hidden: Option<ChainProblem> = None;
        loop {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM audit_events WHERE seq >= $1 AND seq <= $2 \
                 ORDER BY seq LIMIT 1000"
            )))
            .bind(expected_seq)
            .bind(head_seq)
            .fetch_all(&self.pool)
            .await?;
            let Some(last) = rows.last() else {
                break;
            };
            let malformed = coverage
                .load(&self.pool, expected_seq, last.try_get("seq")?)
                .await?;
            if hidden.is_none()
                && let Some((seq, reason)) = malformed
            {
                hidden = Some(ChainProblem {
                    seq,
                    event_id: None,
                    reason,
                });
            }
            for row in &rows {
                if let Some(problem) = check_row(row, expected_seq, &prev_hash)? {
                    report.ok = false;
                    report.problem = Some(problem);
                    return Ok(report);
                }
                if hidden.is_none() {
                    hidden = uncovered(row, &mut coverage)?;
                }
                report.events_checked += 1;
                prev_hash = row.try_get("hash")?;
                expected_seq += 1;
            }
        }
        let last_seq = expected_seq - 1;
        // Rows past any head are forged: the newest row is read before the head, so
        // an honest append in between only moves the head further.
        if last_seq == head_seq && prev_hash == head_hash {
            let newest: Option<i64> = sqlx::query("SELECT MAX(seq) AS seq FROM audit_events")
                .fetch_one(&self.pool)
                .await?
                .try_get("seq")?;
            let now_head: i64 = sqlx::query("SELECT seq FROM audit_head WHERE id = 1")
                .fetch_one(&self.pool)
                .await?
                .try_get("seq")?;
            // A journal found damaged at some start means events may be missing from
            // an intact chain: verification keeps saying so.
            let in_store = sqlx::query(
                "SELECT seq, id FROM audit_events WHERE kind = 'audit.journal_damaged' AND seq <= $1 \
                 ORDER BY seq DESC LIMIT 1",
            )
            .bind(head_seq)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| -> Result<(i64, Option<String>)> {
                Ok((row.try_get("seq")?, Some(row.try_get("id")?)))
            })
            .transpose()?;
            if let Some((seq, id)) = in_store.or(archived_damage.map(|s| (s, None))) {
                report.ok = false;
                report.problem = Some(ChainProblem {
                    seq,
                    event_id: id,
                    reason: format!(
                        "the chain is intact, but the audit journal was found damaged (event {seq}, audit.journal_damaged): events may be missing from the record"
                    ),
                });
            }
            if report.ok
                && let Some(problem) = hidden
            {
                report.ok = false;
                report.problem = Some(problem);
            }
            if let Some(newest) = newest.filter(|n| *n > now_head) {
                report.ok = false;
                report.problem = Some(ChainProblem {
                    seq: now_head + 1,
                    event_id: None,
                    reason: format!(
                        "events {} to {newest} lie beyond the chain head ({now_head}): they were added outside the chain",
                        now_head + 1
                    ),
                });
            }
            return Ok(report);
        }
        if last_seq != head_seq || prev_hash != head_hash {
            report.ok = false;
            report.problem = Some(ChainProblem {
                seq: last_seq + 1,
                event_id: None,
                reason: if last_seq < head_seq {
                    format!(
                        "events {} to {head_seq} were removed (the chain head records {head_seq} events)",
                        last_seq + 1
                    )
                } else {
                    "the chain head does not match the last event".to_string()
                },
            });
        }
        Ok(report)
    }
}

/// A transaction whose commit appends an audit event: the state change and its
/// record land together or not at all. Holds the in-process append lock throughout.
pub(crate) struct AuditedTx<'a> {
    _serial: tokio::sync::MutexGuard<'a, ()>,
    tx: ChainTx,
    chained: &'a tokio::sync::watch::Sender<u64>,
}

impl AuditedTx<'_> {
    pub(crate) fn conn(&mut self) -> &mut AnyConnection {
        self.tx.conn()
    }

    /// Appends `events` (none: only commits) and commits.
    pub(crate) async fn commit_with_all(mut self, events: &[Event]) -> Result<()> {
        append_in(self.tx.conn(), events.iter()).await?;
        self.tx.commit().await?;
        if !events.is_empty() {
            self.chained.send_modify(|n| *n = n.wrapping_add(1));
        }
        Ok(())
    }

    /// Appends `event` and commits.
    pub(crate) async fn commit_with(mut self, event: &Event) -> Result<Appended> {
        let appended = append_in(self.tx.conn(), std::iter::once(event)).await?;
        self.tx.commit().await?;
        self.chained.send_modify(|n| *n = n.wrapping_add(1));
        appended
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::AppendFailed("nothing was appended".into()))
    }

    /// Appends `event` and commits when the statement before it changed `rows` rows;
    /// otherwise rolls back, records nothing and says so with `false`.
    pub(crate) async fn commit_if_changed(self, rows: u64, event: &Event) -> Result<bool> {
        if rows == 0 {
            self.tx.rollback().await?;
            return Ok(false);
        }
        self.commit_with(event).await?;
        Ok(true)
    }
}

impl Store {
    /// Tells event delivery that the chain grew.
    pub(crate) fn chained(&self) {
        self.chained.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Changes whenever events are chained in this process (others' appends, in a
    /// shared store, are seen by polling).
    pub fn chain_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.chained.subscribe()
    }

    /// The sequence number of the newest chained event.
    pub async fn audit_head_seq(&self) -> Result<i64> {
        let row = sqlx::query("SELECT seq FROM audit_head WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("seq")?)
    }

    pub(crate) async fn begin_audited(&self) -> Result<AuditedTx<'_>> {
        let serial = self.audit_lock.lock().await;
        let tx = ChainTx::begin(&self.pool).await?;
        Ok(AuditedTx {
            _serial: serial,
            tx,
            chained: &self.chained,
        })
    }
}

/// Rows per INSERT at most on PostgreSQL; see [`APPEND_BYTES`] for what limits them.
const PG_APPEND_ROWS: usize = 16;

/// Bytes of bound values per INSERT at most on PostgreSQL (one row may exceed it
/// alone). A bigger message crosses a TLS record: sqlx writes each record with its own
/// `send` on a socket without `TCP_NODELAY`, and the second one waits for the server's
/// delayed ACK (40 ms on Linux) — measured as 90 ms per 64-event shipment to PostgreSQL.
const APPEND_BYTES: usize = 12 * 1024;

/// Rows per INSERT at most on SQLite. Each INSERT is a round trip to sqlx's worker
/// thread for the connection (a channel send and a wake-up each way), and anonymous
/// `?` parameters cost nothing to look up, so fewer, bigger INSERTs save CPU: up to 128
/// rows instead of 16 (and no copies of the bound strings) took the store benchmark
/// (`scripts/bench-store.sh`) from 19–20 to 13–15 µs of CPU per chained event, three
/// alternating runs each. Chunks are powers of two, so that at most eight INSERT texts
/// are ever prepared (sqlx caches 100 statements per connection).
const SQLITE_APPEND_ROWS: usize = 128;

/// How many of `rest` (not empty) the next INSERT takes.
fn next_chunk(rest: &[ChainRow<'_>], sqlite: bool) -> usize {
    if sqlite {
        let n = rest.len().clamp(1, SQLITE_APPEND_ROWS);
        return 1 << n.ilog2();
    }
    let mut take = 0;
    let mut bytes = 0;
    while take < rest.len().min(PG_APPEND_ROWS) {
        let size = rest[take].bytes();
        if take > 0 && bytes + size > APPEND_BYTES {
            break;
        }
        bytes += size;
        take += 1;
    }
    take.max(1)
}

/// Chains `events` after the current head, inside the caller's transaction (so a
/// state change and its audit record commit together or not at all): the head is
/// claimed once, rows go in as few INSERTs as [`next_chunk`] allows, and the head's
/// hash is set last. Callers hold `Store::audit_lock`.
pub(crate) async fn append_in<'a>(
    conn: &mut AnyConnection,
    events: impl ExactSizeIterator<Item = &'a Event>,
) -> Result<Vec<Appended>> {
    let n = i64::try_from(events.len())
        .map_err(|_| StoreError::AppendFailed("batch too large".into()))?;
    if n == 0 {
        return Ok(Vec::new());
    }
    // Claiming the sequence numbers first takes the row (PostgreSQL) or database
    // (SQLite) write lock, so concurrent appenders, in any gateway, queue here. The
    // head's hash is not changed yet, so it is the previous event's.
    let head = sqlx::query("UPDATE audit_head SET seq = seq + $1 WHERE id = 1 RETURNING seq, hash")
        .bind(n)
        .fetch_one(&mut *conn)
        .await?;
    let last: i64 = head.try_get("seq")?;
    let mut prev_hash: String = head.try_get("hash")?;
    let mut rows = Vec::with_capacity(events.len());
    for (i, event) in (last - n + 1..).zip(events) {
        let body = canonical_body(i, &prev_hash, event)?;
        let hash = sha256_hex(body.as_bytes());
        rows.push(ChainRow {
            seq: i,
            event,
            body,
            prev_hash: std::mem::replace(&mut prev_hash, hash.clone()),
            hash,
        });
    }
    let appended = rows
        .iter()
        .map(|r| Appended {
            seq: r.seq,
            hash: r.hash.clone(),
        })
        .collect();
    let sqlite = conn.backend_name() == "SQLite";
    let stretches = audit_keys::stretches_of(rows.iter().map(|r| (r.seq, r.event)));
    let mut rows = rows.into_iter();
    while rows.len() > 0 {
        let take = next_chunk(rows.as_slice(), sqlite);
        insert_rows(conn, rows.by_ref().take(take).collect()).await?;
    }
    audit_keys::insert(conn, &stretches, sqlite).await?;
    sqlx::query("UPDATE audit_head SET hash = $1 WHERE id = 1")
        .bind(&prev_hash)
        .execute(&mut *conn)
        .await?;
    Ok(appended)
}

/// One event with its place in the chain, ready to insert.
struct ChainRow<'a> {
    seq: i64,
    event: &'a Event,
    body: String,
    prev_hash: String,
    hash: String,
}

impl ChainRow<'_> {
    /// About what its bound values weigh on the wire.
    fn bytes(&self) -> usize {
        // The body holds every column's text once more; ids, hashes and numbers.
        self.body.len() * 2 + 200
    }
}

async fn insert_rows(conn: &mut AnyConnection, rows: Vec<ChainRow<'_>>) -> Result<()> {
    let sqlite = conn.backend_name() == "SQLite";
    let values = values_placeholders(rows.len(), 10, sqlite);
    // A multi-row INSERT that may abort halfway makes SQLite copy each page it
    // touches again into a statement journal, to undo just that statement: an eighth
    // of the cost of chaining an event. With `OR IGNORE` a constraint conflict does
    // not abort it; a row it skipped (its seq or id already stored or repeated in
    // the batch: only a bug or a tampered store) is counted below, and the error
    // rolls the whole transaction back instead. Other failures inside the INSERT (a
    // full disk) now end the whole transaction in SQLite: see `ChainTx`.
    let verb = if sqlite { "INSERT OR IGNORE" } else { "INSERT" };
    let sql = format!("{verb} INTO audit_events ({COLUMNS}) VALUES {values}");
    let mut insert = sqlx::query(sqlx::AssertSqlSafe(sql));
    let count = rows.len();
    for row in rows {
        let event = row.event;
        insert = insert
            .bind(row.seq)
            .bind(event.id.to_string())
            .bind(timefmt::to_micros(event.time))
            .bind(event.session_id.map(|s| s.to_string()))
            .bind(event.identity.as_ref().map(|i| i.subject.as_str()))
            .bind(event.connection.as_deref())
            .bind(event.kind.as_str())
            .bind(row.body)
            .bind(row.prev_hash)
            .bind(row.hash);
    }
    let inserted = insert.execute(&mut *conn).await?.rows_affected();
    if inserted != count as u64 {
        return Err(StoreError::AppendFailed(format!(
            "{inserted} of {count} audit events stored: the others' sequence numbers or ids are already in the chain"
        )));
    }
    Ok(())
}

enum Arg {
    Int(i64),
    Text(String),
}

/// A problem when `row` (checked by [`check_row`]) lies outside the stretches of its
/// subject, connection or session: listing by them would not show it.
fn uncovered(row: &AnyRow, coverage: &mut audit_keys::Coverage) -> Result<Option<ChainProblem>> {
    let seq: i64 = row.try_get("seq")?;
    let subject: Option<String> = row.try_get("subject")?;
    let connection: Option<String> = row.try_get("connection")?;
    let session: Option<String> = row.try_get("session_id")?;
    if coverage.covers(
        seq,
        subject.as_deref(),
        connection.as_deref(),
        session.as_deref(),
    ) {
        return Ok(None);
    }
    Ok(Some(ChainProblem {
        seq,
        event_id: Some(row.try_get("id")?),
        reason: "event is missing from the stretches its subject, connection or session is \
                 listed by (audit_keys): listing by them would not show it"
            .into(),
    }))
}

/// Checks one stored row against its expected place in the chain.
fn check_row(row: &AnyRow, expected_seq: i64, prev_hash: &str) -> Result<Option<ChainProblem>> {
    let seq: i64 = row.try_get("seq")?;
    let id: String = row.try_get("id")?;
    let problem = |seq: i64, reason: String| {
        Ok(Some(ChainProblem {
            seq,
            event_id: Some(id.clone()),
            reason,
        }))
    };
    if seq != expected_seq {
        return problem(
            seq,
            format!("event {expected_seq} is missing (next stored event is {seq})"),
        );
    }
    let body: String = row.try_get("body")?;
    let stored_hash: String = row.try_get("hash")?;
    if sha256_hex(body.as_bytes()) != stored_hash {
        return problem(
            seq,
            "event content was altered: it no longer matches its hash".into(),
        );
    }
    let stored_prev: String = row.try_get("prev_hash")?;
    if stored_prev != prev_hash {
        return problem(
            seq,
            format!(
                "chain broken: previous-hash does not match event {}; an event was altered, removed or reordered",
                seq - 1
            ),
        );
    }
    let parsed: Value = match serde_json::from_str(&body) {
        Ok(v) => v,
        Err(_) => return problem(seq, "event content is not valid JSON".into()),
    };
    if parsed.get("seq").and_then(Value::as_i64) != Some(seq)
        || parsed.get("prev_hash").and_then(Value::as_str) != Some(prev_hash)
    {
        return problem(
            seq,
            "event was moved: its signed position differs from where it is stored".into(),
        );
    }
    // The indexed columns are copies of signed fields; a mismatch means someone edited
    // a column to change what filters return.
    let event: Event = match serde_json::from_value(parsed) {
        Ok(e) => e,
        Err(_) => return problem(seq, "event content does not decode".into()),
    };
    let columns_match = event.id.to_string() == id
        && timefmt::to_micros(event.time) == row.try_get::<i64, _>("time_us")?
        && event.kind == row.try_get::<String, _>("kind")?
        && event.session_id.map(|s| s.to_string())
            == row.try_get::<Option<String>, _>("session_id")?
        && event.identity.as_ref().map(|i| i.subject.clone())
            == row.try_get::<Option<String>, _>("subject")?
        && event.connection == row.try_get::<Option<String>, _>("connection")?;
    if !columns_match {
        return problem(
            seq,
            "an indexed column was altered: it differs from the signed content".into(),
        );
    }
    Ok(None)
}

fn entry_from_row(row: &AnyRow) -> Result<AuditEntry> {
    let body: String = row.try_get("body")?;
    let event: Event = serde_json::from_str(&body)
        .map_err(|e| StoreError::Corrupt(format!("audit event body: {e}")))?;
    Ok(AuditEntry {
        seq: row.try_get("seq")?,
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
        event,
    })
}
