//! The console's login over plain HTTP against a real OpenID provider of its own
//! (short-lived tokens): the authorization-code login survives a flood of started
//! logins, refuses a login cookie that is not its own or that came back before, and
//! renews an expired token once however many requests find it expired at once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::zombie_processes)]

mod common;

use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A provider of this test's own, whose people's tokens live `ttl` seconds.
fn provider(ttl: u32) -> (std::process::Child, String) {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/oidc");
    let mut child = Command::new("node")
        .arg("provider.mjs")
        .current_dir(dir)
        .env("USER_TOKEN_TTL", ttl.to_string())
        .env("EXIT_WITH_STDIN", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    out.read_line(&mut line).unwrap();
    // Keep reading what it prints, or its next line would end it (EPIPE).
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let v: Value = serde_json::from_str(line.trim()).unwrap();
    (child, v["issuer"].as_str().unwrap().to_string())
}

async fn me(http: &reqwest::Client, gw: &str, cookie: &str, csrf: &str) -> (u16, Value) {
    let resp = http
        .get(format!("{gw}/api/me"))
        .header("cookie", cookie)
        .header("x-warden-csrf", csrf)
        .send()
        .await
        .unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

#[test]
fn console_login_survives_floods_refuses_foreign_state_and_renews_once() {
    let (mut idp, issuer) = provider(4);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("warden.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\nclock_skew_secs = 0\n[[auth.oidc]]\nissuer = \"{issuer}\"\n\
             audiences = [\"urn:warden\"]\n\n[web.oidc]\nissuer = \"{issuer}\"\n\
             client_id = \"warden-console\"\nclient_secret = \"warden-console-secret\"\n\
             resource = \"urn:warden\"\n"
        ),
    )
    .unwrap();
    let running = start_gateway_with(
        dir.path(),
        &[
            ("WARDEN_CONFIG", config.to_str().unwrap()),
            ("WARDEN_LOG", "info"),
        ],
    );
    let gw = running.url.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // alice starts a login and is at the provider...
        let mut alice = Browser::new();
        let (status, to_provider) = alice.step(&format!("{gw}/auth/login")).await;
        assert_eq!(status, 303);
        let to_provider = to_provider.unwrap();
        assert!(to_provider.starts_with(&issuer), "{to_provider}");
        assert!(to_provider.contains("code_challenge_method=S256"));
        let sealed = alice.cookies["warden_login"].clone();

        // ...while someone starts 2,000 logins of their own.
        let flood = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let mut other_cookie = String::new();
        for _ in 0..2000 {
            let resp = flood.get(format!("{gw}/auth/login")).send().await.unwrap();
            other_cookie = resp.headers()["set-cookie"].to_str().unwrap().to_string();
        }

        // A callback that brings another login's cookie, or a changed one, is refused.
        let other = other_cookie
            .split(';')
            .next()
            .unwrap()
            .split_once('=')
            .unwrap()
            .1;
        let state = reqwest::Url::parse(&to_provider)
            .unwrap()
            .query_pairs()
            .find(|(k, _)| k == "state")
            .unwrap()
            .1
            .to_string();
        // A changed cookie: one character in its middle made another.
        let mut changed = sealed.clone().into_bytes();
        let mid = changed.len() / 2;
        changed[mid] = if changed[mid] == b'A' { b'B' } else { b'A' };
        let changed = String::from_utf8(changed).unwrap();
        for bad in [other.to_string(), changed] {
            let mut mallory = Browser::new();
            mallory.cookies.insert("warden_login".into(), bad);
            let (_, to) = mallory
                .step(&format!("{gw}/auth/callback?code=x&state={state}"))
                .await;
            assert_eq!(to.as_deref(), Some("/#/login?error=login_state_mismatch"));
        }

        // alice's login still completes.
        reqwest::get(format!("{issuer}/test/next-account?name=alice"))
            .await
            .unwrap();
        let landed = alice.follow(&to_provider).await;
        assert_eq!(landed, format!("{gw}/"), "{:?}", alice.cookies);
        let cookie = format!("warden_session={}", alice.cookies["warden_session"]);

        // Her login cookie and the provider's answer, brought back again, open nothing.
        let callback = alice
            .visited
            .iter()
            .find(|u| u.starts_with(&format!("{gw}/auth/callback")))
            .unwrap()
            .clone();
        let mut replay = Browser::new();
        replay.cookies.insert("warden_login".into(), sealed.clone());
        let (_, to) = replay.step(&callback).await;
        assert_eq!(to.as_deref(), Some("/#/login?error=login_state_mismatch"));
        assert!(!replay.cookies.contains_key("warden_session"));
        let http = reqwest::Client::new();
        let session: Value = http
            .get(format!("{gw}/auth/session"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(session["identity"]["subject"], "alice", "{session}");
        let csrf = session["csrf"].as_str().unwrap().to_string();
        let first = me(&http, &gw, &cookie, &csrf).await;
        assert_eq!(first.0, 200);

        // The token expires; eight requests find it so at once. One renews, all pass,
        // and the session goes on.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let answers =
            futures_util::future::join_all((0..8).map(|_| me(&http, &gw, &cookie, &csrf))).await;
        for (status, body) in &answers {
            assert_eq!(*status, 200, "{body}");
            assert_eq!(body["subject"], "alice");
            assert_ne!(body["expires_at"], first.1["expires_at"], "a renewed token");
        }
        assert_eq!(me(&http, &gw, &cookie, &csrf).await.0, 200);
    });
    let log = stop(running);
    assert!(!log.contains("warden-console-secret"));
    drop(idp.stdin.take());
    let _ = idp.wait();
}
