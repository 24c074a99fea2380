//! Events out, end to end: signed webhooks (retries, dead letters, redelivery,
//! changes reaching delivery at once) and SIEM sinks (JSON lines, RFC 5424 syslog),
//! with receivers run by the test and statements through the gateway to the
//! machine's PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use aws_lc_rs::hmac;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;
use warden_store::Backend;

const BACKEND_PASSWORD: &str = "scram-pw-1";

/// A PostgreSQL connection for members of `dev`, with `access` settings and policies.
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

use support::pg_connect as connect;

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
    // A statement's outcome: folded into its event, or one of its own.
    let mut outcome_seen = false;
    while !outcome_seen || kinds.len() < 2 {
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
        outcome_seen |= fields[5] == "pg.outcome" || event["payload"]["outcome"].is_object();
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
async fn a_changed_webhook_delivers_to_its_new_url_with_its_new_secret_at_once() {
    let gw = TestGateway::start(Backend::Sqlite, None).await;
    add_pg(
        &gw,
        "hooked",
        json!({}),
        json!({"guardrails": ["no-drops"]}),
    )
    .await;
    let alice = gw.key_for("alice", &["dev"]).await;
    let (old, new) = (Arc::new(Received::default()), Arc::new(Received::default()));
    let mut urls = Vec::new();
    for r in [&old, &new] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        urls.push(format!("http://{}/hook", listener.local_addr().unwrap()));
        tokio::spawn(receiver(r.clone(), listener));
    }
    let (first_secret, second_secret) = ("the-first-secret-1234", "the-second-secret-5678");
    let (status, hook) = gw
        .admin(
            "POST",
            "/api/webhooks",
            Some(json!({"url": urls[0], "kinds": ["pg.query"], "secret": first_secret})),
        )
        .await;
    assert_eq!(status, 201, "{hook}");
    let id = hook["id"].as_str().unwrap().to_string();
    let client = connect(&gw, "hooked", &alice).await.unwrap();
    client.simple_query("SELECT 'first'").await.unwrap();
    let (headers, body) = eventually("delivery to the first URL", || async {
        old.deliveries.lock().unwrap().first().cloned()
    })
    .await;
    verified(first_secret, &headers, &body);

    // A dry run changes nothing; the real change moves delivery and its key at once.
    let patch = json!({"url": urls[1], "secret": second_secret, "kinds": ["pg.*"]});
    let (status, dry) = gw
        .admin(
            "PATCH",
            &format!("/api/webhooks/{id}?dry_run=true"),
            Some(patch.clone()),
        )
        .await;
    assert_eq!(status, 200, "{dry}");
    assert_eq!(dry["dry_run"], true, "{dry}");
    let (status, changed) = gw
        .admin("PATCH", &format!("/api/webhooks/{id}"), Some(patch))
        .await;
    assert_eq!(status, 200, "{changed}");
    let fields: Vec<&str> = changed["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["kinds", "url", "secret"], "{changed}");
    assert!(!changed.to_string().contains(second_secret), "{changed}");
    let updates = gw.audit_events("webhook.update").await;
    assert_eq!(updates.len(), 1);
    assert!(
        !serde_json::to_string(&updates)
            .unwrap()
            .contains(second_secret)
    );

    let before = old.deliveries.lock().unwrap().len();
    client.simple_query("SELECT 'second'").await.unwrap();
    let (headers, body) = eventually("delivery to the new URL", || async {
        new.deliveries
            .lock()
            .unwrap()
            .iter()
            .find(|(_, b)| String::from_utf8_lossy(b).contains("second"))
            .cloned()
    })
    .await;
    let event = verified(second_secret, &headers, &body);
    assert_eq!(event["payload"]["sql"], "SELECT 'second'");
    assert!(
        old.deliveries.lock().unwrap()[before..]
            .iter()
            .all(|(_, b)| !String::from_utf8_lossy(b).contains("second")),
        "the old URL got an event after the change"
    );
    // Fields that cannot be removed are refused as null, not ignored.
    let (status, body) = gw
        .admin(
            "PATCH",
            &format!("/api/webhooks/{id}"),
            Some(json!({"secret": null})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
}
