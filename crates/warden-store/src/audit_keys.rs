//! Where in the chain each subject's, connection's and session's events are: one
//! `audit_keys` row per value per append (a journal shipment holds up to thousands of
//! events), in place of an index entry per event for each of the three. Listing by
//! one of them reads only the stretches of the chain that hold it and filters their
//! rows exactly: a stretch may hold other values' events too, but every event of its
//! value lies in one of its value's stretches.
//!
//! Why: three B-tree entries per event were about 8,000 of the store's instructions
//! per statement at 8 clients of `pgbench -S` (see the README's benchmark), while a
//! shipment's few stretches cost nothing measurable. Time and kind keep their
//! per-event indexes: kinds are listed by prefix and times by range, which stretches
//! per value do not serve.

use std::collections::HashMap;

use sqlx::{AnyConnection, AnyPool, Row};
use uuid::Uuid;
use warden_core::Event;

use crate::util::values_placeholders;
use crate::{Result, StoreError};

/// Stretches per INSERT (three values each): well under either engine's limit on
/// bound parameters.
const INSERT_ROWS: usize = 256;

/// Stretches read per query while listing, and the ranges in each query of events.
/// Every query has exactly this many ranges (the last repeated), so one text per
/// filter shape is prepared; and SQLite, without statistics, reads up to about 16
/// OR'd ranges of its sequence index as ranges, but beyond that scans the whole index.
pub(crate) const PAGE: usize = 16;

/// A value an event can be listed by.
#[derive(Clone, Copy, Hash, PartialEq, Eq)]
enum Key<'a> {
    Subject(&'a str),
    Connection(&'a str),
    Session(Uuid),
}

impl Key<'_> {
    /// The text stored in `audit_keys.key`; the migration that made the table writes
    /// the same (`'s:' || subject`, ...).
    fn text(&self) -> String {
        match self {
            Key::Subject(s) => subject_key(s),
            Key::Connection(c) => connection_key(c),
            Key::Session(s) => session_key(*s),
        }
    }
}

pub(crate) fn subject_key(subject: &str) -> String {
    format!("s:{subject}")
}

pub(crate) fn connection_key(connection: &str) -> String {
    format!("c:{connection}")
}

pub(crate) fn session_key(session: impl std::fmt::Display) -> String {
    format!("x:{session}")
}

/// The stretches one append adds: per key, its first and last event's sequence
/// numbers among `rows` (in chain order).
pub(crate) fn stretches_of<'a>(
    rows: impl Iterator<Item = (i64, &'a Event)>,
) -> Vec<(String, i64, i64)> {
    let mut stretches: Vec<(Key<'a>, i64, i64)> = Vec::new();
    let mut at: HashMap<Key<'a>, usize> = HashMap::new();
    for (seq, event) in rows {
        let keys = [
            event
                .identity
                .as_ref()
                .map(|i| Key::Subject(i.subject.as_str())),
            event.connection.as_deref().map(Key::Connection),
            event.session_id.map(Key::Session),
        ];
        for key in keys.into_iter().flatten() {
            match at.get(&key) {
                Some(&i) => stretches[i].2 = seq,
                None => {
                    at.insert(key, stretches.len());
                    stretches.push((key, seq, seq));
                }
            }
        }
    }
    stretches
        .into_iter()
        .map(|(key, first, last)| (key.text(), first, last))
        .collect()
}

/// Stores `stretches` inside the append's transaction.
pub(crate) async fn insert(
    conn: &mut AnyConnection,
    stretches: &[(String, i64, i64)],
    sqlite: bool,
) -> Result<()> {
    // As for the chain's rows (`audit::insert_rows`): on SQLite, `OR IGNORE` spares a
    // statement journal; a skipped row is counted and fails the transaction.
    let verb = if sqlite { "INSERT OR IGNORE" } else { "INSERT" };
    for chunk in stretches.chunks(INSERT_ROWS) {
        let sql = format!(
            "{verb} INTO audit_keys (key, first_seq, last_seq) VALUES {}",
            values_placeholders(chunk.len(), 3, sqlite)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (key, first, last) in chunk {
            query = query.bind(key.as_str()).bind(*first).bind(*last);
        }
        let inserted = query.execute(&mut *conn).await?.rows_affected();
        if inserted != chunk.len() as u64 {
            return Err(StoreError::AppendFailed(format!(
                "{inserted} of {} audit stretches stored: the others start where one already does",
                chunk.len()
            )));
        }
    }
    Ok(())
}

/// The stretches of sequence numbers `lo..=hi` that hold one key, clipped to that
/// range, read a page at a time in chain order or newest first.
pub(crate) struct Stretches {
    key: String,
    lo: i64,
    hi: i64,
    newest_first: bool,
    /// Whether the stretch holding `lo` has been looked for (chain order only).
    started: bool,
    done: bool,
}

impl Stretches {
    pub(crate) fn new(key: String, lo: i64, hi: i64, newest_first: bool) -> Self {
        Self {
            key,
            lo,
            hi,
            newest_first,
            started: false,
            done: lo > hi,
        }
    }

    /// The next stretches, as inclusive `(first, last)` ranges; empty when there are
    /// no more.
    pub(crate) async fn next_page(&mut self, pool: &AnyPool) -> Result<Vec<(i64, i64)>> {
        if self.done {
            return Ok(Vec::new());
        }
        let page = if self.newest_first {
            self.newest_page(pool).await?
        } else {
            self.oldest_page(pool).await?
        };
        if page.is_empty() {
            self.done = true;
        }
        Ok(page)
    }

    async fn newest_page(&mut self, pool: &AnyPool) -> Result<Vec<(i64, i64)>> {
        let rows = sqlx::query(
            "SELECT first_seq, last_seq FROM audit_keys WHERE key = $1 AND first_seq <= $2 \
             ORDER BY first_seq DESC LIMIT $3",
        )
        .bind(&self.key)
        .bind(self.hi)
        .bind(PAGE as i64)
        .fetch_all(pool)
        .await?;
        let full = rows.len() == PAGE;
        let mut page = Vec::with_capacity(rows.len());
        for row in rows {
            let (first, last): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
            // Stretches of one key never overlap, so ends fall as starts do.
            if last < self.lo {
                self.done = true;
                break;
            }
            // One that does not end after it starts was not written by an append
            // (verification names it); the walk goes on past it either way.
            if first <= last {
                page.push((first.max(self.lo), last.min(self.hi)));
            }
            self.hi = self.hi.min(first.saturating_sub(1));
        }
        if !full {
            self.done = true;
        }
        Ok(page)
    }

    async fn oldest_page(&mut self, pool: &AnyPool) -> Result<Vec<(i64, i64)>> {
        let mut page = Vec::new();
        if !self.started {
            self.started = true;
            // The stretch that starts before `lo` and may reach past it.
            let holding = sqlx::query(
                "SELECT first_seq, last_seq FROM audit_keys WHERE key = $1 AND first_seq < $2 \
                 ORDER BY first_seq DESC LIMIT 1",
            )
            .bind(&self.key)
            .bind(self.lo)
            .fetch_optional(pool)
            .await?;
            if let Some(row) = holding {
                let last: i64 = row.try_get(1)?;
                if last >= self.lo {
                    page.push((self.lo, last.min(self.hi)));
                    self.lo = last.saturating_add(1);
                }
            }
        }
        if self.lo > self.hi {
            self.done = true;
            return Ok(page);
        }
        let rows = sqlx::query(
            "SELECT first_seq, last_seq FROM audit_keys WHERE key = $1 AND first_seq >= $2 \
             AND first_seq <= $3 ORDER BY first_seq LIMIT $4",
        )
        .bind(&self.key)
        .bind(self.lo)
        .bind(self.hi)
        .bind((PAGE - page.len()) as i64)
        .fetch_all(pool)
        .await?;
        if rows.len() < PAGE - page.len() {
            self.done = true;
        }
        for row in rows {
            let (first, last): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
            if first <= last {
                page.push((first, last.min(self.hi)));
            }
            // Never backwards, whatever the table holds: each page starts after the
            // one before.
            self.lo = self
                .lo
                .max(last.saturating_add(1))
                .max(first.saturating_add(1));
        }
        Ok(page)
    }
}

/// The stretches around a walk of the chain in order ([`Store::verify_audit`]): says
/// whether each event lies in a stretch of each of its values, so that the stretches
/// cannot hide an event from listing without verification noticing. Holds only the
/// stretches that reach the walk's position or the page ahead of it.
///
/// [`Store::verify_audit`]: crate::Store::verify_audit
#[derive(Default)]
pub(crate) struct Coverage {
    by_key: HashMap<String, std::collections::VecDeque<(i64, i64)>>,
    /// Stretches starting at or before this are loaded.
    loaded_to: Option<i64>,
}

impl Coverage {
    /// Loads the stretches that may hold events `from..=to`; calls come in chain
    /// order, `from` one past the previous call's `to`. Returns the first stretch an
    /// append could not have written (ending before it starts, or overlapping the
    /// one before it of its value: listing would skip events), as its start and why.
    pub(crate) async fn load(
        &mut self,
        pool: &AnyPool,
        from: i64,
        to: i64,
    ) -> Result<Option<(i64, String)>> {
        let rows = match self.loaded_to {
            // The first page: also the stretches that start before it and reach it
            // (archiving leaves only those before it).
            None => sqlx::query(
                "SELECT key, first_seq, last_seq FROM audit_keys \
                 WHERE first_seq <= $1 AND last_seq >= $2 ORDER BY first_seq",
            )
            .bind(to)
            .bind(from),
            Some(loaded) => sqlx::query(
                "SELECT key, first_seq, last_seq FROM audit_keys \
                 WHERE first_seq > $1 AND first_seq <= $2 ORDER BY first_seq",
            )
            .bind(loaded)
            .bind(to),
        }
        .fetch_all(pool)
        .await?;
        // Stretches that ended before this page can hold none of the walk's events
        // any more: memory follows the values active around the walk, not the log.
        self.by_key.retain(|_, stretches| {
            while stretches.front().is_some_and(|&(_, last)| last < from) {
                stretches.pop_front();
            }
            !stretches.is_empty()
        });
        self.loaded_to = Some(to);
        let mut malformed = None;
        for row in rows {
            let key: String = row.try_get(0)?;
            let (first, last): (i64, i64) = (row.try_get(1)?, row.try_get(2)?);
            let stretches = self.by_key.entry(key).or_default();
            // Rows come by start; a stretch behind the walk, dropped, ended before
            // this page, so only the newest kept one can overlap.
            let overlaps = stretches.back().is_some_and(|&(_, end)| first <= end);
            if (last < first || overlaps) && malformed.is_none() {
                malformed = Some((
                    first,
                    format!(
                        "the stretch {first}..{last} of one subject, connection or session \
                         (audit_keys) {}: listing by it would skip events",
                        if overlaps {
                            "overlaps the one before it"
                        } else {
                            "ends before it starts"
                        }
                    ),
                ));
            }
            if last >= first && !overlaps {
                stretches.push_back((first, last));
            }
        }
        Ok(malformed)
    }

    /// Whether the event at `seq`, with these values, lies in a stretch of each.
    pub(crate) fn covers(
        &mut self,
        seq: i64,
        subject: Option<&str>,
        connection: Option<&str>,
        session: Option<&str>,
    ) -> bool {
        let keys = [
            subject.map(subject_key),
            connection.map(connection_key),
            session.map(session_key),
        ];
        keys.into_iter()
            .flatten()
            .all(|key| self.covered(&key, seq))
    }

    fn covered(&mut self, key: &str, seq: i64) -> bool {
        let Some(stretches) = self.by_key.get_mut(key) else {
            return false;
        };
        // Stretches of one key are in order and never overlap: those ending before
        // `seq` are behind the walk for good.
        while stretches.front().is_some_and(|&(_, last)| last < seq) {
            stretches.pop_front();
        }
        let hit = stretches
            .front()
            .is_some_and(|&(first, last)| first <= seq && seq <= last);
        if stretches.is_empty() {
            self.by_key.remove(key);
        }
        hit
    }
}
