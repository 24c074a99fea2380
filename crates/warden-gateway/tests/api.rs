//! The REST API end to end over HTTP, on both store engines.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// Test clients write plain TCP, which holds back no unflushed bytes.
#![allow(clippy::disallowed_methods)]

mod support;

use serde_json::{Value, json};
use support::*;
use warden_core::{Session, SessionStatus, timefmt};
use warden_store::Backend;

const BACKEND_SECRET: &str = "Backend-Pa55word-that-must-never-leak";

fn pg_connection(name: &str, groups: &[&str]) -> Value {
    json!({
        "name": name, "kind": "postgres", "target": "127.0.0.1:5432", "username": "app",
        "secret": BACKEND_SECRET, "allowed_groups": groups,
        "policies": {"guardrails": ["no-drops"], "masking": ["pii"]},
        "description": "the billing database"
    })
}

both_stores!(connections_crud_and_visibility);
async fn connections_crud_and_visibility(backend: Backend) {
    let issuer = TestIssuer::start().await;
    let gw = TestGateway::start(backend, Some(&issuer)).await;
    let dba = issuer.sign("test-1", &issuer.claims("dana", &["dba"]));
    let dev = issuer.sign("test-1", &issuer.claims("devon", &["developers"]));

    let (status, created) = gw
        .admin(
            "POST",
            "/api/connections",
            Some(pg_connection("billing", &["dba"])),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["secret_kind"], "password");
    assert_eq!(created["tls"]["mode"], "verify");
    assert!(created.get("secret").is_none());
    let (status, _) = gw.admin("POST", "/api/connections", Some(json!({
        "name": "web", "kind": "http", "target": "https://internal.example/", "allowed_groups": ["developers"]
    }))).await;
    assert_eq!(status, 201);

    // Duplicate names conflict and change nothing.
    let mut dup = pg_connection("billing", &["developers"]);
    dup["target"] = json!("10.9.9.9:5432");
    let (status, body) = gw.admin("POST", "/api/connections", Some(dup)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("connection_exists"))
    );
    let (_, still) = gw.admin("GET", "/api/connections/billing", None).await;
    assert_eq!(still["target"], "127.0.0.1:5432");

    // Users see only what their groups allow; others' connections look absent.
    let names = |v: &Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(&gw.call("GET", "/api/connections", Some(&dba), None).await.1),
        ["billing"]
    );
    assert_eq!(
        names(&gw.call("GET", "/api/connections", Some(&dev), None).await.1),
        ["web"]
    );
    assert_eq!(
        names(&gw.admin("GET", "/api/connections", None).await.1),
        ["billing", "web"]
    );
    assert_eq!(
        gw.call("GET", "/api/connections/billing", Some(&dba), None)
            .await
            .0,
        200
    );
    let (status, body) = gw
        .call("GET", "/api/connections/billing", Some(&dev), None)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );

    // Only admins change connections; refusals are audited.
    let (status, body) = gw
        .call(
            "POST",
            "/api/connections",
            Some(&dba),
            Some(pg_connection("mine", &["dba"])),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    assert_eq!(
        gw.call("DELETE", "/api/connections/billing", Some(&dba), None)
            .await
            .0,
        403
    );
    let denied = gw.audit_events("access.denied").await;
    assert_eq!(denied.len(), 2);
    assert_eq!(denied[0]["event"]["identity"]["subject"], "dana");

    // PATCH: partial update, null clears, secret replaced or removed, name immutable.
    let (status, updated) = gw
        .admin("PATCH", "/api/connections/billing", Some(json!({"target": "db.internal:6432", "description": null, "allowed_groups": ["dba", "oncall"]})))
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["target"], "db.internal:6432");
    assert_eq!(updated["description"], Value::Null);
    assert_eq!(updated["username"], "app");
    assert_eq!(updated["secret_kind"], "password");
    let (status, _) = gw
        .admin("PATCH", "/api/connections/billing", Some(json!({"secret": "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n"})))
        .await;
    assert_eq!(status, 200);
    let (_, got) = gw.admin("GET", "/api/connections/billing", None).await;
    assert_eq!(got["secret_kind"], "private_key");
    let (_, cleared) = gw
        .admin(
            "PATCH",
            "/api/connections/billing",
            Some(json!({"secret": null})),
        )
        .await;
    assert_eq!(cleared["secret_kind"], Value::Null);
    let (status, body) = gw
        .admin(
            "PATCH",
            "/api/connections/billing",
            Some(json!({"name": "renamed"})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_body"))
    );
    let (status, _) = gw
        .admin(
            "PATCH",
            "/api/connections/nope",
            Some(json!({"target": "a:1"})),
        )
        .await;
    assert_eq!(status, 404);

    // Delete.
    assert_eq!(
        gw.admin("DELETE", "/api/connections/billing", None).await.0,
        204
    );
    assert_eq!(
        gw.admin("DELETE", "/api/connections/billing", None).await.0,
        404
    );
    assert_eq!(
        gw.admin("GET", "/api/connections/billing", None).await.0,
        404
    );

    let kinds: Vec<String> = gw
        .audit_events("connection.")
        .await
        .iter()
        .map(|e| e["event"]["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        kinds,
        [
            "connection.create",
            "connection.create",
            "connection.update",
            "connection.update",
            "connection.update",
            "connection.delete"
        ]
    );
}

both_stores!(bad_input_gets_clear_errors_and_changes_nothing);
async fn bad_input_gets_clear_errors_and_changes_nothing(backend: Backend) {
    let gw = TestGateway::start(backend, None).await;
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({"name": "Bad Name", "kind": "postgres", "target": "h:1"}),
            "invalid_connection",
            "lowercase",
        ),
        (
            json!({"name": "x", "kind": "redis", "target": "h:1"}),
            "invalid_body",
            "unknown variant",
        ),
        (
            json!({"name": "x", "kind": "postgres", "target": "no-port"}),
            "invalid_connection",
            "host:port or host:port/database (without one, the `postgres` database)",
        ),
        (
            json!({"name": "x", "kind": "postgres", "target": "h:99999"}),
            "invalid_connection",
            "port",
        ),
        (
            json!({"name": "x", "kind": "http", "target": "ftp://h"}),
            "invalid_connection",
            "URL",
        ),
        (
            json!({"name": "x", "kind": "postgres", "target": "h:1", "extra": true}),
            "invalid_body",
            "unknown field `extra`",
        ),
        (
            json!({"name": "x", "kind": "postgres"}),
            "invalid_body",
            "missing field `target`",
        ),
        (
            json!({"name": "x", "kind": "postgres", "target": "h:1", "username": "u", "secret": ""}),
            "invalid_connection",
            "secret",
        ),
        (
            json!({"name": "x", "kind": "postgres", "target": "h:1", "username": "u", "secret_kind": "password"}),
            "invalid_connection",
            "secret_kind",
        ),
        (
            json!({"name": "x", "kind": "postgres", "target": "h:1", "username": "u", "tls": {"mode": "verify", "ca_pem": "nope"}}),
            "invalid_connection",
            "ca_pem",
        ),
        // The gateway logs in as the connection's account, never the client's.
        (
            json!({"name": "x", "kind": "mysql", "target": "h:1"}),
            "invalid_connection",
            "username",
        ),
        (
            json!({"name": "x", "kind": "postgres", "target": "h:1", "tls": {"mode": "sometimes"}}),
            "invalid_body",
            "unknown variant",
        ),
    ];
    for (body, code, needle) in cases {
        let (status, resp) = gw
            .admin("POST", "/api/connections", Some(body.clone()))
            .await;
        assert_eq!(status, 400, "{body} -> {resp}");
        assert_eq!(resp["error"]["code"], code, "{body} -> {resp}");
        let message = resp["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{body} -> {message}");
    }

    let post_raw = |body: String, content_type: &'static str| {
        gw.http
            .post(format!("{}/api/connections", gw.url))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let resp = post_raw("{\"name\": \"x\", ".into(), "application/json")
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["code"],
        "malformed_json"
    );
    let resp = post_raw("{}".into(), "text/plain").await.unwrap();
    assert_eq!(resp.status(), 415);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["code"],
        "unsupported_media_type"
    );
    let huge = json!({"name": "x", "kind": "postgres", "target": "h:1", "description": "a".repeat(100 * 1024)});
    let resp = post_raw(huge.to_string(), "application/json")
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["code"],
        "payload_too_large"
    );

    // Nothing was created and nothing but refusals were audited.
    assert_eq!(gw.admin("GET", "/api/connections", None).await.1, json!([]));
    assert!(gw.audit_events("connection.").await.is_empty());

    // Unknown routes and methods answer in JSON too.
    let (status, body) = gw.admin("GET", "/api/nothing-here", None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, body) = gw.admin("PUT", "/api/connections", None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (405, Some("method_not_allowed"))
    );
    let (status, body) = gw.admin("GET", "/api/audit?limit=zero", None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_query"))
    );
    let (status, body) = gw.admin("GET", "/api/audit?since=yesterday", None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_query"))
    );
}

both_stores!(api_keys_issue_use_and_revoke);
async fn api_keys_issue_use_and_revoke(backend: Backend) {
    let gw = TestGateway::start(backend, None).await;
    let (status, issued) = gw
        .admin(
            "POST",
            "/api/api-keys",
            Some(json!({"name": "deploy-job", "groups": ["dba"], "ttl_secs": 600})),
        )
        .await;
    assert_eq!(status, 201, "{issued}");
    let token = issued["token"].as_str().unwrap().to_string();
    assert!(token.starts_with(&format!("wdn_{}_", issued["id"].as_str().unwrap())));
    assert_eq!(issued["subject"], "apikey:deploy-job");
    assert_eq!(issued["status"], "active");

    let (status, me) = gw.call("GET", "/api/me", Some(&token), None).await;
    assert_eq!(status, 200);
    assert_eq!(me["groups"], json!(["dba"]));
    assert!(me["expires_at"].is_string());
    // A key without the admin group cannot issue keys.
    assert_eq!(
        gw.call(
            "POST",
            "/api/api-keys",
            Some(&token),
            Some(json!({"name": "x"}))
        )
        .await
        .0,
        403
    );

    let (_, list) = gw.admin("GET", "/api/api-keys", None).await;
    let text = list.to_string();
    assert!(
        !text.contains(&token[token.len() - 64..]),
        "a key secret was listed"
    );
    assert!(!text.contains("secret_hash"));
    assert_eq!(list.as_array().unwrap().len(), 2); // bootstrap admin + this one

    let (status, body) = gw
        .admin(
            "POST",
            "/api/api-keys",
            Some(json!({"name": "forever", "ttl_secs": 999_999_999})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_api_key_request"))
    );

    let id = issued["id"].as_str().unwrap();
    assert_eq!(
        gw.admin("DELETE", &format!("/api/api-keys/{id}"), None)
            .await
            .0,
        204
    );
    assert_eq!(
        gw.admin("DELETE", "/api/api-keys/doesnotexist", None)
            .await
            .0,
        404
    );
    let (_, list) = gw.admin("GET", "/api/api-keys", None).await;
    let revoked = list
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id)
        .unwrap();
    assert_eq!(revoked["status"], "revoked");
    assert_eq!(gw.call("GET", "/api/me", Some(&token), None).await.0, 401);
    let kinds: Vec<String> = gw
        .audit_events("api_key.")
        .await
        .iter()
        .map(|e| e["event"]["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        kinds,
        ["api_key.bootstrap", "api_key.create", "api_key.revoke"]
    );
}

both_stores!(secrets_never_appear_in_answers_events_or_the_database);
async fn secrets_never_appear_in_answers_events_or_the_database(backend: Backend) {
    let gw = TestGateway::start(backend, None).await;
    let mut answers = String::new();
    let (_, a) = gw
        .admin(
            "POST",
            "/api/connections",
            Some(pg_connection("billing", &["dba"])),
        )
        .await;
    answers += &a.to_string();
    let (_, a) = gw
        .admin(
            "PATCH",
            "/api/connections/billing",
            Some(json!({"secret": format!("{BACKEND_SECRET}-v2")})),
        )
        .await;
    answers += &a.to_string();
    for path in [
        "/api/connections",
        "/api/connections/billing",
        "/api/audit?limit=1000",
        "/api/api-keys",
        "/api/me",
        "/api/openapi.json",
    ] {
        answers += &gw.admin("GET", path, None).await.1.to_string();
    }
    assert!(answers.contains("billing"));
    assert!(
        !answers.contains(BACKEND_SECRET),
        "backend secret in an API answer"
    );
    assert!(
        !answers.contains(ADMIN_TOKEN),
        "admin token in an API answer"
    );

    // The store holds the secret sealed: not in any table, as text.
    let url = gw.gateway.store();
    let (kind, secret) = url.connection_secret("billing").await.unwrap().unwrap();
    assert_eq!(
        (kind, secret.expose().as_str()),
        (
            warden_core::SecretKind::Password,
            format!("{BACKEND_SECRET}-v2").as_str()
        )
    );
    if backend == Backend::Sqlite {
        // Every file under the data directory: database, journal, recordings.
        let mut raw = Vec::new();
        let mut paths = vec![gw.dir.path().to_path_buf()];
        while let Some(p) = paths.pop() {
            if p.is_dir() {
                paths.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            } else {
                raw.extend(std::fs::read(&p).unwrap());
            }
        }
        let haystack = String::from_utf8_lossy(&raw);
        assert!(haystack.contains("billing"), "database files were read");
        assert!(
            !haystack.contains(BACKEND_SECRET),
            "backend secret stored in clear"
        );
        assert!(
            !haystack.contains(ADMIN_TOKEN),
            "admin token stored in clear"
        );
    }
}

both_stores!(audit_log_filters_and_verifies_over_http);
async fn audit_log_filters_and_verifies_over_http(backend: Backend) {
    let issuer = TestIssuer::start().await;
    let gw = TestGateway::start(backend, Some(&issuer)).await;
    for name in ["a", "b", "c"] {
        gw.admin(
            "POST",
            "/api/connections",
            Some(pg_connection(name, &["dba"])),
        )
        .await;
    }
    let (_, page) = gw.admin("GET", "/api/audit?connection=b", None).await;
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["event"]["kind"], "connection.create");
    assert_eq!(events[0]["event"]["identity"]["subject"], "admin");

    let (_, page) = gw
        .admin("GET", "/api/audit?kind=connection.create&limit=2", None)
        .await;
    assert_eq!(page["events"].as_array().unwrap().len(), 2);
    let next = page["next_after_seq"].as_i64().unwrap();
    let (_, page) = gw
        .admin(
            "GET",
            &format!("/api/audit?kind=connection.create&limit=2&after_seq={next}"),
            None,
        )
        .await;
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
    assert_eq!(page["next_after_seq"], Value::Null);

    // The newest first, and back from there.
    let seqs = |page: &Value| -> Vec<i64> {
        page["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_i64().unwrap())
            .collect()
    };
    let (_, all) = gw
        .admin("GET", "/api/audit?kind=connection.create", None)
        .await;
    let mut newest_first = seqs(&all);
    newest_first.reverse();
    let (_, page) = gw
        .admin(
            "GET",
            "/api/audit?kind=connection.create&limit=2&order=newest",
            None,
        )
        .await;
    assert_eq!(seqs(&page), newest_first[..2]);
    let before = page["next_before_seq"].as_i64().unwrap();
    let (_, page) = gw
        .admin(
            "GET",
            &format!("/api/audit?kind=connection.create&limit=2&order=newest&before_seq={before}"),
            None,
        )
        .await;
    assert_eq!(seqs(&page), newest_first[2..]);
    assert!(page.get("next_before_seq").is_none());
    let (status, body) = gw.admin("GET", "/api/audit?order=sideways", None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_query"))
    );

    let (_, page) = gw.admin("GET", "/api/audit?subject=admin", None).await;
    assert_eq!(page["events"].as_array().unwrap().len(), 3);
    let future = timefmt::rfc3339(timefmt::now() + time::Duration::hours(1));
    let (_, page) = gw
        .admin("GET", &format!("/api/audit?since={future}"), None)
        .await;
    assert_eq!(page["events"], json!([]));

    // Non-admins may not read the audit log.
    let user = issuer.sign("test-1", &issuer.claims("eve", &["dba"]));
    assert_eq!(gw.call("GET", "/api/audit", Some(&user), None).await.0, 403);
    assert_eq!(
        gw.call("GET", "/api/audit/verify", Some(&user), None)
            .await
            .0,
        403
    );

    let (_, report) = gw.admin("GET", "/api/audit/verify", None).await;
    assert_eq!(report["ok"], true, "{report}");
    assert!(report["events_checked"].as_i64().unwrap() >= 5);
}

both_stores!(sessions_api_shows_each_user_their_own);
async fn sessions_api_shows_each_user_their_own(backend: Backend) {
    let issuer = TestIssuer::start().await;
    let gw = TestGateway::start(backend, Some(&issuer)).await;
    let store = gw.gateway.store();
    let mut ids = Vec::new();
    for (subject, conn) in [("alice", "billing"), ("bob", "billing"), ("alice", "web")] {
        let s = Session {
            id: uuid::Uuid::now_v7(),
            connection: conn.into(),
            protocol: "postgres".into(),
            subject: subject.into(),
            groups: vec!["dba".into()],
            client_addr: Some("127.0.0.1:40000".into()),
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
        store.create_session(&s, None).await.unwrap();
        ids.push(s.id);
    }
    store
        .end_session(
            ids[0],
            SessionStatus::Closed,
            Some("client quit"),
            timefmt::now(),
        )
        .await
        .unwrap();

    let (_, all) = gw.admin("GET", "/api/sessions", None).await;
    assert_eq!(all.as_array().unwrap().len(), 3);
    let (_, billing) = gw
        .admin("GET", "/api/sessions?connection=billing", None)
        .await;
    assert_eq!(billing.as_array().unwrap().len(), 2);
    let (_, active) = gw.admin("GET", "/api/sessions?status=active", None).await;
    assert_eq!(active.as_array().unwrap().len(), 2);

    let alice = issuer.sign("test-1", &issuer.claims("alice", &["dba"]));
    let (_, mine) = gw
        .call("GET", "/api/sessions?subject=bob", Some(&alice), None)
        .await;
    assert!(
        mine.as_array()
            .unwrap()
            .iter()
            .all(|s| s["subject"] == "alice")
    );
    assert_eq!(mine.as_array().unwrap().len(), 2);
    let (status, one) = gw
        .call(
            "GET",
            &format!("/api/sessions/{}", ids[0]),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(one["status"], "closed");
    assert_eq!(one["end_reason"], "client quit");
    assert_eq!(
        gw.call(
            "GET",
            &format!("/api/sessions/{}", ids[1]),
            Some(&alice),
            None
        )
        .await
        .0,
        404
    );
    assert_eq!(
        gw.admin("GET", "/api/sessions/not-a-uuid", None).await.0,
        404
    );
    assert_eq!(
        gw.admin("GET", "/api/sessions?status=weird", None).await.0,
        400
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_openapi() {
    let gw = TestGateway::start(Backend::Sqlite, None).await;
    assert_eq!(
        gw.call("GET", "/healthz", None, None).await,
        (200, json!({"status": "ok"}))
    );
    assert_eq!(
        gw.call("GET", "/readyz", None, None).await,
        (200, json!({"status": "ready"}))
    );
    let (status, spec) = gw.call("GET", "/api/openapi.json", None, None).await;
    assert_eq!(status, 200);
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    let paths = spec["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/api/connections", &["get", "post"][..]),
        ("/api/connections/{name}", &["get", "patch", "delete"]),
        ("/api/api-keys", &["get", "post"]),
        ("/api/api-keys/{id}", &["delete"]),
        ("/api/audit", &["get"]),
        ("/api/audit/verify", &["get"]),
        ("/api/sessions", &["get"]),
        ("/api/sessions/{id}", &["get"]),
        ("/api/me", &["get"]),
        ("/healthz", &["get"]),
        ("/readyz", &["get"]),
    ] {
        for m in methods {
            assert!(
                paths.get(path).and_then(|p| p.get(*m)).is_some(),
                "{m} {path} missing from the spec"
            );
        }
    }
    let schemas = spec["components"]["schemas"].as_object().unwrap();
    for s in [
        "Connection",
        "ConnectionCreate",
        "ErrorBody",
        "AuditEntry",
        "VerifyReport",
        "Session",
    ] {
        assert!(schemas.contains_key(s), "schema {s} missing");
    }
    assert!(spec["components"]["securitySchemes"]["bearer"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_on_the_api_listener() {
    let dir = tempfile::tempdir().unwrap();
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert_path = dir.path().join("api.crt");
    let key_path = dir.path().join("api.key");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let store_url = warden_store::testing::fresh_url(Backend::Sqlite, dir.path())
        .await
        .unwrap();
    let mut config = base_config(dir.path(), store_url, vec![]);
    config.api.tls_cert = Some(cert_path);
    config.api.tls_key = Some(key_path);
    let gw = TestGateway::with_config(config, dir).await;
    assert!(gw.url.starts_with("https://"));

    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let resp = client
        .get(format!("{}/api/me", gw.url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    // Plain HTTP to the TLS port gets nothing.
    let plain = gw.url.replace("https://", "http://");
    assert!(reqwest::get(format!("{plain}/healthz")).await.is_err());
    // The gateway keeps serving after that bad client.
    assert_eq!(
        client
            .get(format!("{}/healthz", gw.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_wire_ends_that_connection_only() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = TestGateway::start(Backend::Sqlite, None).await;
    let addr = gw.gateway.api_addr();
    let payloads: [&[u8]; 4] = [
        b"\x00\x01\x02\x03\xff\xfe garbage\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n",
        b"POST /api/connections HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\nzz\r\n",
        b"GET /api/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\nConnection: close\r\n\r\n",
    ];
    for p in payloads {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(p).await.unwrap();
        let mut buf = Vec::new();
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        // Either a 4xx answer or a closed connection; never a 2xx.
        let head = String::from_utf8_lossy(&buf);
        assert!(!head.starts_with("HTTP/1.1 2"), "{head}");
    }
    assert_eq!(gw.admin("GET", "/api/me", None).await.0, 200);
}

both_stores!(policies_api_manages_sets_and_evaluates);
async fn policies_api_manages_sets_and_evaluates(backend: Backend) {
    let gw = TestGateway::start(backend, None).await;

    // Config-file sets are listed, read-only.
    let (status, list) = gw.admin("GET", "/api/policies", None).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["guardrails"][0]["name"], "no-drops");
    assert_eq!(list["guardrails"][0]["source"], "config");
    assert_eq!(list["masking"][0]["name"], "pii");
    let (status, body) = gw
        .admin(
            "PUT",
            "/api/policies/guardrails/no-drops",
            Some(json!({"rules": []})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("policy_read_only"))
    );

    // API sets: validated, created, replaced.
    let reviews = json!({"rules": [{"name": "writes", "sql_statements": ["dml"]}]});
    let (status, body) = gw
        .admin(
            "PUT",
            "/api/policies/guardrails/risky-writes",
            Some(reviews.clone()),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    // The same set again changes nothing: nothing stored, no event.
    let (status, again) = gw
        .admin(
            "PUT",
            "/api/policies/guardrails/risky-writes",
            Some(reviews),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(again["changes"], json!([]), "{again}");
    for (bad, needle) in [
        (json!({"rules": [{"name": "r"}]}), "exactly one matcher"),
        (
            json!({"rules": [{"name": "r", "sql_statements": ["explode"]}]}),
            "unknown SQL statement kind",
        ),
        (json!({"name": "other", "rules": []}), "must match the path"),
        (json!({"rules": [], "surprise": 1}), "unknown field"),
    ] {
        let (status, body) = gw
            .admin("PUT", "/api/policies/guardrails/x", Some(bad.clone()))
            .await;
        assert_eq!(status, 400, "{bad} -> {body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(needle),
            "{bad} -> {body}"
        );
    }
    let (status, body) = gw
        .admin(
            "PUT",
            "/api/policies/masking/ids",
            Some(
                json!({"custom": [{"name": "emp", "regex": "EMP-[0-9]{6}"}], "style": "partial:2"}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = gw
        .admin(
            "PUT",
            "/api/policies/masking/bad",
            Some(json!({"custom": [{"name": "x", "regex": "("}]})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        gw.admin("GET", "/api/policies/masking/ids", None).await.1["source"],
        "api"
    );
    assert_eq!(
        gw.admin("GET", "/api/policies/nonsense/ids", None).await.0,
        404
    );

    // Connections may attach only sets that exist.
    let mut conn = pg_connection("billing", &["dba"]);
    conn["policies"] =
        json!({"guardrails": ["no-drops"], "reviews": ["risky-writes"], "masking": ["pii", "ids"]});
    assert_eq!(
        gw.admin("POST", "/api/connections", Some(conn)).await.0,
        201
    );
    let (status, body) = gw
        .admin(
            "PATCH",
            "/api/connections/billing",
            Some(json!({"policies": {"masking": ["typo"]}})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("unknown_policy"))
    );

    // Evaluate against the connection's sets.
    let eval = |body: Value| gw.admin("POST", "/api/policies/evaluate", Some(body));
    let (_, r) = eval(json!({"connection": "billing", "sql": "SELECT 1; DROP TABLE users"})).await;
    assert_eq!(r["decision"]["outcome"], "deny", "{r}");
    assert_eq!(r["decision"]["rule"], "no-drops/no-ddl");
    let (_, r) =
        eval(json!({"connection": "billing", "sql": "UPDATE t SET a = 1 WHERE id = 2"})).await;
    assert_eq!(
        r["decision"],
        json!({"outcome": "review", "rule": "risky-writes/writes"})
    );
    let (_, r) = eval(json!({"connection": "billing", "sql": "SELECT * FROM t"})).await;
    assert_eq!(r["decision"], json!({"outcome": "allow"}));
    let (_, r) = eval(json!({"connection": "billing", "values": [
        {"value": "mail bob@example.com, card 4111 1111 1111 1111"},
        {"column": "public.people.ssn", "value": "078-05-1120"},
        {"value": "badge EMP-123456"},
        {"value": "nothing here"},
        {"column": "orders.shipped_at", "kind": "temporal", "value": "2026-11-29 10:00:00+00"},
        {"column": "orders.card", "kind": "number", "value": "4111111111111111"},
    ]}))
    .await;
    assert_eq!(
        r["masked"][0]["value"], "mail [redacted:email], card [redacted:card_number]",
        "{r}"
    );
    assert_eq!(r["masked"][0]["found"], json!(["email", "card_number"]));
    assert_eq!(r["masked"][1]["value"], "[redacted:column]");
    assert_eq!(r["masked"][2]["value"], "badge ***-****56");
    assert_eq!(r["masked"][3]["value"], "nothing here");
    assert_eq!(
        r["masked"][4]["found"],
        json!([]),
        "temporal columns are not searched"
    );
    assert_eq!(
        r["masked"][5]["value"], "[redacted:card_number]",
        "numbers are"
    );
    let (status, r) =
        eval(json!({"policies": {"guardrails": ["missing"]}, "sql": "SELECT 1"})).await;
    assert_eq!(
        (status, r["error"]["code"].as_str()),
        (400, Some("unknown_policy"))
    );

    // A set in use cannot be deleted; once detached it can.
    let (status, body) = gw.admin("DELETE", "/api/policies/masking/ids", None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("policy_in_use"))
    );
    assert_eq!(
        gw.admin(
            "PATCH",
            "/api/connections/billing",
            Some(json!({"policies": {"masking": ["pii"]}}))
        )
        .await
        .0,
        200
    );
    assert_eq!(
        gw.admin("DELETE", "/api/policies/masking/ids", None)
            .await
            .0,
        204
    );
    assert_eq!(
        gw.admin("DELETE", "/api/policies/masking/ids", None)
            .await
            .0,
        404
    );
    assert_eq!(
        gw.admin("DELETE", "/api/policies/guardrails/no-drops", None)
            .await
            .0,
        409
    );

    // Every change is audited, and the chain holds.
    let kinds: Vec<String> = gw
        .audit_events("policy.")
        .await
        .iter()
        .map(|e| e["event"]["kind"].as_str().unwrap().to_string())
        .collect();
    // Detaching `ids` from billing took masking away: that is recorded too.
    assert_eq!(
        kinds,
        [
            "policy.put",
            "policy.put",
            "policy.weakened",
            "policy.delete"
        ]
    );
    assert_eq!(
        gw.admin("GET", "/api/audit/verify", None).await.1["ok"],
        true
    );

    // Non-admins may not manage or evaluate policies.
    let (_, key) = gw
        .admin(
            "POST",
            "/api/api-keys",
            Some(json!({"name": "u", "groups": ["dba"]})),
        )
        .await;
    let user = key["token"].as_str().unwrap();
    assert_eq!(
        gw.call("GET", "/api/policies", Some(user), None).await.0,
        403
    );
    assert_eq!(
        gw.call(
            "POST",
            "/api/policies/evaluate",
            Some(user),
            Some(json!({"sql": "SELECT 1"}))
        )
        .await
        .0,
        403
    );
}

/// The API listener has a door like the proxies': a client address at its limit of
/// connections is answered `503` naming the limit (recorded as `listener.refused`),
/// and a `warden connect` tunnel, which outlives the HTTP exchange that opened it,
/// holds its place for as long as it is open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_door_turns_away_a_client_at_its_limit_and_tunnels_count() {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = TestGateway::sqlite_with(|c| {
        c.connections.max_per_client = 2;
    })
    .await;
    let (status, _) = gw
        .admin(
            "POST",
            "/api/connections",
            Some(pg_connection("tun", &["dev"])),
        )
        .await;
    assert_eq!(status, 201);
    let token = gw.key_for("carol", &["dev"]).await;
    let api: std::net::SocketAddr = gw.url.trim_start_matches("http://").parse().unwrap();
    // From another loopback address than the test's own API client.
    let connect = || async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        socket.connect(api).await.unwrap()
    };
    let ask = |request: String| async move {
        let mut s = connect().await;
        s.write_all(request.as_bytes()).await.unwrap();
        let mut answer = vec![0; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut answer))
            .await
            .unwrap()
            .unwrap();
        (s, String::from_utf8_lossy(&answer[..n]).into_owned())
    };
    // A connection that holds a place: one the door turned away gets its 503 at
    // once, so it is opened again until none comes (a connection closed just before
    // may not have given its place back yet).
    let hold = || async move {
        loop {
            let mut s = connect().await;
            let mut byte = [0u8; 1];
            match tokio::time::timeout(Duration::from_secs(1), s.read(&mut byte)).await {
                Err(_) => return s,
                Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    };
    let health = "GET /healthz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".to_string();
    let (tunnel, opened) = ask(format!(
        "GET /api/connections/tun/tunnel HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\n\
         Upgrade: warden-tunnel\r\nAuthorization: Bearer {token}\r\n\r\n"
    ))
    .await;
    assert!(opened.starts_with("HTTP/1.1 101"), "{opened}");
    let held = hold().await;
    let (_, refused) = ask(health.clone()).await;
    assert!(
        refused.starts_with("HTTP/1.1 503") && refused.contains("client_limit"),
        "{refused}"
    );
    // The held socket lets go: one place is free, the tunnel still holds the other.
    drop(held);
    eventually("a place once the held connection closed", || async {
        let (_, answer) = ask(health.clone()).await;
        answer.starts_with("HTTP/1.1 200").then_some(())
    })
    .await;
    let second = hold().await;
    let (_, refused) = ask(health.clone()).await;
    assert!(
        refused.starts_with("HTTP/1.1 503"),
        "the tunnel lost its place: {refused}"
    );
    drop(tunnel);
    drop(second);
    eventually("places once the tunnel closed", || async {
        let (_, answer) = ask(health.clone()).await;
        answer.starts_with("HTTP/1.1 200").then_some(())
    })
    .await;
    // A connection that never sends a request is closed (after 30 s), freeing its
    // place: an idle socket cannot hold the door shut.
    let mut idle = connect().await;
    let (_, answer) = ask(health.clone()).await;
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "the idle one was turned away: {answer}"
    );
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(90), idle.read(&mut byte)).await;
    assert!(
        matches!(closed, Ok(Ok(0) | Err(_))),
        "an idle connection kept its place: {closed:?}"
    );
    let refusals = gw.audit_events("listener.refused").await;
    assert!(
        refusals
            .iter()
            .any(|e| e["event"]["payload"]["protocol"] == "api"
                && e["event"]["payload"]["client"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("127.0.0.2:"))),
        "{refusals:?}"
    );
}
