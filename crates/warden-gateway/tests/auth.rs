//! Authentication against a real OpenID provider and a test-controlled issuer: every
//! kind of bad token is refused with 401, a reason code, and an audit event.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use std::sync::atomic::Ordering;
use support::*;
use warden_store::Backend;

async fn assert_refused(gw: &TestGateway, token: &str, code: &str) {
    let (status, body) = gw.call("GET", "/api/me", Some(token), None).await;
    assert_eq!(status, 401, "expected 401 {code}, got {status} {body}");
    assert_eq!(body["error"]["code"], code, "{body}");
}

both_stores!(provider_tokens_authenticate_with_groups);
async fn provider_tokens_authenticate_with_groups(backend: Backend) {
    let gw = TestGateway::start(backend, None).await;
    let token = provider_token("ci-deployer", PROVIDER_AUDIENCE).await;
    let (status, me) = gw.call("GET", "/api/me", Some(&token), None).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["subject"], "ci-deployer");
    assert_eq!(me["groups"], json!(["dba", "ci"]));
    assert_eq!(
        me["method"],
        json!({"type": "oidc", "issuer": provider_issuer()})
    );
    assert_eq!(me["is_admin"], false);
}

// Every bad token named by the foundation issue, each with its own code.
both_stores!(bad_tokens_are_refused_with_reasons_and_audited);
async fn bad_tokens_are_refused_with_reasons_and_audited(backend: Backend) {
    let issuer = TestIssuer::start().await;
    let gw = TestGateway::start(backend, Some(&issuer)).await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();

    // Sanity: the test issuer's good token works, so failures below are the point.
    let good = issuer.sign("test-1", &issuer.claims("alice", &["developers"]));
    assert_eq!(gw.call("GET", "/api/me", Some(&good), None).await.0, 200);

    let mut tried: Vec<(&str, String)> = Vec::new();

    // Wrong audience, from the real provider (a token for another resource).
    tried.push((
        "invalid_audience",
        provider_token("ci-deployer", "urn:other").await,
    ));

    // Tampered: a real token whose payload was edited to claim the admin group.
    let real = provider_token("dev-alice", PROVIDER_AUDIENCE).await;
    let parts: Vec<&str> = real.split('.').collect();
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    claims["groups"] = json!(["warden-admins"]);
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts[2]
    );
    tried.push(("invalid_signature", forged));

    // Not yet valid.
    let mut c = issuer.claims("alice", &[]);
    c["nbf"] = json!(now + 3600);
    tried.push(("token_not_yet_valid", issuer.sign("test-1", &c)));

    // Expired long ago.
    let mut c = issuer.claims("alice", &[]);
    c["exp"] = json!(now - 3600);
    tried.push(("token_expired", issuer.sign("test-1", &c)));

    // An issuer nobody configured, signed with a real key.
    let mut c = issuer.claims("alice", &[]);
    c["iss"] = json!("https://evil.example");
    tried.push(("unknown_issuer", issuer.sign("test-1", &c)));

    // alg: none.
    tried.push((
        "unsupported_algorithm",
        unsigned_token(&issuer.claims("alice", &["warden-admins"])),
    ));

    // HMAC keyed with public material (algorithm confusion).
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("test-1".into());
    let hs = jsonwebtoken::encode(
        &header,
        &issuer.claims("alice", &["warden-admins"]),
        &jsonwebtoken::EncodingKey::from_secret(b"public-key-bytes").unwrap(),
    )
    .unwrap();
    tried.push(("unsupported_algorithm", hs));

    // A key the issuer does not publish.
    let stray = rcgen::KeyPair::generate().unwrap();
    tried.push((
        "unknown_kid",
        sign_es256(&stray, Some("not-published"), &issuer.claims("alice", &[])),
    ));

    // A published kid, but the signature made with another key.
    tried.push((
        "invalid_signature",
        sign_es256(&stray, Some("test-1"), &issuer.claims("alice", &[])),
    ));

    // Garbage and unknown API keys.
    tried.push(("malformed_token", "a.b.c".into()));
    tried.push(("invalid_api_key", "wdn_nosuchkey_0123456789abcdef".into()));
    tried.push((
        "invalid_api_key",
        "some-opaque-guess-of-the-admin-token".into(),
    ));

    for (code, token) in &tried {
        assert_refused(&gw, token, code).await;
    }

    // Revoked and expired API keys.
    let (status, key) = gw
        .admin(
            "POST",
            "/api/api-keys",
            Some(json!({"name": "ci", "groups": ["ci"], "ttl_secs": 3600})),
        )
        .await;
    assert_eq!(status, 201, "{key}");
    let revoked = key["token"].as_str().unwrap().to_string();
    assert_eq!(gw.call("GET", "/api/me", Some(&revoked), None).await.0, 200);
    let id = key["id"].as_str().unwrap();
    assert_eq!(
        gw.admin("DELETE", &format!("/api/api-keys/{id}"), None)
            .await
            .0,
        204
    );
    assert_refused(&gw, &revoked, "api_key_revoked").await;

    let (_, short) = gw
        .admin(
            "POST",
            "/api/api-keys",
            Some(json!({"name": "brief", "ttl_secs": 1})),
        )
        .await;
    let short = short["token"].as_str().unwrap().to_string();
    // A wrong secret for a real key id is refused without revealing key state.
    let (kid, _) = short.trim_start_matches("wdn_").split_once('_').unwrap();
    assert_refused(
        &gw,
        &format!("wdn_{kid}_{}", "0".repeat(64)),
        "invalid_api_key",
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_refused(&gw, &short, "api_key_expired").await;

    // An expired token from the real provider (its `short-lived` client gets 2 s tokens).
    let brief = provider_token("short-lived", PROVIDER_AUDIENCE).await;
    assert_eq!(gw.call("GET", "/api/me", Some(&brief), None).await.0, 200);
    tokio::time::sleep(std::time::Duration::from_millis(4200)).await;
    assert_refused(&gw, &brief, "token_expired").await;

    // No token and a non-bearer scheme.
    let resp = gw
        .http
        .get(format!("{}/api/me", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(
        resp.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    let resp = gw
        .http
        .get(format!("{}/api/me", gw.url))
        .basic_auth("admin", Some(ADMIN_TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    // Every refusal is in the audit log with its code, and no token text is.
    let failures = gw.audit_events("auth.failure").await;
    let codes: Vec<&str> = failures
        .iter()
        .map(|e| e["event"]["payload"]["code"].as_str().unwrap())
        .collect();
    for (code, _) in &tried {
        assert!(codes.contains(code), "{code} not audited: {codes:?}");
    }
    for code in [
        "api_key_revoked",
        "api_key_expired",
        "token_expired",
        "missing_token",
        "malformed_token",
    ] {
        assert!(codes.contains(&code), "{code} not audited: {codes:?}");
    }
    let log = serde_json::to_string(&failures).unwrap();
    for (_, token) in &tried {
        if let Some(sig) = token.rsplit('.').next().filter(|s| s.len() > 20) {
            assert!(
                !log.contains(sig),
                "a token signature leaked into the audit log"
            );
        }
    }
    assert!(!log.contains(&revoked) && !log.contains(&short) && !log.contains(ADMIN_TOKEN));
    assert!(
        log.contains("\"issuer\":\"https://evil.example\""),
        "claimed issuer recorded"
    );
    let (_, report) = gw.admin("GET", "/api/audit/verify", None).await;
    assert_eq!(report["ok"], true, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_refetch_is_rate_limited_and_rotation_is_picked_up() {
    let issuer = TestIssuer::start().await;
    let gw = TestGateway::start(Backend::Sqlite, Some(&issuer)).await;
    let good = issuer.sign("test-1", &issuer.claims("alice", &[]));
    assert_eq!(gw.call("GET", "/api/me", Some(&good), None).await.0, 200);
    assert_eq!(issuer.jwks_fetches.load(Ordering::SeqCst), 1);
    // Cached: more good tokens cause no fetch.
    for _ in 0..3 {
        assert_eq!(gw.call("GET", "/api/me", Some(&good), None).await.0, 200);
    }
    assert_eq!(issuer.jwks_fetches.load(Ordering::SeqCst), 1);

    // A burst of unknown kids triggers at most one refetch per interval (1 s here).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let stray = rcgen::KeyPair::generate().unwrap();
    for i in 0..10 {
        let t = sign_es256(
            &stray,
            Some(&format!("random-{i}")),
            &issuer.claims("alice", &[]),
        );
        assert_refused(&gw, &t, "unknown_kid").await;
    }
    assert_eq!(issuer.jwks_fetches.load(Ordering::SeqCst), 2);

    // Key rotation: a token signed by a newly published key is accepted after refetch.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let kid = issuer.rotate();
    let rotated = issuer.sign(&kid, &issuer.claims("alice", &[]));
    let (status, body) = gw.call("GET", "/api/me", Some(&rotated), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(issuer.jwks_fetches.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_issuer_fails_closed_with_503() {
    let dir = tempfile::tempdir().unwrap();
    let store_url = warden_store::testing::fresh_url(Backend::Sqlite, dir.path())
        .await
        .unwrap();
    // A loopback port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let config = base_config(dir.path(), store_url, vec![issuer_config(&url, "w")]);
    let gw = TestGateway::with_config(config, dir).await;
    let key = rcgen::KeyPair::generate().unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let token = sign_es256(
        &key,
        Some("k"),
        &json!({"iss": url, "aud": "w", "sub": "x", "exp": now + 60}),
    );
    let (status, body) = gw.call("GET", "/api/me", Some(&token), None).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "issuer_unavailable");
}

/// A configured admin token is the admin key of every gateway sharing the store:
/// revoked, a restart does not revive it; replaced by another, what the old one
/// registered and its open sessions go with it, on every gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_admin_token_revoked_or_replaced_stays_gone() {
    let store_url = warden_store::testing::fresh_postgres_url().await.unwrap();
    let config = |dir: &std::path::Path, token: &str| {
        let mut c = base_config(dir, store_url.clone(), vec![]);
        c.secrets.master_key = Some(
            "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc="
                .to_string()
                .into(),
        );
        c.admin_token = Some(token.to_string().into());
        c
    };
    let first = "first-admin-token-0123456789abcdef";
    let second = "second-admin-token-0123456789abcdef";
    let dir_a = tempfile::tempdir().unwrap();
    let a = TestGateway::with_config(config(dir_a.path(), first), dir_a).await;
    let (status, body) = a
        .call(
            "POST",
            "/api/connections",
            Some(first),
            Some(
                json!({"name": "adm", "kind": "postgres", "target": "127.0.0.1:5432/postgres",
                        "username": "warden_t_scram", "secret": "scram-pw-1",
                        "allowed_groups": ["warden-admins"], "tls": {"mode": "disable"}}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = a
        .call(
            "POST",
            "/api/ssh-keys",
            Some(first),
            Some(json!({"name": "laptop", "public_key":
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let port = a
        .gateway
        .listener(warden_core::ConnectionKind::Postgres)
        .unwrap()
        .port();
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=admin dbname=adm password={first}"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    client.simple_query("SELECT 1").await.unwrap();

    // Gateway B starts with another token: the first is replaced everywhere.
    let dir_b = tempfile::tempdir().unwrap();
    let b = TestGateway::with_config(config(dir_b.path(), second), dir_b).await;
    assert_refused(&a, first, "invalid_api_key").await;
    let (status, keys) = b
        .call("GET", "/api/ssh-keys?all=true", Some(second), None)
        .await;
    assert_eq!(status, 200, "{keys}");
    assert_eq!(keys, json!([]), "the old token's registration is gone");
    let ended = tokio::time::timeout(std::time::Duration::from_secs(30), conn)
        .await
        .expect("the old token's session to end")
        .unwrap()
        .unwrap_err();
    let message = ended.as_db_error().unwrap().message().to_string();
    assert!(
        message.contains("your API key admin was replaced"),
        "{message}"
    );

    // Revoked, a restart with the same token does not bring it back.
    let (status, _) = b
        .call("DELETE", "/api/api-keys/admin", Some(second), None)
        .await;
    assert_eq!(status, 204);
    assert_refused(&b, second, "api_key_revoked").await;
    let TestGateway { gateway, dir, .. } = b;
    gateway.shutdown().await;
    let b = TestGateway::with_config(config(dir.path(), second), dir).await;
    assert_refused(&b, second, "api_key_revoked").await;
}
