//! The bootstrap admin key as an operator meets it: shown on a terminal only, expiring,
//! and recoverable offline with `warden admin recover` when it is lost or expired.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::zombie_processes)]

mod common;
use common::*;

use serde_json::json;
use std::process::Command;

#[test]
fn the_admin_key_is_shown_on_a_terminal_expires_and_is_recovered_offline() {
    let dir = tempfile::tempdir().unwrap();
    let ttl = [("WARDEN_AUTH__ADMIN_KEY_TTL_SECS", "3")];
    let gw = start_gateway_in_terminal(dir.path(), &ttl);
    let key = gw.printed_key.clone().expect("shown on the terminal");
    assert!(gw.stdout_head.contains("shown once"), "{}", gw.stdout_head);
    assert!(
        !dir.path().join("warden-data/admin.key").exists(),
        "nothing written when a terminal showed it"
    );
    let (status, me) = call(&gw.url, &key, "GET", "/api/me", None);
    assert_eq!(status, 200, "{me}");
    assert!(
        me["identity"]["expires_at"].is_string() || me["expires_at"].is_string(),
        "{me}"
    );

    // It expires.
    let expired = (0..100).find_map(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let (status, body) = call(&gw.url, &key, "GET", "/api/me", None);
        (status == 401).then_some(body)
    });
    let expired = expired.expect("the admin key to expire");
    assert_eq!(expired["error"]["code"], "api_key_expired", "{expired}");

    // Recovery, run beside the running gateway with the data directory: a new key
    // that works at once, is admin, and is shown once.
    // Not on a terminal here: the key goes to the owner-only file, not stdout.
    let out = run(warden(dir.path())
        .args(["admin", "recover"])
        .env("USER", "someone-else")
        .env("WARDEN_AUTH__ADMIN_KEY_TTL_SECS", "3600"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.contains("It expires at"), "{shown}");
    assert!(!shown.contains("wdn_"), "{shown}");
    let key_file = dir.path().join("warden-data/admin.key");
    let recovered = std::fs::read_to_string(&key_file)
        .unwrap()
        .trim()
        .to_string();
    std::fs::remove_file(&key_file).unwrap();
    assert!(recovered.starts_with("wdn_admin"), "{recovered}");
    let (status, created) = call(
        &gw.url,
        &recovered,
        "POST",
        "/api/api-keys",
        Some(&json!({"name": "ci", "groups": ["ci"]})),
    );
    assert_eq!(status, 201, "{created}");
    // A second recovery revokes the first recovered key.
    let out = run(warden(dir.path()).args(["admin", "recover"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let newest = std::fs::read_to_string(&key_file)
        .unwrap()
        .trim()
        .to_string();
    let (status, body) = call(&gw.url, &recovered, "GET", "/api/me", None);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("api_key_revoked"))
    );
    // Audited, naming who ran it; the audit log is intact.
    let (status, page) = call(
        &gw.url,
        &newest,
        "GET",
        "/api/audit?kind=api_key.recover",
        None,
    );
    assert_eq!(status, 200, "{page}");
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 2, "{page}");
    // Named by its real user id, not by `$USER`.
    let me = text(&run(Command::new("id").arg("-un")).stdout);
    assert_eq!(
        events[0]["event"]["payload"]["operator"],
        format!("local:{}", me.trim()).as_str()
    );
    assert!(!page.to_string().contains(&recovered), "no token in events");
    let (_, verify) = call(&gw.url, &newest, "GET", "/api/audit/verify", None);
    assert_eq!(verify["ok"], true, "{verify}");
    let _ = Command::new("kill")
        .args(["-TERM", &gw.child.id().to_string()])
        .status();
    let mut gw = gw;
    let _ = gw.child.wait();

    // With `admin_token` configured, that token is the admin key: recovery says so.
    let out = run(warden(dir.path())
        .args(["admin", "recover"])
        .env("WARDEN_ADMIN_TOKEN", "a-configured-admin-token-of-length"));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("admin_token is set in the configuration"),
        "{}",
        text(&out.stderr)
    );
    // Pointed at an empty directory it creates nothing.
    let empty = tempfile::tempdir().unwrap();
    let out = run(warden(empty.path()).args(["admin", "recover"]));
    assert!(!out.status.success());
    assert!(!empty.path().join("warden-data").exists());
}
