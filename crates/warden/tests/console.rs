//! The web console in a real browser: Debian's Chromium driven by Playwright
//! (`tests/web/console.mjs`, playwright-core with the system browser, never a
//! downloaded one), against a gateway that trusts the real test OpenID provider,
//! with real psql and ssh sessions to review and replay.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::zombie_processes)]

mod common;

use common::*;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Waits for `probe` to give a value, up to 30 s.
fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no {what} in 30 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn reviewers_approve_responders_replay_and_admins_edit_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = provider_issuer();
    let running = start_gateway_trusting_provider(
        dir.path(),
        &format!(
            "[[policies.guardrails]]\nname = \"held\"\n\
             [[policies.guardrails.rules]]\nname = \"deletes\"\naction = \"review\"\n\
             sql_statements = [\"delete\"]\n\
             [[policies.guardrails]]\nname = \"no-drops\"\n\
             [[policies.guardrails.rules]]\nname = \"no-ddl\"\nsql_statements = [\"ddl\"]\n\
             [[policies.masking]]\nname = \"pii\"\ndetectors = [\"email\"]\n\
             [events]\nmax_attempts = 1\nbackoff_base_ms = 100\n\
             [web.oidc]\nissuer = \"{issuer}\"\nclient_id = \"warden-console\"\n\
             client_secret = \"warden-console-secret\"\nresource = \"urn:warden\"\n"
        ),
        &[
            ("WARDEN_LOG", "info"),
            ("WARDEN_ADMIN_GROUPS", "[\"admins\"]"),
        ],
    );
    let (url, admin) = (running.url.clone(), running.printed_key.clone().unwrap());
    post_admin(
        &url,
        &admin,
        "/api/connections",
        &json!({"name": "ledger", "kind": "postgres", "target": "127.0.0.1:5432/postgres",
                "username": "warden_t_scram", "secret": "scram-pw-1",
                "allowed_groups": ["dba"], "tls": {"mode": "disable"},
                "description": "<img src=x onerror=alert(1)>",
                "access": {"reviewers": ["sre"], "reuse_approved_reviews": true},
                "policies": {"guardrails": ["no-drops"], "reviews": ["held"], "masking": ["pii"]}}),
    );
    let (ssh_body, ssh_key) = sshd_connection(&["dba"]);
    post_admin(&url, &admin, "/api/connections", &ssh_body);
    let carol = api_key(&url, &admin, "carol", "dba");
    let console_admin = api_key(&url, &admin, "olga", "admins");
    let setup = run(Command::new("psql")
        .arg("postgres://postgres@127.0.0.1:5432/postgres")
        .args(["-X", "-q", "-c"])
        .arg(
            "DROP TABLE IF EXISTS warden_console_t; CREATE TABLE warden_console_t (id int, email text); \
             INSERT INTO warden_console_t VALUES (1, 'ann@example.com'), (2, 'bo@example.com'); \
             GRANT ALL ON warden_console_t TO warden_t_scram;",
        ));
    assert!(setup.status.success(), "{}", text(&setup.stderr));

    // A terminal to replay: ssh with a PTY runs a command that prints a marker.
    let ssh_port = running.port("SSH");
    let ssh = run(ssh_box(&ssh_port, &carol)
        .arg("echo marker-from-$((6*7))-terminal")
        .stdin(Stdio::null()));
    assert!(
        text(&ssh.stdout).contains("marker-from-42-terminal"),
        "{}{}",
        text(&ssh.stdout),
        text(&ssh.stderr)
    );
    let ssh_session = wait_for("closed ssh session", || {
        let list = call(&url, &admin, "GET", "/api/sessions?connection=box", None).1;
        list.as_array()?
            .iter()
            .find(|s| s["status"] == "closed")
            .map(|s| s["id"].as_str().unwrap().to_string())
    });

    // A connection that needs a grant, asked for and granted in the browser.
    post_admin(
        &url,
        &admin,
        "/api/connections",
        &json!({"name": "vault", "kind": "postgres", "target": "127.0.0.1:5432/postgres",
                "username": "warden_t_scram", "secret": "scram-pw-1",
                "allowed_groups": ["dba"], "tls": {"mode": "disable"},
                "access": {"request_required": true, "reviewers": ["sre"]}}),
    );

    // A shell still open, to follow live: it ends when the browser says it is watching.
    let mut live = ssh_box(&ssh_port, &carol)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut live_input = live.stdin.take().unwrap();
    live_input
        .write_all(b"echo live-marker-$((20+22))\n")
        .unwrap();
    let live_session = wait_for("active ssh session", || {
        let list = call(
            &url,
            &admin,
            "GET",
            "/api/sessions?connection=box&status=active",
            None,
        )
        .1;
        list.as_array()?
            .first()
            .map(|s| s["id"].as_str().unwrap().to_string())
    });
    let watching = dir.path().join("watching-live");
    let signal = watching.clone();
    let closer = std::thread::spawn(move || {
        let start = Instant::now();
        while !signal.exists() && start.elapsed() < Duration::from_secs(120) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = live_input.write_all(b"exit\n");
    });

    // carol's psql waits for a review while the browser decides it.
    let pg_port = running.port("PostgreSQL");
    let held_sql = "DELETE FROM warden_console_t WHERE id = 1";
    let mut psql = Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={pg_port} dbname=ledger user=carol sslmode=disable"
        ))
        .args(["-X", "-c", held_sql])
        .env("PGPASSWORD", &carol)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let review = wait_for("pending review", || {
        let list = call(&url, &admin, "GET", "/api/reviews?status=pending", None).1;
        list.as_array()?
            .iter()
            .find(|r| r["command"] == held_sql)
            .map(|r| r["id"].as_str().unwrap().to_string())
    });

    let shots = workspace().join("target/console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let secrets_file = dir.path().join("browser-secrets.json");
    let node = Command::new("node")
        .arg(workspace().join("tests/web/console.mjs"))
        .env("GW", &url)
        .env("ISSUER", &issuer)
        .env("ADMIN_KEY", &console_admin)
        .env("CAROL_KEY", &carol)
        .env("REVIEW_ID", &review)
        .env("HELD_SQL", held_sql)
        .env("SSH_SESSION", &ssh_session)
        .env("LIVE_SESSION", &live_session)
        .env("LIVE_WATCHING", &watching)
        .env("SHOTS", &shots)
        .env("SECRETS_OUT", &secrets_file)
        .env(
            "NEVER_SHOWN",
            json!([
                "scram-pw-1",
                ssh_key.lines().nth(1).unwrap(),
                "warden-console-secret",
                &carol,
                &console_admin,
                &admin
            ])
            .to_string(),
        )
        .output()
        .unwrap();
    let browser_log = format!("{}{}", text(&node.stdout), text(&node.stderr));
    std::fs::write(&watching, b"done").unwrap();
    closer.join().unwrap();
    let _ = live.wait();
    // psql saw its statement run once the browser approved it.
    let mut out = String::new();
    if node.status.success() {
        psql.stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
    } else {
        let _ = psql.kill();
    }
    assert!(node.status.success(), "browser run failed:\n{browser_log}");
    assert!(psql.wait().unwrap().success());
    assert!(out.contains("DELETE 1"), "{out}");
    let approved = call(&url, &admin, "GET", &format!("/api/reviews/{review}"), None).1;
    assert_eq!(approved["status"], "approved", "{approved}");
    assert_eq!(approved["approvals"][0]["subject"], "bob");
    assert_eq!(
        approved["approvals"][0]["comment"],
        "checked: one row, INC-7"
    );

    // The browser's session cookie, CSRF token and the keys typed in never reach the
    // gateway's log or the audit log.
    let browser: Value = serde_json::from_slice(&std::fs::read(&secrets_file).unwrap()).unwrap();
    let log = stop(running);
    let mut audit = String::new();
    for entry in std::fs::read_dir(dir.path().join("warden-data")).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("warden.db")
        {
            audit.push_str(&String::from_utf8_lossy(&std::fs::read(path).unwrap()));
        }
    }
    for secret in browser["values"].as_array().unwrap() {
        let s = secret.as_str().unwrap();
        assert!(s.len() >= 16, "{s}");
        assert!(!log.contains(s), "a browser secret is in the gateway log");
        assert!(!audit.contains(s), "a browser secret is in the store");
    }
    for s in [carol.as_str(), "scram-pw-1"] {
        assert!(!log.contains(s), "{s} in the gateway log");
    }
    // Console logins and logouts are audited.
    for kind in ["auth.login", "auth.logout"] {
        assert!(audit.contains(kind), "no {kind} event");
    }
    println!("{browser_log}");
}
