//! Just-in-time access and command reviews, end to end: real psql and tokio-postgres
//! through the gateway to the machine's PostgreSQL (webhooks and SIEM sinks:
//! `events.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{Value, json};
use std::process::Stdio;
use std::time::Duration;
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
