//! Listing the audit log by subject, connection or session goes through the chain's
//! stretches (`audit_keys`), on both engines: every combination of filters, paging
//! and order must give exactly what filtering the whole log gives, for events chained
//! in appends of many sizes and for stretches written by the migration that
//! introduced them (events stored before it). Verification notices a stretch that
//! would hide an event.

use serde_json::json;
use uuid::Uuid;
use warden_core::{AuthMethod, Event, Identity};
use warden_store::audit::{AuditEntry, AuditFilter};
use warden_store::{Backend, MasterKey, Store, testing};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn identity(subject: &str) -> Identity {
    Identity {
        subject: subject.into(),
        groups: vec![],
        method: AuthMethod::ApiKey { key_id: "k".into() },
        expires_at: None,
    }
}

/// Event `i` of the log: subjects, connections and sessions come and go in runs and
/// interleave, and some events have none of them.
fn event(i: usize, sessions: &[Uuid]) -> Event {
    let kind = ["pg.query", "auth.failure", "session.start"][i % 3];
    let mut e = Event::new(kind, json!({ "i": i }));
    if !i.is_multiple_of(7) {
        e = e.by(&identity(["alice", "bob", "carol"][(i / 5) % 3]));
    }
    if !i.is_multiple_of(11) {
        e = e.on_connection(["billing", "ledger"][(i / 17) % 2]);
    }
    if !i.is_multiple_of(4) {
        e = e.in_session(sessions[(i / 3 + i % 2) % sessions.len()]);
    }
    e
}

fn seqs(entries: &[AuditEntry]) -> Vec<i64> {
    entries.iter().map(|e| e.seq).collect()
}

/// What `filter` must list, from the whole log in chain order.
fn expected(all: &[AuditEntry], filter: &AuditFilter) -> Vec<i64> {
    let mut hits: Vec<i64> = all
        .iter()
        .filter(|e| {
            let ev = &e.event;
            filter
                .subject
                .as_ref()
                .is_none_or(|s| ev.identity.as_ref().map(|i| &i.subject) == Some(s))
                && filter
                    .connection
                    .as_ref()
                    .is_none_or(|c| ev.connection.as_ref() == Some(c))
                && filter.session_id.is_none_or(|s| ev.session_id == Some(s))
                && filter
                    .kind
                    .as_ref()
                    .is_none_or(|k| match k.strip_suffix('.') {
                        Some(prefix) => ev.kind.starts_with(&format!("{prefix}.")),
                        None => &ev.kind == k,
                    })
                && filter.since.is_none_or(|t| ev.time >= t)
                && filter.until.is_none_or(|t| ev.time < t)
                && filter.after_seq.is_none_or(|a| e.seq > a)
                && filter.before_seq.is_none_or(|b| e.seq < b)
        })
        .map(|e| e.seq)
        .collect();
    if filter.newest_first {
        hits.reverse();
    }
    hits.truncate(usize::try_from(filter.limit).unwrap_or(0));
    hits
}

/// Every filter the test tries: each key alone and with the others, with a kind and
/// a start time, paged from both ends, in both orders, with small and large limits.
fn filters(sessions: &[Uuid], all: &[AuditEntry]) -> Vec<AuditFilter> {
    let newest = all.last().map_or(0, |e| e.seq);
    let middle = all.get(all.len() / 2).map(|e| e.event.time);
    let mut keys: Vec<(Option<String>, Option<String>, Option<Uuid>)> = Vec::new();
    for subject in [None, Some("alice"), Some("carol"), Some("nobody")] {
        for connection in [None, Some("ledger")] {
            for session in [None, Some(sessions[1]), Some(Uuid::now_v7())] {
                keys.push((
                    subject.map(String::from),
                    connection.map(String::from),
                    session,
                ));
            }
        }
    }
    let mut out = Vec::new();
    for (subject, connection, session_id) in keys {
        for (kind, since, until) in [
            (None, None, None),
            (Some("auth.failure".to_string()), None, None),
            (Some("session.".to_string()), None, None),
            (None, middle, None),
            (Some("pg.query".to_string()), middle, None),
            (None, None, middle),
        ] {
            for (after_seq, before_seq) in [
                (None, None),
                (Some(newest / 3), None),
                (None, Some(newest / 2)),
                (Some(newest / 4), Some(newest - 10)),
                (Some(newest), None),
            ] {
                for newest_first in [false, true] {
                    for limit in [1, 7, 10_000] {
                        out.push(AuditFilter {
                            subject: subject.clone(),
                            connection: connection.clone(),
                            session_id,
                            kind: kind.clone(),
                            since,
                            until,
                            after_seq,
                            before_seq,
                            newest_first,
                            limit,
                        });
                    }
                }
            }
        }
    }
    out
}

async fn check_every_filter(store: &Store, sessions: &[Uuid]) -> TestResult {
    let all = store
        .list_audit(&AuditFilter {
            limit: 10_000,
            ..Default::default()
        })
        .await?;
    let mut nonempty = 0;
    for filter in filters(sessions, &all) {
        let want = expected(&all, &filter);
        let got = seqs(&store.list_audit(&filter).await?);
        assert_eq!(got, want, "{filter:?}");
        nonempty += usize::from(!want.is_empty());
    }
    assert!(nonempty > 100, "the filters find events: {nonempty}");
    Ok(())
}

async fn listing_by_key_matches_filtering_the_whole_log(backend: Backend) -> TestResult {
    let dir = tempfile::tempdir()?;
    let url = testing::fresh_url(backend, dir.path()).await?;
    let store = Store::open(&url, &MasterKey::generate()?).await?;
    let sessions: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
    let events: Vec<Event> = (0..1200).map(|i| event(i, &sessions)).collect();
    // Appends of one event, a few, and hundreds (a busy shipment).
    let mut at = 0;
    // Small appends make many stretches per value: listing reads them a page at a
    // time.
    for size in [1, 2, 3, 5, 8, 13, 1, 1, 40, 1, 2, 100].into_iter().cycle() {
        if at == events.len() {
            break;
        }
        let end = (at + size).min(events.len());
        store.append_audit_batch(&events[at..end]).await?;
        at = end;
    }
    check_every_filter(&store, &sessions).await?;
    assert!(store.verify_audit().await?.ok);
    stretches_cannot_hide_events(&store).await?;

    // Events stored before the stretches existed: the migration gives them stretches
    // of its own (one per value per 4,096 sequence numbers), and listing agrees.
    sqlx::query("DELETE FROM audit_keys")
        .execute(store.pool())
        .await?;
    let migration = include_str!("../migrations/0010_audit_keys.sql");
    for statement in migration.split(';') {
        let sql: String = statement
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        if sql.trim_start().starts_with("INSERT") {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(store.pool())
                .await?;
        }
    }
    let stretches: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_keys")
        .fetch_one(store.pool())
        .await?;
    assert_eq!(stretches, 3 + 2 + 4, "one stretch per value");
    check_every_filter(&store, &sessions).await?;
    assert!(store.verify_audit().await?.ok);
    Ok(())
}

/// Shortening or removing a stretch would hide events from listing by its value:
/// verification, which walks the stretches with the chain, names the first one.
async fn stretches_cannot_hide_events(store: &Store) -> TestResult {
    let carol: Vec<i64> = seqs(
        &store
            .list_audit(&AuditFilter {
                subject: Some("carol".into()),
                limit: 10_000,
                ..Default::default()
            })
            .await?,
    );
    let (first, last): (i64, i64) = sqlx::query_as(
        "SELECT first_seq, last_seq FROM audit_keys WHERE key = 's:carol' \
         AND last_seq > first_seq ORDER BY first_seq LIMIT 1",
    )
    .fetch_one(store.pool())
    .await?;
    let second = *carol.iter().find(|s| **s > first).ok_or("carol again")?;
    for (tamper, hidden) in [
        ("UPDATE audit_keys SET last_seq = first_seq", second),
        ("DELETE FROM audit_keys", first),
        // A stretch planted inside the real one: listing newest first would stop
        // at it and skip the real one's later events.
        (
            "UPDATE audit_keys SET first_seq = first_seq + 1, last_seq = first_seq + 1",
            0,
        ),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "{tamper} WHERE key = 's:carol' AND first_seq = $1"
        )))
        .bind(first)
        .execute(store.pool())
        .await?;
        if hidden == 0 {
            // That moved the real stretch: put the real one back beside the planted.
            sqlx::query(
                "INSERT INTO audit_keys (key, first_seq, last_seq) VALUES ('s:carol', $1, $2)",
            )
            .bind(first)
            .bind(last)
            .execute(store.pool())
            .await?;
        }
        let report = store.verify_audit().await?;
        assert!(!report.ok, "{tamper}");
        let problem = report.problem.ok_or("a problem")?;
        let at = if hidden == 0 { first + 1 } else { hidden };
        assert_eq!(problem.seq, at, "{tamper}: {}", problem.reason);
        assert!(problem.reason.contains("audit_keys"), "{}", problem.reason);
        // Put it back.
        sqlx::query("DELETE FROM audit_keys WHERE key = 's:carol' AND first_seq IN ($1, $2)")
            .bind(first)
            .bind(first + 1)
            .execute(store.pool())
            .await?;
        sqlx::query("INSERT INTO audit_keys (key, first_seq, last_seq) VALUES ('s:carol', $1, $2)")
            .bind(first)
            .bind(last)
            .execute(store.pool())
            .await?;
        assert!(store.verify_audit().await?.ok, "restored");
    }
    Ok(())
}

#[tokio::test]
async fn sqlite() -> TestResult {
    listing_by_key_matches_filtering_the_whole_log(Backend::Sqlite).await
}

/// SQLite, with no statistics, reads 16 OR'd ranges of the sequence index as ranges
/// (beyond about that it scans the whole index): a query of one page of stretches,
/// shaped as the store writes it, must be planned so.
#[tokio::test]
async fn sqlite_reads_a_page_of_stretches_as_ranges() -> TestResult {
    let dir = tempfile::tempdir()?;
    let url = testing::fresh_url(Backend::Sqlite, dir.path()).await?;
    let store = Store::open(&url, &MasterKey::generate()?).await?;
    let ranges: Vec<String> = (0..16)
        .map(|i| format!("(seq >= {} AND seq <= {})", i * 100, i * 100 + 50))
        .collect();
    let sql = format!(
        "EXPLAIN QUERY PLAN SELECT seq FROM audit_events WHERE 1 = 1 AND +time_us >= 1 \
         AND subject = 'a' AND +kind = 'pg.query' AND ({}) ORDER BY seq DESC LIMIT 5",
        ranges.join(" OR ")
    );
    let mut plan = Vec::new();
    for row in sqlx::query(sqlx::AssertSqlSafe(sql))
        .fetch_all(store.pool())
        .await?
    {
        plan.push(sqlx::Row::try_get::<String, _>(&row, "detail")?);
    }
    assert!(
        plan.iter().any(|d| d.contains("MULTI-INDEX OR"))
            && !plan.iter().any(|d| d.starts_with("SCAN")),
        "{plan:?}"
    );
    Ok(())
}

#[tokio::test]
async fn postgres() -> TestResult {
    listing_by_key_matches_filtering_the_whole_log(Backend::Postgres).await
}
