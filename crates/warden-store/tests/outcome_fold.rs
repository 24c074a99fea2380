//! One chained row per statement, on both engines: a statement's outcome journaled
//! after it is folded into its row when both ship together — from memory, and read
//! back from the journal after a crash — and stays a row of its own, naming the
//! statement, when it ships later. The chain verifies either way.

use serde_json::{Value, json};
use std::sync::Arc;
use uuid::Uuid;
use warden_core::Event;
use warden_store::audit::AuditFilter;
use warden_store::{AuditJournal, Backend, JournalSync, MasterKey, Store, testing};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn statement(session: Uuid, sql: &str) -> Event {
    Event::new("pg.query", json!({"sql": sql, "via": "Query"})).in_session(session)
}

fn outcome(of: &Event, tag: &str) -> Event {
    Event::new(
        "pg.outcome",
        json!({"tag": tag, "rows": 1, "statement": of.id}),
    )
    .in_session(of.session_id.unwrap_or_default())
}

/// Every chained event, in order, as (kind, payload).
async fn chained(store: &Store) -> Result<Vec<(String, Value)>, Box<dyn std::error::Error>> {
    let all = AuditFilter {
        limit: 1000,
        ..Default::default()
    };
    let mut events: Vec<_> = store
        .list_audit(&all)
        .await?
        .into_iter()
        .map(|e| (e.seq, e.event.kind, e.event.payload))
        .collect();
    events.sort_by_key(|(seq, _, _)| *seq);
    Ok(events.into_iter().map(|(_, k, p)| (k, p)).collect())
}

async fn outcomes_fold_into_their_statements(backend: Backend) -> TestResult {
    let dir = tempfile::tempdir()?;
    let url = testing::fresh_url(backend, dir.path()).await?;
    let store = Arc::new(Store::open(&url, &MasterKey::generate()?).await?);
    let session = Uuid::now_v7();

    // A crash left a statement and its outcome journaled, not shipped: read back
    // at the next start, they are chained as one row.
    let jdir = dir.path().join("journal");
    std::fs::create_dir_all(&jdir)?;
    let crashed = statement(session, "SELECT 'before the crash'");
    let segment = testing::journal_segment(
        &store,
        1,
        "run-a",
        1,
        &[crashed.clone(), outcome(&crashed, "SELECT 1")],
    );
    std::fs::write(jdir.join("segment-00000000000000000001.jsonl"), segment)?;
    // Handed to the OS, an append never yields on this current-thread runtime, so the
    // journal's ship ticker cannot run between the quick statement's append and
    // its outcome's: they always ship together. (With `Disk` the append awaits the
    // writer thread, and a tick there ships the statement alone.)
    let journal = AuditJournal::open(&jdir, store.clone(), JournalSync::Os).await?;
    let rows = chained(&store).await?;
    assert_eq!(rows.len(), 1, "{rows:#?}");
    let folded = &rows[0].1["outcome"];
    assert_eq!(
        (&folded["tag"], &folded["rows"]),
        (&json!("SELECT 1"), &json!(1))
    );
    assert!(folded["time"].is_string(), "{folded}");

    // Shipped together from memory: one row.
    let quick = statement(session, "SELECT 'quick'");
    journal.append(quick.clone()).await?;
    journal.append_later(outcome(&quick, "SELECT 1"));
    journal.ship_now().await?;
    // Its statement shipped first: the outcome is a row of its own, naming it.
    let slow = statement(session, "SELECT pg_sleep(1)");
    journal.append(slow.clone()).await?;
    journal.ship_now().await?;
    journal.append_later(outcome(&slow, "SELECT 1"));
    journal.ship_now().await?;

    let rows = chained(&store).await?;
    let kinds: Vec<&str> = rows.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["pg.query", "pg.query", "pg.query", "pg.outcome"]);
    assert_eq!(rows[1].1["sql"], "SELECT 'quick'");
    assert_eq!(rows[1].1["outcome"]["tag"], "SELECT 1");
    assert!(rows[1].1["outcome"].get("statement").is_none());
    assert!(rows[2].1.get("outcome").is_none(), "{:?}", rows[2]);
    assert_eq!(rows[3].1["statement"], json!(slow.id));
    let report = store.verify_audit().await?;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.events_checked, 4);
    Ok(())
}

#[tokio::test]
async fn sqlite() -> TestResult {
    outcomes_fold_into_their_statements(Backend::Sqlite).await
}

#[tokio::test]
async fn postgres() -> TestResult {
    outcomes_fold_into_their_statements(Backend::Postgres).await
}
