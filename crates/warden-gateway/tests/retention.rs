//! Retention through the running gateway: the audit chain's oldest events move into
//! archive files that verification still walks, and recordings over the configured
//! size are pruned with an event each.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::json;
use support::*;
use warden_store::Backend;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_events_are_archived_and_recordings_pruned_with_the_record_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store_url = warden_store::testing::fresh_url(Backend::Sqlite, dir.path())
        .await
        .unwrap();
    let mut config = base_config(dir.path(), store_url, vec![]);
    config.audit.keep_events = 30;
    config.audit.archive_events = 20;
    config.audit.retention_interval_secs = 1;
    config.recordings.max_total_bytes = 1;
    let recordings = config.recordings_dir();
    let archives = config.audit_archive_dir();
    let gw = TestGateway::with_config(config, dir).await;
    let (status, body) = gw
        .admin(
            "POST",
            "/api/connections",
            Some(
                json!({"name": "kept", "kind": "postgres", "target": "127.0.0.1:5432/postgres",
                        "username": "warden_t_scram", "secret": "scram-pw-1",
                        "allowed_groups": ["dev"], "tls": {"mode": "disable"}}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let key = gw.key_for("ret", &["dev"]).await;
    let port = gw
        .gateway
        .listener(warden_core::ConnectionKind::Postgres)
        .unwrap()
        .port();
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=ret dbname=kept password={key}"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    for i in 0..40 {
        client.simple_query(&format!("SELECT {i}")).await.unwrap();
    }
    drop(client);
    let _ = conn.await;

    // The session's recording is pruned (all recordings exceed 1 byte), audited.
    let pruned = eventually("the recording to be pruned", || async {
        let events = gw.audit_events("recording.prune").await;
        (!events.is_empty()).then_some(events)
    })
    .await;
    let session = pruned[0]["event"]["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(pruned[0]["event"]["payload"]["bytes"].as_u64().unwrap() > 0);
    let (_, view) = gw
        .admin("GET", &format!("/api/sessions/{session}"), None)
        .await;
    assert!(view["recording"].is_null(), "{view}");
    let left: Vec<String> = std::fs::read_dir(&recordings)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(&session))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // The chain's oldest events went to archive files; verification walks them.
    eventually("an archive", || async {
        let events = gw.audit_events("audit.archive").await;
        (!events.is_empty()).then_some(())
    })
    .await;
    assert!(std::fs::read_dir(&archives).unwrap().count() >= 1);
    let (status, report) = gw.admin("GET", "/api/audit/verify", None).await;
    assert_eq!(status, 200);
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["events_checked"], report["head_seq"], "{report}");
}

/// Two gateways on one data directory would take each other's sessions and journal
/// for a dead run's: the second is refused while the first runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_gateway_on_the_same_data_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store_url = warden_store::testing::fresh_url(Backend::Sqlite, dir.path())
        .await
        .unwrap();
    let config = base_config(dir.path(), store_url, vec![]);
    let first = warden_gateway::Gateway::start(config.clone())
        .await
        .unwrap();
    let second = warden_gateway::Gateway::start(config.clone()).await;
    let Err(e) = second else {
        panic!("a second gateway started on the same data directory")
    };
    assert!(e.to_string().contains("another gateway is running"), "{e}");
    first.shutdown().await;
    let again = warden_gateway::Gateway::start(config).await.unwrap();
    again.shutdown().await;
}
