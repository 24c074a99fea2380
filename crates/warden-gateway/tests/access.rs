//! Just-in-time access, command reviews, webhooks and SIEM sinks, end to end: real
//! psql and tokio-postgres through the gateway to the machine's PostgreSQL, a
//! webhook receiver and syslog receivers run by the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use aws_lc_rs::hmac;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;
use tokio_postgres::NoTls;
use warden_store::Backend;

const BACKEND_PASSWORD: &str = "scram-pw-1";

/// A PostgreSQL connection for members of `dev`, reviewed by `sre`, with `access`
/// settings and policies `policies`.
async fn add_pg(gw: &TestGateway, name: &str, access: Value, policies: Value) {
    let (status, body) = gw
        .admin(
            "POST",
            "/api/connections",
            Some(json!({
                "name": name, "kind": "postgres", "target": "127.0.0.1:5432/postgres",
                "username": "warden_t_scram", "secret": BACKEND_PASSWORD,
                "allowed_groups": ["dev"], "tls": {"mode": "disable"},
                "policies": policies, "access": access,
            })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

async fn connect(
    gw: &TestGateway,
    db: &str,
    token: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    Ok(connect_watched(gw, db, token).await?.0)
}

/// Also returns the connection task, which ends with what the server said last
/// (such as a FATAL error sent while the client was idle).
async fn connect_watched(
    gw: &TestGateway,
    db: &str,
    token: &str,
) -> Result<
    (
        tokio_postgres::Client,
        tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    ),
    tokio_postgres::Error,
> {
    let port = gw
        .gateway
        .listener(warden_core::ConnectionKind::Postgres)
        .unwrap()
        .port();
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=anyone dbname={db} password={token}"),
        NoTls,
    )
    .await?;
    Ok((client, tokio::spawn(conn)))
}

/// Waits until the gateway ends an idle session and returns the FATAL error's
/// SQLSTATE and message.
async fn ended_by_gateway(
    client: tokio_postgres::Client,
    conn: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) -> (String, String) {
    let err = tokio::time::timeout(Duration::from_secs(30), conn)
        .await
        .expect("the gateway to end the session")
        .unwrap()
        .unwrap_err();
    assert!(client.simple_query("SELECT 1").await.is_err());
    db_error(&err)
}

fn db_error(e: &tokio_postgres::Error) -> (String, String) {
    match e.as_db_error() {
        Some(d) => (d.code().code().to_string(), d.message().to_string()),
        None => (String::new(), e.to_string()),
    }
}

async fn superuser() -> tokio_postgres::Client {
    let (admin, conn) = tokio_postgres::connect(
        "host=127.0.0.1 port=5432 user=postgres dbname=postgres",
        NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    admin
}

both_stores!(requests_need_distinct_reviewers_and_grants_end_sessions);
async fn requests_need_distinct_reviewers_and_grants_end_sessions(backend: Backend) {
    let gw = TestGateway::start(backend, None).await;
    add_pg(
        &gw,
        "prod",
        json!({"request_required": true, "reviewers": ["sre"], "approvals": 2}),
        json!({}),
    )
    .await;
    let alice = gw.key_for("alice", &["dev", "sre"]).await;
    let bob = gw.key_for("bob", &["sre"]).await;
    let carol = gw.key_for("carol", &["sre"]).await;
    let mallory = gw.key_for("mallory", &["dev"]).await;

    // No grant: refused, and told how to get one.
    let err = connect(&gw, "prod", &alice).await.err().unwrap();
    let (code, message) = db_error(&err);
    assert_eq!(code, "3D000", "{message}");
    assert!(message.contains("warden request prod"), "{message}");

    // Bad requests are refused with reasons.
    for (body, code) in [
        (
            json!({"connection": "prod", "duration": "9h", "reason": "x"}),
            "invalid_duration",
        ),
        (
            json!({"connection": "prod", "duration": "1h", "reason": " "}),
            "invalid_reason",
        ),
    ] {
        let (status, answer) = gw
            .call("POST", "/api/access-requests", Some(&alice), Some(body))
            .await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"]["code"], code);
    }
    let (status, _) = gw
        .call(
            "POST",
            "/api/access-requests",
            Some(&bob),
            Some(json!({"connection": "prod", "duration": "1h", "reason": "x"})),
        )
        .await;
    assert_eq!(status, 404, "bob is not in the connection's groups");

    let (status, request) = gw
        .call(
            "POST",
            "/api/access-requests",
            Some(&alice),
            Some(json!({"connection": "prod", "duration": "4s", "reason": "INC-42 fix a row"})),
        )
        .await;
    assert_eq!(status, 201, "{request}");
    assert_eq!(request["status"], "pending");
    let id = request["id"].as_str().unwrap().to_string();
    let approve = format!("/api/access-requests/{id}/approve");

    // Alice is a reviewer too, but not of her own request; mallory is no reviewer.
    let (status, answer) = gw.call("POST", &approve, Some(&alice), None).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (403, Some("self_approval"))
    );
    let (status, _) = gw
        .call(
            "GET",
            &format!("/api/access-requests/{id}"),
            Some(&mallory),
            None,
        )
        .await;
    assert_eq!(status, 404, "mallory cannot see it");
    let (status, answer) = gw
        .call("POST", &approve, Some(&bob), Some(json!({"comment": "ok"})))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "pending", "one of two approvals");
    let (status, answer) = gw.call("POST", &approve, Some(&bob), None).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (409, Some("already_approved"))
    );
    assert!(
        connect(&gw, "prod", &alice).await.is_err(),
        "not granted yet"
    );
    let (status, grant) = gw.call("POST", &approve, Some(&carol), None).await;
    assert_eq!(status, 200, "{grant}");
    assert_eq!(grant["status"], "approved");
    assert!(grant["ends_at"].is_string());

    // Granted: a session opens; when the grant ends, it is closed with 57P01.
    let (client, conn) = connect_watched(&gw, "prod", &alice).await.unwrap();
    client.simple_query("SELECT 1").await.unwrap();
    let (code, message) = ended_by_gateway(client, conn).await;
    assert_eq!(code, "57P01", "{message}");
    assert!(
        message.contains(&id) && message.contains("ended"),
        "{message}"
    );
    let err = connect(&gw, "prod", &alice).await.err().unwrap();
    assert_eq!(
        db_error(&err).0,
        "3D000",
        "a new session after the end is refused"
    );
    let expired = eventually("access.expire", || async {
        let e = gw.audit_events("access.expire").await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert_eq!(expired[0]["event"]["payload"]["request"], id.as_str());

    // One rejection ends a request.
    let (_, second) = gw
        .call(
            "POST",
            "/api/access-requests",
            Some(&alice),
            Some(json!({"connection": "prod", "duration": "1h", "reason": "again"})),
        )
        .await;
    let second = second["id"].as_str().unwrap().to_string();
    let (status, rejected) = gw
        .call(
            "POST",
            &format!("/api/access-requests/{second}/reject"),
            Some(&bob),
            Some(json!({"comment": "use the runbook"})),
        )
        .await;
    assert_eq!(
        (status, rejected["status"].as_str()),
        (200, Some("rejected"))
    );
    let (status, answer) = gw
        .call(
            "POST",
            &format!("/api/access-requests/{second}/approve"),
            Some(&carol),
            None,
        )
        .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (409, Some("not_pending"))
    );

    // Revocation closes open sessions at once.
    let (_, third) = gw
        .call(
            "POST",
            "/api/access-requests",
            Some(&alice),
            Some(json!({"connection": "prod", "duration": "1h", "reason": "long task"})),
        )
        .await;
    let third = third["id"].as_str().unwrap().to_string();
    for reviewer in [&bob, &carol] {
        let (status, _) = gw
            .call(
                "POST",
                &format!("/api/access-requests/{third}/approve"),
                Some(reviewer),
                None,
            )
            .await;
        assert_eq!(status, 200);
    }
    let (client, conn) = connect_watched(&gw, "prod", &alice).await.unwrap();
    client.simple_query("SELECT 1").await.unwrap();
    let (status, revoked) = gw
        .call(
            "POST",
            &format!("/api/access-requests/{third}/revoke"),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(
        (status, revoked["status"].as_str()),
        (200, Some("revoked")),
        "{revoked}"
    );
    let (code, message) = ended_by_gateway(client, conn).await;
    assert_eq!(code, "57P01", "{message}");
    assert!(message.contains("revoked by bob"), "{message}");

    // Every step is in the audit log, attributed.
    for kind in [
        "access.request",
        "access.approve",
        "access.grant",
        "access.reject",
        "access.revoke",
    ] {
        assert!(!gw.audit_events(kind).await.is_empty(), "{kind}");
    }
    let denied = gw.audit_events("access.denied").await;
    assert!(
        denied
            .iter()
            .any(|e| e["event"]["payload"]["reason"] == "no approved access request")
    );
    // Alice sees her requests; bob sees those he reviews; mallory sees none.
    let (_, mine) = gw
        .call("GET", "/api/access-requests?mine=true", Some(&alice), None)
        .await;
    assert_eq!(mine.as_array().unwrap().len(), 3);
    let (_, pending) = gw
        .call(
            "GET",
            "/api/access-requests?status=pending",
            Some(&bob),
            None,
        )
        .await;
    assert!(pending.as_array().unwrap().is_empty());
    let (_, none) = gw
        .call("GET", "/api/access-requests", Some(&mallory), None)
        .await;
    assert!(none.as_array().unwrap().is_empty());
}

/// A table only this test uses.
async fn review_table(name: &str) {
    let admin = superuser().await;
    admin
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {name}; CREATE TABLE {name} (id int primary key, v text); \
             INSERT INTO {name} SELECT g, 'row ' || g FROM generate_series(1, 10) g; \
             GRANT ALL ON {name} TO warden_t_scram;"
        ))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_statements_wait_for_their_review() {
    let gw = TestGateway::start(Backend::Sqlite, None).await;
    add_pg(
        &gw,
        "reviewed",
        json!({"reviewers": ["sre"], "review_timeout_secs": 60}),
        json!({"reviews": ["held-for-review"]}),
    )
    .await;
    add_pg(
        &gw,
        "hasty",
        json!({"reviewers": ["sre"], "review_timeout_secs": 2}),
        json!({"reviews": ["held-for-review"]}),
    )
    .await;
    let alice = gw.key_for("alice", &["dev"]).await;
    let bob = gw.key_for("bob", &["sre"]).await;
    review_table("warden_review_t").await;
    let port = gw
        .gateway
        .listener(warden_core::ConnectionKind::Postgres)
        .unwrap()
        .port();

    // psql's DELETE waits; the notice says where to approve; bob approves; it runs.
    let delete = "DELETE FROM warden_review_t WHERE id = 1";
    let psql = tokio::process::Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={port} dbname=reviewed user=alice sslmode=disable"
        ))
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-c", delete])
        .env("PGPASSWORD", &alice)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let id = gw.pending_review(&bob, delete).await;
    // Meanwhile other sessions, even alice's own, are not blocked.
    let other = connect(&gw, "reviewed", &alice).await.unwrap();
    let rows = other
        .query_one("SELECT count(*) FROM warden_review_t", &[])
        .await
        .unwrap();
    assert_eq!(rows.get::<_, i64>(0), 10, "the held DELETE has not run");
    // Nobody approves their own.
    let (status, answer) = gw
        .call(
            "POST",
            &format!("/api/reviews/{id}/approve"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (403, Some("self_approval"))
    );
    let (status, approved) = gw
        .call(
            "POST",
            &format!("/api/reviews/{id}/approve"),
            Some(&bob),
            Some(json!({"comment": "ticket 7"})),
        )
        .await;
    assert_eq!(
        (status, approved["status"].as_str()),
        (200, Some("approved")),
        "{approved}"
    );
    let out = psql.wait_with_output().await.unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("DELETE 1"), "{stdout}");
    assert!(
        stderr.contains(&format!("review {id}")) && stderr.contains("/approve"),
        "the notice names the review and where to approve it: {stderr}"
    );
    let rows = other
        .query_one("SELECT count(*) FROM warden_review_t", &[])
        .await
        .unwrap();
    assert_eq!(rows.get::<_, i64>(0), 9);
    // The audited statement names the review that let it run.
    let queries = gw.audit_events("pg.query").await;
    let run = queries
        .iter()
        .find(|e| e["event"]["payload"]["sql"] == delete)
        .unwrap();
    assert_eq!(run["event"]["payload"]["review"], id.as_str());
    assert_eq!(run["event"]["decision"]["outcome"], "allow");

    // Rejected: the client gets 42501 naming who rejected it; the session goes on.
    let held = tokio::spawn({
        let client = connect(&gw, "reviewed", &alice).await.unwrap();
        async move {
            let r = client
                .simple_query("DELETE FROM warden_review_t WHERE id = 2")
                .await;
            (
                r.err().map(|e| db_error(&e)),
                client.simple_query("SELECT 1").await.is_ok(),
            )
        }
    });
    let id2 = gw
        .pending_review(&bob, "DELETE FROM warden_review_t WHERE id = 2")
        .await;
    let (status, _) = gw
        .call(
            "POST",
            &format!("/api/reviews/{id2}/reject"),
            Some(&bob),
            Some(json!({"comment": "not during the freeze"})),
        )
        .await;
    assert_eq!(status, 200);
    let (error, usable) = held.await.unwrap();
    let (code, message) = error.expect("the rejected DELETE fails");
    assert_eq!(code, "42501");
    assert!(
        message.contains("rejected by bob: not during the freeze"),
        "{message}"
    );
    assert!(usable, "the session stays usable");

    // The extended protocol: the Parse is held; once approved, it runs bound.
    let prepared = "DELETE FROM warden_review_t WHERE id = $1";
    let held = tokio::spawn({
        let client = connect(&gw, "reviewed", &alice).await.unwrap();
        async move {
            client
                .execute(prepared, &[&4i32])
                .await
                .map_err(|e| db_error(&e))
        }
    });
    let id4 = gw.pending_review(&bob, prepared).await;
    let (status, _) = gw
        .call(
            "POST",
            &format!("/api/reviews/{id4}/approve"),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(held.await.unwrap(), Ok(1));

    // Nobody decides in time: refused, and the review is expired.
    let client = connect(&gw, "hasty", &alice).await.unwrap();
    let err = client
        .simple_query("DELETE FROM warden_review_t WHERE id = 3")
        .await
        .unwrap_err();
    let (code, message) = db_error(&err);
    assert_eq!(code, "42501");
    assert!(message.contains("timed out"), "{message}");
    let expired = gw.audit_events("review.expire").await;
    assert_eq!(expired.len(), 1);
    let (_, list) = gw
        .call("GET", "/api/reviews?status=expired", Some(&alice), None)
        .await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    let rows = other
        .query_one("SELECT count(*) FROM warden_review_t", &[])
        .await
        .unwrap();
    assert_eq!(rows.get::<_, i64>(0), 8, "neither refused DELETE ran");

    // Approving after the end is refused.
    let (status, _) = gw
        .call(
            "POST",
            &format!("/api/reviews/{}/approve", list[0]["id"].as_str().unwrap()),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(status, 409);
    // A client that leaves while held: approving afterwards runs nothing.
    let leaving = "DELETE FROM warden_review_t WHERE id = 7";
    let (client, conn) = connect_watched(&gw, "reviewed", &alice).await.unwrap();
    let task = tokio::spawn(async move { client.simple_query(leaving).await.is_ok() });
    let id7 = gw.pending_review(&bob, leaving).await;
    task.abort();
    conn.abort();
    // The review is closed as abandoned (audited); an approver is told so.
    let abandoned = eventually("the review abandoned", || async {
        let (_, review) = gw
            .call("GET", &format!("/api/reviews/{id7}"), Some(&bob), None)
            .await;
        (review["status"] == "abandoned").then_some(review)
    })
    .await;
    assert!(abandoned["decided_at"].is_string(), "{abandoned}");
    let (status, answer) = gw
        .call(
            "POST",
            &format!("/api/reviews/{id7}/approve"),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(status, 409, "{answer}");
    assert!(answer.to_string().contains("abandoned"), "{answer}");
    let events = gw.audit_events("review.abandon").await;
    assert_eq!(events.len(), 1, "{events:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rows = other
        .query_one("SELECT count(*) FROM warden_review_t WHERE id = 7", &[])
        .await
        .unwrap();
    assert_eq!(
        rows.get::<_, i64>(0),
        1,
        "nothing ran for a client that left"
    );
    let (_, review) = gw
        .call("GET", &format!("/api/reviews/{id7}"), Some(&bob), None)
        .await;
    assert!(review["used_at"].is_null(), "{review}");

    for kind in ["review.request", "review.approve", "review.reject"] {
        assert!(!gw.audit_events(kind).await.is_empty(), "{kind}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_asked_ahead_lets_the_identical_statement_run_once() {
    let gw = TestGateway::start(Backend::Sqlite, None).await;
    add_pg(
        &gw,
        "planned",
        json!({"reviewers": ["sre"], "review_timeout_secs": 2, "reuse_approved_reviews": true}),
        json!({"reviews": ["held-for-review"]}),
    )
    .await;
    add_pg(
        &gw,
        "plain",
        json!({"reviewers": ["sre"]}),
        json!({"reviews": ["held-for-review"]}),
    )
    .await;
    let alice = gw.key_for("alice", &["dev"]).await;
    let bob = gw.key_for("bob", &["sre"]).await;
    review_table("warden_review_ahead").await;
    let delete = "DELETE FROM warden_review_ahead WHERE id = 5";

    let (status, answer) = gw
        .call(
            "POST",
            "/api/reviews",
            Some(&alice),
            Some(json!({"connection": "plain", "command": delete})),
        )
        .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (400, Some("reviews_not_reusable"))
    );
    let (status, review) = gw
        .call(
            "POST",
            "/api/reviews",
            Some(&alice),
            Some(json!({"connection": "planned", "command": delete})),
        )
        .await;
    assert_eq!(status, 201, "{review}");
    let id = review["id"].as_str().unwrap();
    let (status, _) = gw
        .call(
            "POST",
            &format!("/api/reviews/{id}/approve"),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(status, 200);

    let client = connect(&gw, "planned", &alice).await.unwrap();
    // Another statement is not covered by it.
    let err = client
        .simple_query("DELETE FROM warden_review_ahead WHERE id = 6")
        .await
        .unwrap_err();
    assert!(db_error(&err).1.contains("timed out"));
    // The approved one runs at once, once.
    let done = client.simple_query(delete).await.unwrap();
    assert!(matches!(
        done.last(),
        Some(tokio_postgres::SimpleQueryMessage::CommandComplete(1))
    ));
    let (_, used) = gw
        .call("GET", &format!("/api/reviews/{id}"), Some(&alice), None)
        .await;
    assert!(used["used_at"].is_string(), "{used}");
    let err = client.simple_query(delete).await.unwrap_err();
    assert!(
        db_error(&err).1.contains("timed out"),
        "a second run needs a new review"
    );
}

/// What the webhook receiver saw.
#[derive(Default)]
struct Received {
    deliveries: Mutex<Vec<(HeaderMap, Vec<u8>)>>,
    /// Answer 500 to this many requests first.
    fail_first: AtomicUsize,
}

async fn receiver(received: Arc<Received>, listener: tokio::net::TcpListener) {
    let app =
        axum::Router::new()
            .route(
                "/hook",
                axum::routing::post(
                    |State(r): State<Arc<Received>>,
                     headers: HeaderMap,
                     body: axum::body::Bytes| async move {
                        if r.fail_first
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                            .is_ok()
                        {
                            return StatusCode::INTERNAL_SERVER_ERROR;
                        }
                        r.deliveries.lock().unwrap().push((headers, body.to_vec()));
                        StatusCode::NO_CONTENT
                    },
                ),
            )
            .with_state(received);
    axum::serve(listener, app).await.unwrap();
}

/// Checks a delivery the way a receiver must: the signature over timestamp and
/// body with the shared secret, and a fresh timestamp (replays are rejected).
fn verified(secret: &str, headers: &HeaderMap, body: &[u8]) -> Value {
    let ts: i64 = headers["warden-timestamp"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!((now - ts).abs() < 300, "stale timestamp");
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let mut signed = format!("{ts}.").into_bytes();
    signed.extend_from_slice(body);
    let sig = headers["warden-signature"].to_str().unwrap();
    let mac = warden_store::hex(hmac::sign(&key, &signed).as_ref());
    assert_eq!(sig, format!("v1={mac}"), "signature");
    let event: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(
        headers["warden-event-id"].to_str().unwrap(),
        event["id"].as_str().unwrap()
    );
    event
}

both_stores!(webhooks_are_signed_retried_dead_lettered_and_survive_a_restart);
async fn webhooks_are_signed_retried_dead_lettered_and_survive_a_restart(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let store_url = warden_store::testing::fresh_url(backend, dir.path())
        .await
        .unwrap();
    let mut config = base_config(
        dir.path(),
        store_url,
        vec![issuer_config(&provider_issuer(), PROVIDER_AUDIENCE)],
    );
    config.events.backoff_base_ms = 20;
    config.events.backoff_max_secs = 1;
    config.events.max_attempts = 1000;
    let gw = TestGateway::with_config(config.clone(), dir).await;
    add_pg(
        &gw,
        "hooked",
        json!({}),
        json!({"guardrails": ["no-drops"]}),
    )
    .await;
    let alice = gw.key_for("alice", &["dev"]).await;

    let received = Arc::new(Received::default());
    received.fail_first.store(2, Ordering::SeqCst);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(receiver(received.clone(), listener));

    // Bad subscriptions are refused; non-admins may not subscribe.
    let (status, _) = gw
        .call(
            "POST",
            "/api/webhooks",
            Some(&alice),
            Some(json!({"url": hook_url})),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = gw
        .admin(
            "POST",
            "/api/webhooks",
            Some(json!({"url": "ftp://x", "kinds": []})),
        )
        .await;
    assert_eq!(status, 400);
    let secret = "a-shared-secret-for-the-test";
    let (status, hook) = gw
        .admin(
            "POST",
            "/api/webhooks",
            Some(json!({"url": hook_url, "kinds": ["*.query"], "decisions": ["deny"], "secret": secret})),
        )
        .await;
    assert_eq!(status, 201, "{hook}");
    assert!(hook["secret"].is_null(), "a given secret is not echoed");
    let hook_id = hook["id"].as_str().unwrap().to_string();
    let (_, generated) = gw
        .admin(
            "POST",
            "/api/webhooks",
            Some(json!({"url": "http://127.0.0.1:9/nothing", "kinds": ["access.*"]})),
        )
        .await;
    assert!(generated["secret"].as_str().unwrap().starts_with("whsec_"));

    // A blocked statement reaches the receiver (after two refused attempts), signed.
    let client = connect(&gw, "hooked", &alice).await.unwrap();
    client.simple_query("SELECT 1").await.unwrap();
    assert!(
        client
            .simple_query("DROP TABLE nothing_here")
            .await
            .is_err()
    );
    let (headers, body) = eventually("the webhook delivery", || async {
        received.deliveries.lock().unwrap().first().cloned()
    })
    .await;
    let event = verified(secret, &headers, &body);
    assert_eq!(event["kind"], "pg.query");
    assert_eq!(event["payload"]["sql"], "DROP TABLE nothing_here");
    assert_eq!(event["decision"]["outcome"], "deny");
    assert!(event["seq"].as_i64().unwrap() > 0);
    assert_eq!(
        received.deliveries.lock().unwrap().len(),
        1,
        "the allowed SELECT is filtered out"
    );
    // The receiver has the event before the gateway has recorded its answer: the
    // failed attempts are cleared once it has.
    let view = eventually(
        "the delivery state to clear its failed attempts",
        || async {
            let (_, view) = gw
                .admin("GET", &format!("/api/webhooks/{hook_id}"), None)
                .await;
            (view["delivery"]["attempts"] == 0 && view["delivery"]["last_error"].is_null())
                .then_some(view)
        },
    )
    .await;
    assert!(
        !view.to_string().contains(secret),
        "the secret is never shown again"
    );
    let (_, listed) = gw.admin("GET", "/api/webhooks", None).await;
    let generated_secret = generated["secret"].as_str().unwrap();
    let visible = gw.everything_visible(&[&listed]).await;
    for s in [secret, generated_secret] {
        assert!(!visible.contains(s), "a webhook secret leaked");
    }

    // The receiver goes away; events keep coming; the gateway is stopped before
    // they can be delivered, and delivers them after its restart.
    received.fail_first.store(1_000_000, Ordering::SeqCst);
    for i in 0..3 {
        assert!(
            client
                .simple_query(&format!("DROP TABLE gone_{i}"))
                .await
                .is_err()
        );
    }
    drop(client);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let TestGateway { gateway, dir, .. } = gw;
    gateway.shutdown().await;
    assert_eq!(received.deliveries.lock().unwrap().len(), 1);
    received.fail_first.store(0, Ordering::SeqCst);
    let gw = TestGateway::with_config(config, dir).await;
    let all = eventually("deliveries after the restart", || async {
        let d = received.deliveries.lock().unwrap().clone();
        (d.len() >= 4).then_some(d)
    })
    .await;
    let mut sqls: Vec<String> = all
        .iter()
        .map(|(h, b)| {
            verified(secret, h, b)["payload"]["sql"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    sqls.dedup();
    assert_eq!(
        sqls,
        [
            "DROP TABLE nothing_here",
            "DROP TABLE gone_0",
            "DROP TABLE gone_1",
            "DROP TABLE gone_2"
        ]
    );
    // With a healthy receiver, a blocked statement arrives at once (printed, not
    // asserted: tests do not time things).
    let before = received.deliveries.lock().unwrap().len();
    let client = connect(&gw, "hooked", &alice).await.unwrap();
    assert!(client.simple_query("DROP TABLE timed").await.is_err());
    let blocked_at = Instant::now();
    while received.deliveries.lock().unwrap().len() == before {
        assert!(
            blocked_at.elapsed() < Duration::from_secs(30),
            "no delivery"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    eprintln!(
        "a blocked statement reached the webhook {} ms after the client saw the error",
        blocked_at.elapsed().as_millis()
    );
    let (status, _) = gw
        .admin("DELETE", &format!("/api/webhooks/{hook_id}"), None)
        .await;
    assert_eq!(status, 204);
    assert!(!gw.audit_events("webhook.delete").await.is_empty());
}

both_stores!(undeliverable_events_become_dead_letters);
async fn undeliverable_events_become_dead_letters(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let store_url = warden_store::testing::fresh_url(backend, dir.path())
        .await
        .unwrap();
    let mut config = base_config(
        dir.path(),
        store_url,
        vec![issuer_config(&provider_issuer(), PROVIDER_AUDIENCE)],
    );
    config.events.backoff_base_ms = 20;
    config.events.max_attempts = 3;
    let gw = TestGateway::with_config(config, dir).await;
    // A port nothing listens on yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (_, dead) = gw
        .admin(
            "POST",
            "/api/webhooks",
            Some(
                json!({"url": format!("http://127.0.0.1:{port}/hook"), "kinds": ["connection.*"]}),
            ),
        )
        .await;
    let secret = dead["secret"].as_str().unwrap().to_string();
    let dead_id = dead["id"].as_str().unwrap().to_string();
    add_pg(&gw, "one", json!({}), json!({})).await;
    add_pg(&gw, "two", json!({}), json!({})).await;
    let letters = eventually("two dead letters", || async {
        let (_, l) = gw
            .admin(
                "GET",
                &format!("/api/webhooks/{dead_id}/dead-letters"),
                None,
            )
            .await;
        (l.as_array().unwrap().len() == 2).then_some(l)
    })
    .await;
    let created = gw.audit_events("connection.create").await;
    let ids: Vec<&Value> = created.iter().map(|e| &e["event"]["id"]).collect();
    for letter in letters.as_array().unwrap() {
        assert!(ids.contains(&&letter["event_id"]), "{letter}");
        assert_eq!(letter["attempts"], 3);
        assert_eq!(letter["kind"], "connection.create");
        // The cause, not reqwest's "error sending request".
        let error = letter["last_error"].as_str().unwrap();
        assert!(
            error.starts_with("cannot connect: ") && error.contains("refused"),
            "{letter}"
        );
    }
    let (_, view) = gw
        .admin("GET", &format!("/api/webhooks/{dead_id}"), None)
        .await;
    assert_eq!(view["delivery"]["attempts"], 0, "it moved on: {view}");

    // Redelivery: refused while the receiver is away, done once it is back.
    let first = letters[0]["id"].as_str().unwrap().to_string();
    let redeliver = format!("/api/webhooks/{dead_id}/dead-letters/{first}/redeliver");
    let (status, answer) = gw.admin("POST", &redeliver, None).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (502, Some("delivery_failed"))
    );
    let received = Arc::new(Received::default());
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(receiver(received.clone(), listener));
    let (status, answer) = gw.admin("POST", &redeliver, None).await;
    assert_eq!(status, 204, "{answer}");
    let (headers, body) = received.deliveries.lock().unwrap()[0].clone();
    let event = verified(&secret, &headers, &body);
    assert_eq!(event["id"], letters[0]["event_id"]);
    let (_, left) = gw
        .admin(
            "GET",
            &format!("/api/webhooks/{dead_id}/dead-letters"),
            None,
        )
        .await;
    assert_eq!(left.as_array().unwrap().len(), 1, "{left}");
    let (status, _) = gw.admin("POST", &redeliver, None).await;
    assert_eq!(status, 404, "a letter is redelivered once");
    assert_eq!(gw.audit_events("webhook.redeliver").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn siem_sinks_get_json_lines_and_rfc5424_syslog() {
    let dir = tempfile::tempdir().unwrap();
    let store_url = warden_store::testing::fresh_url(Backend::Sqlite, dir.path())
        .await
        .unwrap();
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jsonl = dir.path().join("siem.jsonl");
    let mut config = base_config(
        dir.path(),
        store_url,
        vec![issuer_config(&provider_issuer(), PROVIDER_AUDIENCE)],
    );
    config.events.sinks = toml::from_str::<Value>(&format!(
        r#"
[[sinks]]
name = "file"
kind = "jsonl"
path = "{}"
format = "ocsf"
[[sinks]]
name = "udp"
kind = "syslog"
address = "{}"
kinds = ["pg.*"]
[[sinks]]
name = "tcp"
kind = "syslog"
address = "{}"
transport = "tcp"
format = "ocsf"
decisions = ["deny"]
"#,
        jsonl.display(),
        udp.local_addr().unwrap(),
        tcp.local_addr().unwrap()
    ))
    .map(|v| serde_json::from_value(v["sinks"].clone()).unwrap())
    .unwrap();
    let gw = TestGateway::with_config(config, dir).await;
    add_pg(&gw, "siem", json!({}), json!({"guardrails": ["no-drops"]})).await;
    let alice = gw.key_for("alice", &["dev"]).await;
    let client = connect(&gw, "siem", &alice).await.unwrap();
    client.simple_query("SELECT 1").await.unwrap();
    assert!(
        client
            .simple_query("DROP TABLE siem_nothing")
            .await
            .is_err()
    );

    // JSON Lines, OCSF-shaped: a Datastore Activity for the denied statement.
    let lines = eventually("the jsonl sink", || async {
        let text = std::fs::read_to_string(&jsonl).unwrap_or_default();
        text.contains("siem_nothing").then_some(text)
    })
    .await;
    let denied: Value = lines
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["query_info"]["query_string"] == "DROP TABLE siem_nothing")
        .unwrap();
    assert_eq!(denied["class_uid"], 6005);
    assert_eq!(denied["status"], "Failure");
    assert_eq!(denied["actor"]["user"]["name"], "alice");
    assert!(
        lines
            .lines()
            .all(|l| serde_json::from_str::<Value>(l).unwrap()["class_uid"].is_number())
    );

    // UDP: one RFC 5424 message per datagram, pg.* only, in Warden's shape.
    let mut buf = vec![0u8; 65536];
    let mut kinds = Vec::new();
    while !kinds.iter().any(|k: &String| k == "pg.outcome") || kinds.len() < 3 {
        let n = tokio::time::timeout(Duration::from_secs(30), udp.recv(&mut buf))
            .await
            .expect("syslog datagrams")
            .unwrap();
        let msg = String::from_utf8(buf[..n].to_vec()).unwrap();
        let (header, body) = msg.split_once("] ").unwrap();
        let fields: Vec<&str> = header.splitn(7, ' ').collect();
        assert!(
            fields[0].starts_with('<') && fields[0].ends_with(">1"),
            "{msg}"
        );
        assert_eq!(fields[3], "warden");
        let event: Value = serde_json::from_str(body).unwrap();
        assert_eq!(fields[5], event["kind"].as_str().unwrap());
        assert!(fields[5].starts_with("pg."), "{msg}");
        kinds.push(fields[5].to_string());
    }
    // TCP: octet-counted frames, denials only, OCSF.
    let (mut stream, _) = tokio::time::timeout(Duration::from_secs(30), tcp.accept())
        .await
        .unwrap()
        .unwrap();
    let mut got = Vec::new();
    let frame = loop {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::io::AsyncReadExt::read(&mut stream, &mut chunk),
        )
        .await
        .unwrap()
        .unwrap();
        got.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((len, rest)) = text.split_once(' ')
            && rest.len() >= len.parse::<usize>().unwrap()
        {
            break rest[..len.parse::<usize>().unwrap()].to_string();
        }
    };
    assert!(
        frame.starts_with("<84>1 "),
        "authpriv.warning for a denial: {frame}"
    );
    let ocsf: Value = serde_json::from_str(frame.split_once("] ").unwrap().1).unwrap();
    assert_eq!(ocsf["class_uid"], 6005);
    assert_eq!(
        ocsf["query_info"]["query_string"],
        "DROP TABLE siem_nothing"
    );

    let (_, sinks) = gw.admin("GET", "/api/event-sinks", None).await;
    assert_eq!(sinks.as_array().unwrap().len(), 3, "{sinks}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_statement_of_a_revoked_identity_never_runs() {
    let gw = TestGateway::start(Backend::Sqlite, None).await;
    add_pg(
        &gw,
        "reviewed",
        json!({"reviewers": ["sre"], "review_timeout_secs": 60}),
        json!({"reviews": ["held-for-review"]}),
    )
    .await;
    let alice = gw.key_for("alice", &["dev"]).await;
    let bob = gw.key_for("bob", &["sre"]).await;
    review_table("warden_revoked_review_t").await;
    let (client, conn) = connect_watched(&gw, "reviewed", &alice).await.unwrap();
    let delete = "DELETE FROM warden_revoked_review_t WHERE id = 1";
    let held = tokio::spawn(async move { client.simple_query(delete).await });
    let id = gw.pending_review(&bob, delete).await;
    // And a long statement runs in another of her sessions.
    let sleeper = connect(&gw, "reviewed", &alice).await.unwrap();
    let sleeping =
        tokio::spawn(async move { sleeper.simple_query("SELECT pg_sleep(60.4242)").await });
    let admin = superuser().await;
    let running = "SELECT count(*) FROM pg_stat_activity \
                   WHERE query = 'SELECT pg_sleep(60.4242)' AND state = 'active'";
    eventually("the sleep to run", || async {
        let n: i64 = admin.query_one(running, &[]).await.unwrap().get(0);
        (n == 1).then_some(())
    })
    .await;

    // Alice's key is revoked while her DELETE waits: the session ends, the review
    // is abandoned, and approving it afterwards runs nothing; her running statement
    // is cancelled on the server.
    let key_id = alice.split('_').nth(1).unwrap();
    let (status, _) = gw
        .admin("DELETE", &format!("/api/api-keys/{key_id}"), None)
        .await;
    assert_eq!(status, 204);
    // The FATAL answers the waiting statement.
    let err = held.await.unwrap().unwrap_err();
    let _ = conn.await;
    let (code, message) = db_error(&err);
    assert_eq!(code, "57P01", "{message}");
    assert!(message.contains("was revoked by admin"), "{message}");
    let review = eventually("the review to be abandoned", || async {
        let (_, r) = gw
            .call("GET", &format!("/api/reviews/{id}"), Some(&bob), None)
            .await;
        (r["status"] == "abandoned").then_some(r)
    })
    .await;
    assert_eq!(review["status"], "abandoned");
    let (status, _) = gw
        .call(
            "POST",
            &format!("/api/reviews/{id}/approve"),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(status, 409);
    let rows = superuser()
        .await
        .query_one("SELECT count(*) FROM warden_revoked_review_t", &[])
        .await
        .unwrap();
    assert_eq!(rows.get::<_, i64>(0), 10, "the held DELETE never ran");
    assert!(sleeping.await.unwrap().is_err());
    eventually("the sleep to be cancelled on the server", || async {
        let n: i64 = admin.query_one(running, &[]).await.unwrap().get(0);
        (n == 0).then_some(())
    })
    .await;
    let ended = gw.audit_events("session.terminate").await;
    assert_eq!(ended.len(), 2, "{ended:?}");
    assert_eq!(ended[0]["event"]["payload"]["cause"], "credential_revoked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reviewers_list_is_not_cut_short_by_reviews_they_cannot_see() {
    let gw = TestGateway::start(Backend::Sqlite, None).await;
    let ahead = |reviewers: &str| json!({"reviewers": [reviewers], "reuse_approved_reviews": true});
    add_pg(
        &gw,
        "theirs",
        ahead("dba"),
        json!({"reviews": ["held-for-review"]}),
    )
    .await;
    add_pg(
        &gw,
        "ours",
        ahead("sre"),
        json!({"reviews": ["held-for-review"]}),
    )
    .await;
    let alice = gw.key_for("alice", &["dev"]).await;
    let bob = gw.key_for("bob", &["sre"]).await;
    let ask = |connection: &'static str, n: usize| {
        let (gw, alice) = (&gw, &alice);
        async move {
            let (status, review) = gw
                .call(
                    "POST",
                    "/api/reviews",
                    Some(alice),
                    Some(json!({"connection": connection, "command": format!("DELETE FROM t WHERE id = {n}")})),
                )
                .await;
            assert_eq!(status, 201, "{review}");
        }
    };
    // One bob may decide, then five newer ones he may not see.
    ask("ours", 0).await;
    for n in 1..=5 {
        ask("theirs", n).await;
    }
    for path in [
        "/api/reviews?status=pending&limit=2",
        "/api/reviews?limit=1",
    ] {
        let (status, list) = gw.call("GET", path, Some(&bob), None).await;
        assert_eq!(status, 200);
        let list = list.as_array().unwrap();
        assert_eq!(list.len(), 1, "{path}: {list:?}");
        assert_eq!(list[0]["connection"], "ours");
    }
    // An admin's page is as long as asked.
    let (_, list) = gw.admin("GET", "/api/reviews?limit=3", None).await;
    assert_eq!(list.as_array().unwrap().len(), 3);
}
