//! HTTP connections end to end: curl-like clients (reqwest, HTTP/1.1 and HTTP/2)
//! through the gateway's `[http]` listener to a real go-httpbin
//! (`WARDEN_TEST_HTTPBIN_URL`, started by scripts/test.sh).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// Test clients write plain TCP, which holds back no unflushed bytes.
#![allow(clippy::disallowed_methods)]

mod support;

use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warden_core::ConnectionKind;
use warden_store::Backend;

const HELD_TOKEN: &str = "held-http-token-5f2c9e1d7a";

fn httpbin() -> String {
    std::env::var("WARDEN_TEST_HTTPBIN_URL").unwrap_or_else(|_| "http://127.0.0.1:18080".into())
}

/// A gateway with an `http` connection `wiki` to httpbin holding `HELD_TOKEN`, and a
/// key for a member of `eng`; `extra` is merged into the connection.
async fn setup(extra: Value) -> (TestGateway, String, String) {
    let gw = TestGateway::start(Backend::Sqlite, None).await;
    let mut conn = json!({
        "name": "wiki", "kind": "http", "target": httpbin(),
        "secret": HELD_TOKEN, "allowed_groups": ["eng"],
        "policies": {"guardrails": ["http-safety"]},
    });
    if let (Some(c), Some(e)) = (conn.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    let (status, body) = gw.admin("POST", "/api/connections", Some(conn)).await;
    assert_eq!(status, 201, "{body}");
    let key = gw.key_for("alice@example.com", &["eng"]).await;
    let base = format!(
        "http://{}/wiki",
        gw.gateway.listener(ConnectionKind::Http).unwrap()
    );
    (gw, key, base)
}

async fn get(client: &reqwest::Client, url: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = client.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_the_service_with_the_held_credential_and_are_audited() {
    let (gw, key, base) = setup(json!({})).await;
    let client = reqwest::Client::new();

    // The service gets the held credential (httpbin's /bearer checks there is one)
    // and never the client's Warden token; an answer echoing the credential has it
    // overwritten.
    let (status, body) = get(&client, &format!("{base}/bearer"), Some(&key)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token"], "*".repeat(HELD_TOKEN.len()), "{body}");
    let (status, body) = get(&client, &format!("{base}/headers"), Some(&key)).await;
    assert_eq!(status, 200, "{body}");
    let echoed = body.to_string();
    assert!(
        !echoed.contains(HELD_TOKEN) && !echoed.contains(&key),
        "{body}"
    );
    let resp = client
        .get(format!("{base}/response-headers?X-Echo={HELD_TOKEN}"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert!(!format!("{:?}", resp.headers()).contains(HELD_TOKEN));
    // A compressed answer could hide an echo: withheld on a connection that holds a
    // credential.
    assert_eq!(
        get(&client, &format!("{base}/gzip"), Some(&key)).await.0,
        502
    );

    // HTTP/2 (prior knowledge) works the same.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = h2
        .get(format!("{base}/get?x=1"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);

    // A rule refuses DELETE with a JSON error naming it.
    let resp = client
        .delete(format!("{base}/delete"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "Forbidden");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("http-safety/no-deletes"), "{message}");

    // Without a token, or with a bad one: 401; an unknown connection: refused.
    assert_eq!(get(&client, &format!("{base}/get"), None).await.0, 401);
    assert_eq!(
        get(&client, &format!("{base}/get"), Some("nope")).await.0,
        401
    );
    let other = base.replace("/wiki", "/nosuch");
    assert_eq!(
        get(&client, &format!("{other}/get"), Some(&key)).await.0,
        403
    );

    // Every request is an audit event before it is forwarded; outcomes follow.
    let events = eventually("http audit events", || async {
        let e = gw.audit_events("http.request").await;
        (e.len() >= 3).then_some(e)
    })
    .await;
    let texts: Vec<String> = events
        .iter()
        .map(|e| e["event"]["payload"]["request"].to_string())
        .collect();
    assert!(
        texts.iter().any(|t| t.contains("GET /headers")),
        "{texts:?}"
    );
    let denied = events
        .iter()
        .find(|e| e["event"]["payload"]["request"] == "DELETE /delete")
        .unwrap();
    assert_eq!(
        denied["event"]["decision"]["rule"],
        "http-safety/no-deletes"
    );
    let outcomes = eventually("http outcomes", || async {
        let o = gw.outcomes("http").await;
        (o.len() >= 2).then_some(o)
    })
    .await;
    assert!(outcomes.iter().any(|o| o["status"] == 200), "{outcomes:?}");
    // Each names the request it answers.
    let requests = gw.audit_events("http.request").await;
    for o in &outcomes {
        assert!(
            requests.iter().any(|r| r["event"]["id"] == o["statement"]
                && r["event"]["decision"]["outcome"] == "allow"),
            "{o} names no admitted request"
        );
    }

    // The held credential is nowhere Warden keeps or shows things.
    let (_, conn) = gw.admin("GET", "/api/connections/wiki", None).await;
    let visible = gw.everything_visible(&[&conn]).await;
    assert!(!visible.contains(HELD_TOKEN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_the_service_could_read_otherwise_are_refused() {
    let (gw, key, base) = setup(json!({})).await;
    let client = reqwest::Client::new();
    // reqwest would normalize dot segments itself: send these raw.
    let addr = gw.gateway.listener(ConnectionKind::Http).unwrap();
    for path in [
        "/wiki/anything/../delete",
        "/wiki/anything/%2e%2e/delete",
        "/wiki/anything%2F..%2Fdelete",
        "/wiki//delete",
        "/wiki/anything?a=1;b=2",
        "/wiki/delete;x/y",
    ] {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
    }
    // The refusals are audited as decisions.
    let refused = eventually("refused requests", || async {
        let e = gw.audit_events("http.refused").await;
        (e.len() >= 6).then_some(e)
    })
    .await;
    assert_eq!(refused[0]["event"]["payload"]["what"], "unreadable_request");
    // Only WebSocket may switch protocols (h2c would carry later requests unread).
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /wiki/get HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 2048];
    let n = s.read(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).to_string();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // The gateway says where requests come from; a client cannot.
    let resp = client
        .get(format!("{base}/headers"))
        .bearer_auth(&key)
        .header("X-Forwarded-For", "203.0.113.9")
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["headers"]["X-Forwarded-For"][0], "127.0.0.1", "{body}");
    // The gateway goes on.
    assert_eq!(
        get(&client, &format!("{base}/get"), Some(&key)).await.0,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_masked_and_what_cannot_be_masked_is_withheld() {
    let (gw, key, base) = setup(json!({"policies": {"guardrails": [], "masking": ["pii"]}})).await;
    let client = reqwest::Client::new();
    // JSON: httpbin echoes the query; the email is masked in the answer.
    let (status, body) = get(
        &client,
        &format!("{base}/anything?contact=alice.smith@example.com&card=4111111111111111"),
        Some(&key),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let text = body.to_string();
    assert!(!text.contains("alice.smith@example.com"), "{text}");
    assert!(!text.contains("4111111111111111"), "{text}");
    // Plain text: masked too.
    let encoded = base64_of("write to bob.jones@example.org today");
    let (status, body) = get(&client, &format!("{base}/base64/{encoded}"), Some(&key)).await;
    assert_eq!(status, 200);
    let text = body.as_str().unwrap_or_default().to_string();
    assert!(
        text.contains("today") && !text.contains("bob.jones@example.org"),
        "{text}"
    );
    // A compressed answer cannot be read: withheld with a 502 that says why.
    let (status, body) = get(&client, &format!("{base}/gzip"), Some(&key)).await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("compressed")
    );
    // Headers echoing input, and answers whose type is not in any list, are masked.
    let resp = client
        .get(format!(
            "{base}/response-headers?X-Contact=carol@example.com&Content-Type=application/x-whatever"
        ))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    let header = resp
        .headers()
        .get("x-contact")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(!header.contains("carol@example.com"), "{header}");
    let body = resp.text().await.unwrap();
    assert!(!body.contains("carol@example.com"), "{body}");
    // A WebSocket would carry the service's data unread: refused on a masked connection.
    let resp = client
        .get(format!("{base}/websocket/echo"))
        .bearer_auth(&key)
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    // Binary answers pass as they are.
    let resp = client
        .get(format!("{base}/bytes/64"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap().len(), 64);
    drop(gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_clients_end_only_their_own_request() {
    let gw = TestGateway::sqlite_with(|c| {
        c.http.header_timeout_secs = 1;
        c.http.max_header_bytes = 16 * 1024;
    })
    .await;
    let (status, body) = gw
        .admin(
            "POST",
            "/api/connections",
            Some(json!({"name": "wiki", "kind": "http", "target": httpbin(), "allowed_groups": ["eng"]})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let key = gw.key_for("bob@example.com", &["eng"]).await;
    let addr = gw.gateway.listener(ConnectionKind::Http).unwrap();
    let base = format!("http://{addr}/wiki");
    let client = reqwest::Client::new();

    // Garbage instead of a request: a 400, the connection closes.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"\x16\x03\x01 not http at all\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer).await;
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 400"),
        "{answer:?}"
    );

    // Oversized headers: refused (431), nothing else affected.
    let resp = client
        .get(format!("{base}/get"))
        .bearer_auth(&key)
        .header("x-big", "a".repeat(32 * 1024))
        .send()
        .await;
    match resp {
        Ok(r) => assert_eq!(r.status(), 431),
        Err(e) => assert!(e.is_request() || e.is_connect(), "{e}"),
    }

    // A slow client that never finishes its headers is cut off after the timeout.
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /wiki/get HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        slow.read_to_end(&mut buf),
    )
    .await;
    assert!(read.is_ok(), "the slow client was not cut off");

    // Meanwhile, and afterwards, other clients are served.
    assert_eq!(
        get(&client, &format!("{base}/get"), Some(&key)).await.0,
        200
    );
}

fn base64_of(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE.encode(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_and_named_header_credentials_reach_the_service() {
    // A password with a username is sent as HTTP Basic (httpbin checks it).
    let (gw, key, base) = setup(
        json!({"username": "svc", "secret": "basic-pw-77", "secret_kind": "password",
        "policies": {"guardrails": []}}),
    )
    .await;
    let client = reqwest::Client::new();
    assert_eq!(
        get(
            &client,
            &format!("{base}/basic-auth/svc/basic-pw-77"),
            Some(&key)
        )
        .await
        .0,
        200
    );
    assert_eq!(
        get(&client, &format!("{base}/basic-auth/svc/other"), Some(&key))
            .await
            .0,
        401
    );
    drop(gw);
    // A named header gets the secret as it is; the client's own copy is dropped.
    let (_gw, key, base) = setup(json!({"http": {"credential_header": "X-Api-Key"},
        "policies": {"guardrails": []}}))
    .await;
    let resp = client
        .get(format!("{base}/headers"))
        .bearer_auth(&key)
        .header("X-Api-Key", "from-the-client")
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    // What the service received is the held secret (echoed back overwritten: same
    // length), not the client's value.
    assert_eq!(
        body["headers"]["X-Api-Key"][0],
        "*".repeat(HELD_TOKEN.len()),
        "{body}"
    );
    assert!(body["headers"].get("Authorization").is_none(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_can_log_in_with_its_token_as_a_password() {
    let (_gw, key, base) = setup(json!({})).await;
    let client = reqwest::Client::new();
    // Without credentials the gateway asks for them the way browsers understand.
    let resp = client.get(format!("{base}/get")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let challenge = resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(challenge.starts_with("Basic "), "{challenge}");
    // Any user name, the token as the password.
    let resp = client
        .get(format!("{base}/get"))
        .basic_auth("me", Some(&key))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert!(!body.to_string().contains(&key), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masking_memory_is_bounded_and_cross_site_requests_are_refused() {
    let gw = TestGateway::sqlite_with(|c| c.http.masked_bytes_in_flight = 1024).await;
    let (status, body) = gw
        .admin(
            "POST",
            "/api/connections",
            Some(json!({"name": "wiki", "kind": "http", "target": httpbin(),
                        "allowed_groups": ["eng"], "policies": {"masking": ["pii"]}})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let key = gw.key_for("bob@example.com", &["eng"]).await;
    let base = format!(
        "http://{}/wiki",
        gw.gateway.listener(ConnectionKind::Http).unwrap()
    );
    let client = reqwest::Client::new();
    // An answer larger than what the listener may hold for masking: refused, not
    // relayed unmasked; a small one still passes.
    let (status, body) = get(
        &client,
        &format!("{base}/anything?pad={}", "x".repeat(4096)),
        Some(&key),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    let (status, _) = get(&client, &format!("{base}/status/204"), Some(&key)).await;
    assert_eq!(status, 204);
    // What another site made a browser send is refused.
    let resp = client
        .get(format!("{base}/status/204"))
        .basic_auth("me", Some(&key))
        .header("Sec-Fetch-Site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    // Browsers without Fetch Metadata still send Origin.
    for origin in ["https://evil.example", "null"] {
        let resp = client
            .post(format!("{base}/post"))
            .basic_auth("me", Some(&key))
            .header("Origin", origin)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403, "{origin}");
    }
    // A bearer token is sent on purpose: no browser sends it by itself.
    let resp = client
        .get(format!("{base}/status/204"))
        .bearer_auth(&key)
        .header("Origin", "https://tool.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
}
