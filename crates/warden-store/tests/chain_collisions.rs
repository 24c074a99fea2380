//! An append whose events collide with stored ones or with each other (the same id,
//! as a journal shipped twice would) fails whole, on both engines: nothing of it is chained, the chain
//! still verifies, and the store goes on taking appends. On SQLite the INSERT skips
//! such a row rather than aborting (see `insert_rows`), so the count check is what
//! refuses it.

use serde_json::json;
use warden_core::Event;
use warden_store::audit::AuditFilter;
use warden_store::{Backend, MasterKey, Store, testing};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn ev(i: i64) -> Event {
    Event::new("test.event", json!({ "i": i }))
}

async fn a_colliding_append_fails_whole_and_the_store_goes_on(backend: Backend) -> TestResult {
    let dir = tempfile::tempdir()?;
    let url = testing::fresh_url(backend, dir.path()).await?;
    let store = Store::open(&url, &MasterKey::generate()?).await?;
    let first = ev(1);
    store.append_audit_batch(&[first.clone(), ev(2)]).await?;

    // A stored event again: in the first INSERT of a batch, in a later one (this
    // 38-row batch goes in INSERTs of 16, 16 and 6 rows on PostgreSQL, of 32, 4 and 2
    // on SQLite), alone; and one event twice within a batch.
    for at in [5, 30, 35, 37] {
        let mut batch: Vec<Event> = (3..40).map(ev).collect();
        batch.insert(at, first.clone());
        let failed = store.append_audit_batch(&batch).await;
        assert!(failed.is_err(), "a batch colliding at {at} was chained");
    }
    let failed = store.append_audit(&first).await;
    assert!(failed.is_err(), "a colliding event was chained");
    let twice = ev(50);
    let failed = store
        .append_audit_batch(&[ev(51), twice.clone(), ev(52), twice])
        .await;
    assert!(failed.is_err(), "an event given twice was chained twice");

    let report = store.verify_audit().await?;
    assert!(report.ok, "{report:?}");
    assert_eq!((report.head_seq, report.events_checked), (2, 2));
    // The same connections go on: appends, and a batch spanning several INSERTs.
    for _ in 0..3 {
        store.append_audit(&ev(100)).await?;
    }
    store
        .append_audit_batch(&(200..240).map(ev).collect::<Vec<_>>())
        .await?;
    let report = store.verify_audit().await?;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.head_seq, 45);
    let listed = store
        .list_audit(&AuditFilter {
            limit: 100,
            ..Default::default()
        })
        .await?;
    let seqs: Vec<i64> = listed.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=45).collect::<Vec<_>>());
    Ok(())
}

#[tokio::test]
async fn sqlite() -> TestResult {
    a_colliding_append_fails_whole_and_the_store_goes_on(Backend::Sqlite).await
}

#[tokio::test]
async fn postgres() -> TestResult {
    a_colliding_append_fails_whole_and_the_store_goes_on(Backend::Postgres).await
}
