//! The store's behaviour, run against both engines: a SQLite file and a fresh
//! database on the machine's PostgreSQL.

use serde_json::json;
use std::sync::Arc;
use tempfile::TempDir;
use warden_core::{
    Connection, ConnectionKind, Event, PolicyRefs, Secret, SecretKind, Session, SessionStatus,
    TlsOptions, timefmt,
};
use warden_store::audit::AuditFilter;
use warden_store::connections::SecretChange;
use warden_store::sessions::{SessionCounts, SessionFilter};
use warden_store::{Backend, MasterKey, Store, StoreError, testing};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A journal that hands its writes to the OS (`audit.journal_sync = false`).
async fn unsynced_journal(
    dir: &std::path::Path,
    store: &Arc<Store>,
) -> Result<Arc<warden_store::AuditJournal>, StoreError> {
    warden_store::AuditJournal::open(dir, store.clone(), warden_store::JournalSync::Os).await
}

async fn open(
    backend: Backend,
) -> Result<(Store, String, MasterKey, TempDir), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let url = testing::fresh_url(backend, dir.path()).await?;
    let key = MasterKey::generate()?;
    let store = Store::open(&url, &key).await?;
    Ok((store, url, key, dir))
}

fn connection(name: &str) -> Connection {
    let now = timefmt::now();
    Connection {
        name: name.into(),
        kind: ConnectionKind::Postgres,
        target: "127.0.0.1:5432".into(),
        username: Some("app".into()),
        secret_kind: Some(SecretKind::Password),
        tls: TlsOptions::default(),
        allowed_groups: vec!["dba".into()],
        policies: PolicyRefs::default(),
        ssh: Default::default(),
        access: Default::default(),
        kubernetes: Default::default(),
        http: Default::default(),
        agent: None,
        description: None,
        created_at: now,
        updated_at: now,
    }
}

fn ev(kind: &str) -> Event {
    Event::new(kind, json!({}))
}

/// Runs one async test body against both store engines.
macro_rules! both_stores {
    ($name:ident) => {
        mod $name {
            use super::*;
            #[tokio::test]
            async fn sqlite() -> TestResult {
                super::$name(Backend::Sqlite).await
            }
            #[tokio::test]
            async fn postgres() -> TestResult {
                super::$name(Backend::Postgres).await
            }
        }
    };
}

both_stores!(connections_round_trip_with_sealed_secret);
async fn connections_round_trip_with_sealed_secret(backend: Backend) -> TestResult {
    let (store, url, key, _dir) = open(backend).await?;
    let conn = connection("prod-db");
    let secret = "backend-pw-Zq9!x";
    store
        .create_connection(
            &conn,
            Some((SecretKind::Password, Secret::new(secret.into()))),
            &ev("connection.create"),
        )
        .await?;
    assert!(matches!(
        store
            .create_connection(&conn, None, &ev("connection.create"))
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.get_connection("prod-db").await?, Some(conn.clone()));
    let (kind, got) = store
        .connection_secret("prod-db")
        .await?
        .ok_or("no secret")?;
    assert_eq!(
        (kind, got.expose().as_str()),
        (SecretKind::Password, secret)
    );

    // The plaintext is nowhere in the database.
    let rows: Vec<(String,)> = sqlx::query_as("SELECT secret_sealed FROM connections")
        .fetch_all(store.pool())
        .await?;
    assert!(
        rows.iter()
            .all(|r| !r.0.contains(secret) && r.0.starts_with("v1."))
    );

    let mut changed = conn.clone();
    changed.target = "10.0.0.1:5432".into();
    store
        .update_connection(&changed, SecretChange::Keep, &ev("connection.update"))
        .await?;
    assert!(store.connection_secret("prod-db").await?.is_some());
    store
        .update_connection(
            &changed,
            SecretChange::Set(SecretKind::Token, Secret::new("t2".into())),
            &ev("connection.update"),
        )
        .await?;
    let (kind, got) = store
        .connection_secret("prod-db")
        .await?
        .ok_or("no secret")?;
    assert_eq!((kind, got.expose().as_str()), (SecretKind::Token, "t2"));
    store
        .update_connection(&changed, SecretChange::Clear, &ev("connection.update"))
        .await?;
    assert!(store.connection_secret("prod-db").await?.is_none());
    assert!(matches!(
        store
            .update_connection(
                &connection("missing"),
                SecretChange::Keep,
                &ev("connection.update")
            )
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.list_connections().await?.len(), 1);
    assert!(
        store
            .delete_connection("prod-db", &ev("connection.delete"))
            .await?
    );
    assert!(
        !store
            .delete_connection("prod-db", &ev("connection.delete"))
            .await?
    );
    // Each successful change was recorded with it; failed ones recorded nothing.
    let kinds: Vec<String> = store
        .list_audit(&AuditFilter {
            limit: 100,
            ..Default::default()
        })
        .await?
        .into_iter()
        .map(|e| e.event.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            "connection.create",
            "connection.update",
            "connection.update",
            "connection.update",
            "connection.delete"
        ]
    );
    assert!(store.verify_audit().await?.ok);
    store.close().await;

    // Reopening with another master key fails fast.
    let other = MasterKey::generate()?;
    assert!(matches!(
        Store::open(&url, &other).await,
        Err(StoreError::WrongMasterKey)
    ));
    assert!(Store::open(&url, &key).await.is_ok());
    Ok(())
}

both_stores!(audit_chain_verifies_and_filters);
async fn audit_chain_verifies_and_filters(backend: Backend) -> TestResult {
    let (store, _url, _key, _dir) = open(backend).await?;
    let empty = store.verify_audit().await?;
    assert!(empty.ok && empty.events_checked == 0);
    for i in 0..5 {
        let e = Event::new(
            if i % 2 == 0 {
                "auth.failure"
            } else {
                "connection.create"
            },
            json!({"i": i}),
        )
        .on_connection(format!("c{i}"));
        let at = store.append_audit(&e).await?;
        assert_eq!(at.seq, i + 1);
    }
    let report = store.verify_audit().await?;
    assert!(report.ok, "{report:?}");
    assert_eq!((report.events_checked, report.head_seq), (5, 5));

    let all = store
        .list_audit(&AuditFilter {
            limit: 100,
            ..Default::default()
        })
        .await?;
    assert_eq!(all.len(), 5);
    assert_eq!(all[1].prev_hash, all[0].hash);
    let auth = store
        .list_audit(&AuditFilter {
            kind: Some("auth.".into()),
            limit: 100,
            ..Default::default()
        })
        .await?;
    assert_eq!(auth.len(), 3);
    let one = store
        .list_audit(&AuditFilter {
            connection: Some("c3".into()),
            limit: 100,
            ..Default::default()
        })
        .await?;
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].event.payload, json!({"i": 3}));
    let page = store
        .list_audit(&AuditFilter {
            after_seq: Some(3),
            limit: 1,
            ..Default::default()
        })
        .await?;
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![4]);
    let newest = store
        .list_audit(&AuditFilter {
            newest_first: true,
            limit: 2,
            ..Default::default()
        })
        .await?;
    assert_eq!(newest.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![5, 4]);
    let older = store
        .list_audit(&AuditFilter {
            newest_first: true,
            before_seq: Some(4),
            kind: Some("auth.".into()),
            limit: 10,
            ..Default::default()
        })
        .await?;
    assert!(
        older
            .iter()
            .all(|e| e.seq < 4 && e.event.kind.starts_with("auth."))
    );
    assert!(
        older.windows(2).all(|w| w[0].seq > w[1].seq),
        "newest first"
    );
    Ok(())
}

both_stores!(concurrent_appends_keep_one_chain);
async fn concurrent_appends_keep_one_chain(backend: Backend) -> TestResult {
    let (store, url, key, _dir) = open(backend).await?;
    // Two stores on one database stand in for two gateways sharing it.
    let a = Arc::new(store);
    let b = Arc::new(Store::open(&url, &key).await?);
    let mut tasks = Vec::new();
    for i in 0..40 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            s.append_audit(&Event::new("test.concurrent", json!({"i": i})))
                .await
        }));
    }
    for t in tasks {
        t.await??;
    }
    let report = a.verify_audit().await?;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.events_checked, 40);
    Ok(())
}

both_stores!(a_large_batch_chains_as_one);
async fn a_large_batch_chains_as_one(backend: Backend) -> TestResult {
    let (store, _url, _key, _dir) = open(backend).await?;
    store.append_audit(&ev("test.first")).await?;
    // Many INSERTs' worth of events, in one transaction: small ones, and every so
    // often one larger than an INSERT's byte budget on its own.
    let events: Vec<Event> = (0..1200)
        .map(|i| {
            let filler = if i % 97 == 0 {
                "x".repeat(40_000)
            } else {
                String::new()
            };
            Event::new("test.bulk", json!({"i": i, "filler": filler}))
        })
        .collect();
    store.append_audit_batch(&events).await?;
    let a = store.append_audit(&ev("test.last")).await?;
    assert_eq!(a.seq, 1202);
    let report = store.verify_audit().await?;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.events_checked, 1202);
    // In the order given.
    let listed = store
        .list_audit(&AuditFilter {
            kind: Some("test.bulk".into()),
            limit: 2000,
            ..Default::default()
        })
        .await?;
    let order: Vec<i64> = listed
        .iter()
        .filter_map(|e| e.event.payload["i"].as_i64())
        .collect();
    assert_eq!(order, (0..1200).collect::<Vec<i64>>());
    Ok(())
}

async fn chain_of(
    backend: Backend,
    n: i64,
) -> Result<(Store, TempDir, Vec<String>), Box<dyn std::error::Error>> {
    let (store, _url, _key, dir) = open(backend).await?;
    let mut ids = Vec::new();
    for i in 0..n {
        let e = Event::new("test.event", json!({"i": i, "text": "hello"}));
        ids.push(e.id.to_string());
        store.append_audit(&e).await?;
    }
    Ok((store, dir, ids))
}

both_stores!(verify_names_an_altered_event);
async fn verify_names_an_altered_event(backend: Backend) -> TestResult {
    let (store, _dir, ids) = chain_of(backend, 6).await?;
    sqlx::query("UPDATE audit_events SET body = REPLACE(body, 'hello', 'hellp') WHERE seq = 4")
        .execute(store.pool())
        .await?;
    let report = store.verify_audit().await?;
    let problem = report.problem.ok_or("tampering not detected")?;
    assert!(!report.ok);
    assert_eq!(problem.seq, 4);
    assert_eq!(problem.event_id.as_deref(), Some(ids[3].as_str()));
    assert!(problem.reason.contains("altered"), "{}", problem.reason);
    Ok(())
}

both_stores!(verify_catches_removal_reordering_and_column_edits);
async fn verify_catches_removal_reordering_and_column_edits(backend: Backend) -> TestResult {
    // Removed from the middle.
    let (store, _d1, _) = chain_of(backend, 5).await?;
    sqlx::query("DELETE FROM audit_events WHERE seq = 3")
        .execute(store.pool())
        .await?;
    let p = store
        .verify_audit()
        .await?
        .problem
        .ok_or("removal not detected")?;
    assert_eq!(p.seq, 4);
    assert!(p.reason.contains("event 3 is missing"), "{}", p.reason);

    // Removed from the end.
    let (store, _d2, _) = chain_of(backend, 5).await?;
    sqlx::query("DELETE FROM audit_events WHERE seq = 5")
        .execute(store.pool())
        .await?;
    let p = store
        .verify_audit()
        .await?
        .problem
        .ok_or("tail removal not detected")?;
    assert!(p.reason.contains("removed"), "{}", p.reason);

    // Two events swapped (their rows renumbered).
    let (store, _d3, _) = chain_of(backend, 5).await?;
    sqlx::query("UPDATE audit_events SET seq = 100 WHERE seq = 2")
        .execute(store.pool())
        .await?;
    sqlx::query("UPDATE audit_events SET seq = 2 WHERE seq = 3")
        .execute(store.pool())
        .await?;
    sqlx::query("UPDATE audit_events SET seq = 3 WHERE seq = 100")
        .execute(store.pool())
        .await?;
    let p = store
        .verify_audit()
        .await?
        .problem
        .ok_or("reordering not detected")?;
    assert_eq!(p.seq, 2);

    // An indexed column edited so filters lie.
    let (store, _d4, _) = chain_of(backend, 3).await?;
    sqlx::query("UPDATE audit_events SET kind = 'test.other' WHERE seq = 2")
        .execute(store.pool())
        .await?;
    let p = store
        .verify_audit()
        .await?
        .problem
        .ok_or("column edit not detected")?;
    assert_eq!(p.seq, 2);
    assert!(p.reason.contains("column"), "{}", p.reason);

    // A row forged past the chain head.
    let (store, _d5, _) = chain_of(backend, 3).await?;
    sqlx::query(
        "INSERT INTO audit_events (seq, id, time_us, session_id, subject, connection, kind, body, prev_hash, hash) \
         SELECT 4, 'forged', time_us, session_id, subject, connection, kind, body, hash, hash \
         FROM audit_events WHERE seq = 3",
    )
    .execute(store.pool())
    .await?;
    let p = store
        .verify_audit()
        .await?
        .problem
        .ok_or("a forged row past the head not detected")?;
    assert_eq!(p.seq, 4);
    assert!(p.reason.contains("beyond the chain head"), "{}", p.reason);
    Ok(())
}

both_stores!(verify_under_load_never_cries_wolf);
async fn verify_under_load_never_cries_wolf(backend: Backend) -> TestResult {
    let (store, _url, _key, _dir) = open(backend).await?;
    let store = std::sync::Arc::new(store);
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..400 {
                let events: Vec<Event> = (0..5)
                    .map(|j| Event::new("test.load", json!({"i": i, "j": j})))
                    .collect();
                store.append_audit_batch(&events).await?;
            }
            Ok::<(), StoreError>(())
        })
    };
    let mut verified = 0;
    while !writer.is_finished() {
        let report = store.verify_audit().await?;
        assert!(report.ok, "a false alarm under load: {:?}", report.problem);
        verified += 1;
    }
    writer.await??;
    assert!(store.verify_audit().await?.ok);
    assert!(verified > 1, "verification ran while events were appended");
    Ok(())
}

both_stores!(api_keys_and_revocation);
async fn api_keys_and_revocation(backend: Backend) -> TestResult {
    let (store, _url, _key, _dir) = open(backend).await?;
    let rec = warden_store::api_keys::ApiKeyRecord {
        id: "k1".into(),
        name: "ci".into(),
        subject: "apikey:ci".into(),
        groups: vec!["ci".into()],
        secret_hash: "ab".repeat(32),
        created_by: "admin".into(),
        created_at: timefmt::now(),
        expires_at: Some(timefmt::now() + time::Duration::hours(1)),
        revoked_at: None,
    };
    store.insert_api_key(&rec, &ev("api_key.create")).await?;
    assert!(matches!(
        store.insert_api_key(&rec, &ev("api_key.create")).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.api_key("k1").await?, Some(rec.clone()));
    let at = timefmt::now();
    assert!(
        store
            .revoke_api_key("k1", at, &ev("api_key.revoke"))
            .await?
    );
    assert!(
        store
            .revoke_api_key("k1", at + time::Duration::hours(1), &ev("api_key.revoke"))
            .await?
    );
    assert_eq!(
        store.api_key("k1").await?.and_then(|k| k.revoked_at),
        Some(at)
    );
    assert!(
        !store
            .revoke_api_key("nope", at, &ev("api_key.revoke"))
            .await?
    );
    assert_eq!(store.list_api_keys().await?.len(), 1);
    Ok(())
}

both_stores!(sessions_lifecycle);
async fn sessions_lifecycle(backend: Backend) -> TestResult {
    let (store, _url, _key, _dir) = open(backend).await?;
    let id = uuid::Uuid::now_v7();
    let s = Session {
        id,
        connection: "prod-db".into(),
        protocol: "postgres".into(),
        subject: "alice".into(),
        groups: vec!["dba".into()],
        client_addr: Some("127.0.0.1:5555".into()),
        started_at: timefmt::now(),
        ended_at: None,
        status: SessionStatus::Active,
        end_reason: None,
        commands: 0,
        denied: 0,
        bytes_in: 0,
        bytes_out: 0,
        recording: None,
    };
    store.create_session(&s, Some("gw-1")).await?;
    store
        .add_session_counts(
            id,
            SessionCounts {
                commands: 3,
                denied: 1,
                bytes_in: 10,
                bytes_out: 20,
            },
        )
        .await?;
    store
        .set_session_recording(id, "recordings/x.jsonl")
        .await?;
    let end = timefmt::now();
    store
        .end_session(id, SessionStatus::Closed, Some("client quit"), end)
        .await?;
    store
        .end_session(id, SessionStatus::Terminated, Some("late"), end)
        .await?;
    let got = store.session(id).await?.ok_or("missing session")?;
    assert_eq!(
        (got.commands, got.denied, got.bytes_in, got.bytes_out),
        (3, 1, 10, 20)
    );
    assert_eq!(got.status, SessionStatus::Closed);
    assert_eq!(got.end_reason.as_deref(), Some("client quit"));
    assert_eq!(got.ended_at, Some(end));
    let listed = store
        .list_sessions(&SessionFilter {
            subject: Some("alice".into()),
            limit: 10,
            ..Default::default()
        })
        .await?;
    assert_eq!(listed.len(), 1);
    let none = store
        .list_sessions(&SessionFilter {
            status: Some(SessionStatus::Active),
            limit: 10,
            ..Default::default()
        })
        .await?;
    assert!(none.is_empty());

    // A dead instance's open sessions are closed as interrupted by it alone: another
    // gateway's stay open.
    let open_session = |gw: &'static str| {
        let mut s = s.clone();
        s.id = uuid::Uuid::now_v7();
        s.ended_at = None;
        s.status = SessionStatus::Active;
        (s, gw)
    };
    let (mine, theirs) = (open_session("gw-1"), open_session("gw-2"));
    for (s, gw) in [&mine, &theirs] {
        store.create_session(s, Some(gw)).await?;
    }
    let at = timefmt::now();
    let closed = store
        .interrupt_sessions("gw-1", "died", at, |closed| {
            closed
                .iter()
                .map(|s| Event::new("test.interrupted", json!({})).in_session(s.id))
                .collect()
        })
        .await?;
    assert_eq!(closed.iter().map(|s| s.id).collect::<Vec<_>>(), [mine.0.id]);
    // Its event was chained in the same transaction.
    let events = store
        .list_audit(&AuditFilter {
            kind: Some("test.interrupted".into()),
            limit: 10,
            ..Default::default()
        })
        .await?;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event.session_id, Some(mine.0.id));
    let got = store.session(mine.0.id).await?.ok_or("missing")?;
    assert_eq!(
        (got.status, got.end_reason.as_deref(), got.ended_at),
        (SessionStatus::Interrupted, Some("died"), Some(at))
    );
    let other = store.session(theirs.0.id).await?.ok_or("missing")?;
    assert_eq!(other.status, SessionStatus::Active);
    assert!(
        store
            .interrupt_sessions("gw-1", "died", at, |_| Vec::new())
            .await?
            .is_empty()
    );
    Ok(())
}

both_stores!(journal_is_durable_first_chained_soon_and_recovers_after_a_crash);
async fn journal_is_durable_first_chained_soon_and_recovers_after_a_crash(
    backend: Backend,
) -> TestResult {
    let (store, url, key, dir) = open(backend).await?;
    let store = Arc::new(store);
    let jdir = dir.path().join("journal");

    // A crash left two segments: one already committed to the store (deleted late),
    // one not, with a torn last line that nobody was told was written.
    std::fs::create_dir_all(&jdir)?;
    let shipped = Event::new("test.shipped", json!({}));
    store.append_audit(&shipped).await?;
    std::fs::write(
        jdir.join("segment-00000000000000000001.jsonl"),
        testing::journal_segment(&store, 1, "run-a", 1, std::slice::from_ref(&shipped)),
    )?;
    let lost = Event::new("test.left", json!({"n": 1}));
    let mut second = testing::journal_segment(&store, 2, "run-a", 2, std::slice::from_ref(&lost));
    second.extend_from_slice(b"{\"run\":\"run-a\",\"seq\":3,\"mac\":\"to");
    std::fs::write(jdir.join("segment-00000000000000000002.jsonl"), second)?;
    let journal =
        warden_store::AuditJournal::open(&jdir, store.clone(), Default::default()).await?;
    let kinds = |entries: Vec<warden_store::audit::AuditEntry>| {
        entries
            .into_iter()
            .map(|e| e.event.kind)
            .collect::<Vec<_>>()
    };
    let all = AuditFilter {
        limit: 1000,
        ..Default::default()
    };
    assert_eq!(
        kinds(store.list_audit(&all).await?),
        ["test.shipped", "test.left"]
    );

    // Concurrent appends: each durable when it returns, all chained after shipping.
    let mut tasks = Vec::new();
    for i in 0..50 {
        let j = journal.clone();
        tasks.push(tokio::spawn(async move {
            j.append(Event::new("test.journaled", json!({"i": i})))
                .await
        }));
    }
    for t in tasks {
        t.await??;
    }
    journal.ship_now().await?;
    let report = store.verify_audit().await?;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.events_checked, 52);
    let left: Vec<_> = std::fs::read_dir(&jdir)?.collect();
    assert_eq!(left.len(), 1, "only the (empty) current segment remains");

    // The store stops taking writes: shipping fails, and from then on appends are
    // refused instead of piling up behind it.
    journal
        .append(Event::new("test.before-outage", json!({})))
        .await?;
    store.close().await;
    assert!(journal.ship_now().await.is_err());
    let err = journal
        .append(Event::new("test.during-outage", json!({})))
        .await
        .err()
        .ok_or("an append went through while the store was down")?;
    assert!(err.to_string().contains("not taking audit events"), "{err}");
    // The next start ships what was acknowledged, exactly once.
    drop(journal);
    let store = Arc::new(Store::open(&url, &key).await?);
    // (This run hands events to the OS instead of syncing each batch.)
    let journal = unsynced_journal(&jdir, &store).await?;
    journal
        .append(Event::new("test.after-restart", json!({})))
        .await?;
    journal.ship_now().await?;
    let kinds = kinds(store.list_audit(&all).await?);
    assert_eq!(
        kinds.iter().filter(|k| *k == "test.before-outage").count(),
        1
    );
    assert!(!kinds.iter().any(|k| k == "test.during-outage"));
    assert_eq!(kinds.last().map(String::as_str), Some("test.after-restart"));
    assert!(store.verify_audit().await?.ok);
    Ok(())
}

#[tokio::test]
async fn unsynced_journal_writes_queued_events_when_dropped() -> TestResult {
    let (store, _url, _key, dir) = open(Backend::Sqlite).await?;
    let store = Arc::new(store);
    let jdir = dir.path().join("journal");
    let journal = unsynced_journal(&jdir, &store).await?;
    journal
        .append(Event::new("test.statement", json!({})))
        .await?;
    // Queued for the next write; the journal goes away before one happens.
    journal.append_later(Event::new("test.outcome", json!({})));
    drop(journal);
    // The next start ships what the segment holds.
    let journal = unsynced_journal(&jdir, &store).await?;
    journal.ship_now().await?;
    let all = AuditFilter {
        limit: 100,
        ..Default::default()
    };
    let kinds: Vec<String> = store
        .list_audit(&all)
        .await?
        .into_iter()
        .map(|e| e.event.kind)
        .collect();
    assert!(kinds.iter().any(|k| k == "test.statement"), "{kinds:?}");
    assert!(kinds.iter().any(|k| k == "test.outcome"), "{kinds:?}");
    Ok(())
}

#[tokio::test]
async fn journal_rolls_over_to_new_segments_and_ships_them_all() -> TestResult {
    let (store, _url, _key, dir) = open(Backend::Sqlite).await?;
    let store = Arc::new(store);
    let jdir = dir.path().join("journal");
    let journal = unsynced_journal(&jdir, &store).await?;
    // About 10 MiB of events: more than two 4 MiB segments.
    let filler = "x".repeat(2000);
    for i in 0..5000 {
        journal
            .append(Event::new("test.bulk", json!({"i": i, "filler": filler})))
            .await?;
    }
    journal.ship_now().await?;
    let report = store.verify_audit().await?;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.events_checked, 5000);
    // The segment in use, and perhaps the next one being prepared; none shipped stays.
    let left = std::fs::read_dir(&jdir)?.count();
    assert!(left <= 2, "{left} segments left");
    Ok(())
}

both_stores!(ssh_options_host_key_pins_and_user_keys);
async fn ssh_options_host_key_pins_and_user_keys(backend: Backend) -> TestResult {
    let (store, _url, _key, _dir) = open(backend).await?;
    let mut conn = connection("box");
    conn.kind = ConnectionKind::Ssh;
    store
        .create_connection(&conn, None, &ev("connection.create"))
        .await?;
    // An update that keeps the secret still writes every field, SSH options included.
    conn.target = "10.0.0.9:22".into();
    conn.ssh.port_forwarding = true;
    store
        .update_connection(&conn, SecretChange::Keep, &ev("connection.update"))
        .await?;
    let got = store.get_connection("box").await?.ok_or("gone")?;
    assert_eq!(got.target, "10.0.0.9:22");
    assert!(got.ssh.port_forwarding && got.ssh.host_key.is_none());
    store
        .update_connection(
            &conn,
            SecretChange::Set(SecretKind::PrivateKey, Secret::new("k".into())),
            &ev("connection.update"),
        )
        .await?;
    assert!(
        store
            .get_connection("box")
            .await?
            .ok_or("gone")?
            .ssh
            .port_forwarding
    );
    // The first pin wins; a second key is not pinned over it.
    let first = store
        .pin_ssh_host_key(
            "box",
            "ssh-ed25519 AAAAfirst",
            &ev("connection.host_key_pinned"),
        )
        .await?;
    assert_eq!(first.as_deref(), Some("ssh-ed25519 AAAAfirst"));
    let second = store
        .pin_ssh_host_key(
            "box",
            "ssh-ed25519 AAAAsecond",
            &ev("connection.host_key_pinned"),
        )
        .await?;
    assert_eq!(second.as_deref(), Some("ssh-ed25519 AAAAfirst"));
    let got = store.get_connection("box").await?.ok_or("gone")?;
    assert_eq!(got.ssh.host_key.as_deref(), Some("ssh-ed25519 AAAAfirst"));
    assert!(got.ssh.port_forwarding);

    let key = warden_store::ssh_keys::SshUserKey {
        fingerprint: "SHA256:abc/def+g".into(),
        public_key: "ssh-ed25519 AAAAuser".into(),
        name: "laptop".into(),
        subject: "alice".into(),
        groups: vec!["ops".into()],
        created_at: timefmt::now(),
        expires_at: timefmt::now() + time::Duration::hours(1),
        api_key_id: Some("k1".into()),
    };
    store
        .insert_ssh_user_key(&key, &ev("ssh_key.register"))
        .await?;
    assert!(matches!(
        store
            .insert_ssh_user_key(&key, &ev("ssh_key.register"))
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        store.ssh_user_key("SHA256:abc/def+g").await?,
        Some(key.clone())
    );
    assert_eq!(store.list_ssh_user_keys(Some("alice")).await?.len(), 1);
    assert!(store.list_ssh_user_keys(Some("bob")).await?.is_empty());
    assert_eq!(store.list_ssh_user_keys(None).await?.len(), 1);
    assert!(
        store
            .delete_ssh_user_key(&key.fingerprint, &ev("ssh_key.delete"))
            .await?
    );
    assert!(
        !store
            .delete_ssh_user_key(&key.fingerprint, &ev("ssh_key.delete"))
            .await?
    );
    assert!(store.ssh_user_key(&key.fingerprint).await?.is_none());
    Ok(())
}

both_stores!(a_damaged_journal_is_reported_never_shipped_silently);
async fn a_damaged_journal_is_reported_never_shipped_silently(backend: Backend) -> TestResult {
    let (store, _url, _key, dir) = open(backend).await?;
    let store = Arc::new(store);
    let jdir = dir.path().join("journal");
    std::fs::create_dir_all(&jdir)?;
    // A crash left five unshipped events; then someone deleted the third line,
    // altered the fourth and added a line of their own.
    let events: Vec<Event> = (1..=5)
        .map(|i| Event::new("test.left", json!({"i": i})))
        .collect();
    let segment = testing::journal_segment(&store, 1, "run-b", 1, &events);
    let text = String::from_utf8(segment)?;
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    lines[4] = lines[4].replace("\"i\":4", "\"i\":40");
    lines.remove(3);
    let forged = Event::new("test.forged", json!({"by": "mallory"}));
    lines.push(serde_json::to_string(&forged)?);
    std::fs::write(
        jdir.join("segment-00000000000000000001.jsonl"),
        format!("{}\n", lines.join("\n")),
    )?;
    let journal = unsynced_journal(&jdir, &store).await?;
    journal.ship_now().await?;
    let all = AuditFilter {
        limit: 100,
        ..Default::default()
    };
    let entries = store.list_audit(&all).await?;
    let shipped: Vec<i64> = entries
        .iter()
        .filter(|e| e.event.kind == "test.left")
        .filter_map(|e| e.event.payload["i"].as_i64())
        .collect();
    assert_eq!(shipped, [1, 2, 5], "only authentic lines are shipped");
    assert!(!entries.iter().any(|e| e.event.kind == "test.forged"));
    let damage = entries
        .iter()
        .find(|e| e.event.kind == "audit.journal_damaged")
        .ok_or("no audit.journal_damaged event")?;
    let problems = damage.event.payload["problems"].to_string();
    for expected in [
        "seq 3 to 4 are missing",
        "fails its MAC",
        "not a journal line",
    ] {
        assert!(problems.contains(expected), "{expected}: {problems}");
    }
    // Verification says so too: the chain is intact, the record is not complete.
    let report = store.verify_audit().await?;
    assert!(!report.ok);
    let problem = report.problem.ok_or("no problem reported")?;
    assert!(problem.reason.contains("journal"), "{}", problem.reason);
    Ok(())
}

/// A store that cannot keep up: appends wait once the journal's in-memory backlog
/// reaches its bound (memory stays bounded), nothing is dropped, and everything is
/// chained once the store catches up.
#[tokio::test]
async fn a_slow_store_slows_appends_instead_of_growing_memory() -> TestResult {
    let (store, url, _key, dir) = open(Backend::Postgres).await?;
    let store = Arc::new(store);
    let journal = unsynced_journal(&dir.path().join("journal"), &store).await?;
    journal.set_max_backlog(50);
    // Another session holds the chain head: shipments wait for it.
    let blocker = sqlx::PgPool::connect(&url).await?;
    let mut held = blocker.begin().await?;
    sqlx::query("SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE")
        .execute(&mut *held)
        .await?;
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..300 {
        let (j, done) = (journal.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            j.append(Event::new("test.slow", json!({"i": i}))).await?;
            done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok::<(), StoreError>(())
        }));
    }
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let while_blocked = done.load(std::sync::atomic::Ordering::SeqCst);
    // At most the bound in memory, plus the one shipment that took its events and
    // waits for the head.
    assert!(
        while_blocked <= 2 * 50,
        "{while_blocked} appends went through while the store was blocked"
    );
    assert!(journal.backlog() <= 50, "backlog {}", journal.backlog());
    held.rollback().await?;
    for t in tasks {
        t.await??;
    }
    journal.ship_now().await?;
    let all = AuditFilter {
        limit: 1000,
        kind: Some("test.slow".into()),
        ..Default::default()
    };
    assert_eq!(store.list_audit(&all).await?.len(), 300, "none dropped");
    assert!(store.verify_audit().await?.ok);
    assert_eq!(journal.backlog(), 0);
    Ok(())
}

both_stores!(archives_keep_the_chain_whole_and_a_missing_or_altered_one_is_found);
async fn archives_keep_the_chain_whole_and_a_missing_or_altered_one_is_found(
    backend: Backend,
) -> TestResult {
    let (store, dir, _ids) = chain_of(backend, 25).await?;
    let archive_dir = dir.path().join("archive");
    // Keep 10 in the store, 6 per file: archives of 1-6, 7-12, then 13-15 (each
    // archive adds its own event to the chain's head).
    let mut made = Vec::new();
    while let Some(a) = store.archive_audit(&archive_dir, 10, 6).await? {
        made.push(a);
    }
    assert!(made.len() >= 3, "{made:?}");
    assert_eq!(made[0].first_seq, 1);
    for pair in made.windows(2) {
        assert_eq!(pair[1].first_seq, pair[0].last_seq + 1);
    }
    let in_store: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_events")
        .fetch_one(store.pool())
        .await?;
    // Ranges under a tenth of what is kept wait for the next round.
    assert!(in_store <= 10 + 1, "{in_store} events left in the store");
    let report = store.verify_audit_in(Some(&archive_dir)).await?;
    assert!(report.ok, "{report:?}");
    assert_eq!(
        report.events_checked, report.head_seq,
        "every event, archived or not"
    );
    // Without the archives, verification says what it could not check.
    assert!(!store.verify_audit().await?.ok);
    let archive_events = store
        .list_audit(&AuditFilter {
            kind: Some("audit.archive".into()),
            limit: 100,
            ..Default::default()
        })
        .await?;
    assert_eq!(archive_events.len(), made.len());

    // An altered archive (recompressed with one event changed) is found.
    let second = archive_dir.join(&made[1].file);
    let original = std::fs::read(&second)?;
    let text = String::from_utf8(zstd::decode_all(&original[..])?)?;
    let altered = zstd::encode_all(text.replacen("hello", "hellp", 1).as_bytes(), 3)?;
    std::fs::write(&second, &altered)?;
    let p = store
        .verify_audit_in(Some(&archive_dir))
        .await?
        .problem
        .ok_or("an altered archive went unnoticed")?;
    assert!(p.reason.contains("altered"), "{}", p.reason);
    // A missing one too.
    std::fs::remove_file(&second)?;
    let p = store
        .verify_audit_in(Some(&archive_dir))
        .await?
        .problem
        .ok_or("a missing archive went unnoticed")?;
    assert!(p.reason.contains("cannot be read"), "{}", p.reason);
    std::fs::write(&second, &original)?;
    assert!(store.verify_audit_in(Some(&archive_dir)).await?.ok);
    // And an archive the store no longer lists leaves a hole that is named.
    sqlx::query("DELETE FROM audit_archives WHERE first_seq = 1")
        .execute(store.pool())
        .await?;
    let p = store
        .verify_audit_in(Some(&archive_dir))
        .await?
        .problem
        .ok_or("an unlisted archive went unnoticed")?;
    assert!(p.reason.contains("in no listed archive"), "{}", p.reason);
    Ok(())
}

#[tokio::test]
async fn an_emptied_or_substituted_journal_segment_is_reported() -> TestResult {
    let (store, _url, _key, dir) = open(Backend::Sqlite).await?;
    let store = Arc::new(store);
    let jdir = dir.path().join("journal");
    std::fs::create_dir_all(&jdir)?;
    let events: Vec<Event> = (1..=6)
        .map(|i| Event::new("test.left", json!({"i": i})))
        .collect();
    std::fs::write(
        jdir.join("segment-00000000000000000001.jsonl"),
        testing::journal_segment(&store, 1, "run-c", 1, &events[..2]),
    )?;
    // Segment 2 zeroed, as if its lines never were.
    std::fs::write(
        jdir.join("segment-00000000000000000002.jsonl"),
        vec![0u8; 4096],
    )?;
    // Segment 3 from another run that does not start it.
    std::fs::write(
        jdir.join("segment-00000000000000000003.jsonl"),
        testing::journal_segment(&store, 3, "run-other", 5, &events[4..]),
    )?;
    let journal = unsynced_journal(&jdir, &store).await?;
    journal.ship_now().await?;
    let damage = store
        .list_audit(&AuditFilter {
            kind: Some("audit.journal_damaged".into()),
            limit: 10,
            ..Default::default()
        })
        .await?;
    let problems = damage
        .first()
        .ok_or("no audit.journal_damaged event")?
        .event
        .payload["problems"]
        .to_string();
    assert!(
        problems.contains("segment 2 is empty or zeroed"),
        "{problems}"
    );
    assert!(
        problems.contains("segment 3 belongs to another journal run"),
        "{problems}"
    );
    Ok(())
}

both_stores!(verify_while_archiving_never_cries_wolf);
async fn verify_while_archiving_never_cries_wolf(backend: Backend) -> TestResult {
    let (store, dir, _ids) = chain_of(backend, 40).await?;
    let store = Arc::new(store);
    let archive_dir = dir.path().join("archive");
    let worker = {
        let (store, archive_dir) = (store.clone(), archive_dir.clone());
        tokio::spawn(async move {
            for i in 0..60 {
                let events: Vec<Event> = (0..5)
                    .map(|j| Event::new("test.load", json!({"i": i, "j": j})))
                    .collect();
                store.append_audit_batch(&events).await?;
                if i % 3 == 0 {
                    store.archive_audit(&archive_dir, 20, 10).await?;
                }
            }
            Ok::<(), StoreError>(())
        })
    };
    let mut verified = 0;
    while !worker.is_finished() {
        let report = store.verify_audit_in(Some(&archive_dir)).await?;
        assert!(
            report.ok,
            "a false alarm while archiving: {:?}",
            report.problem
        );
        verified += 1;
    }
    worker.await??;
    assert!(store.verify_audit_in(Some(&archive_dir)).await?.ok);
    assert!(verified > 1);
    Ok(())
}

both_stores!(events_archived_since_shipping_are_not_chained_again_from_the_journal);
async fn events_archived_since_shipping_are_not_chained_again_from_the_journal(
    backend: Backend,
) -> TestResult {
    let (store, _url, _key, dir) = open(backend).await?;
    let store = Arc::new(store);
    let jdir = dir.path().join("journal");
    let archive_dir = dir.path().join("archive");
    let journal =
        warden_store::AuditJournal::open(&jdir, store.clone(), Default::default()).await?;
    for i in 0..30 {
        journal
            .append(Event::new("test.journaled", json!({"i": i})))
            .await?;
    }
    journal.ship_now().await?;
    // The oldest are archived out of the store while their lines are still in the
    // journal's current segment.
    while store.archive_audit(&archive_dir, 10, 6).await?.is_some() {}
    let journaled = AuditFilter {
        kind: Some("test.journaled".into()),
        limit: 100,
        ..Default::default()
    };
    let in_store = store.list_audit(&journaled).await?.len();
    assert!(in_store < 30, "nothing was archived");
    // A crash: the next start reads the segment back and must not chain the
    // archived events a second time.
    drop(journal);
    let journal =
        warden_store::AuditJournal::open(&jdir, store.clone(), Default::default()).await?;
    journal
        .append(Event::new("test.after-restart", json!({})))
        .await?;
    journal.ship_now().await?;
    assert_eq!(store.list_audit(&journaled).await?.len(), in_store);
    let report = store.verify_audit_in(Some(&archive_dir)).await?;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.events_checked, report.head_seq);
    // The run read back is done with: its mark is gone.
    let marks: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM gateway_state WHERE key LIKE 'journal.shipped/%'")
            .fetch_one(store.pool())
            .await?;
    assert_eq!(marks, 1, "only the current run's mark is left");
    Ok(())
}
