//! The `warden` binary as a user runs it: embedded default start, configuration
//! errors, `--print-config`, offline audit verification after tampering, and a psql
//! session through the proxy replayed with `warden replay`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// Gateway children are returned to the test and waited for in `stop`.
#![allow(clippy::zombie_processes)]

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};

mod common;
use common::*;

const BACKEND_SECRET: &str = "cli-test-Backend-Secret-42!";

#[test]
fn embedded_default_start_admin_key_once_no_secrets_in_logs_and_tamper_evident_audit() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gateway(dir.path());
    let key = gw
        .printed_key
        .clone()
        .expect("first start prints the admin key");
    // Its output is not a terminal: the key went to an owner-only file, not stdout.
    assert!(
        gw.stdout_head.contains("admin API key written to"),
        "{}",
        gw.stdout_head
    );
    assert!(!gw.stdout_head.contains(&key));
    assert!(key.starts_with("wdn_admin_"), "{key}");

    // The embedded default keeps its state in ./warden-data, the master key 0600.
    let data = dir.path().join("warden-data");
    assert!(data.join("warden.db").exists());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(data.join("master.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let mode = std::fs::metadata(data.join("admin.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "admin.key");
    // So are the store and SQLite's companion files (they hold sealed secrets, key
    // hashes and the audit chain).
    for name in ["warden.db", "warden.db-wal", "warden.db-shm"] {
        let path = data.join(name);
        if name == "warden.db" || path.exists() {
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
    }

    let rt = tokio::runtime::Runtime::new().unwrap();
    let http = reqwest::Client::new();
    let create = rt.block_on(async {
        let resp = http
            .post(format!("{}/api/connections", gw.url))
            .bearer_auth(&key)
            .json(
                &json!({"name": "billing", "kind": "postgres", "target": "127.0.0.1:5432",
                          "username": "app", "secret": BACKEND_SECRET, "allowed_groups": ["dba"]}),
            )
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    });
    assert_eq!(create.0, 201, "{}", create.1);
    let first_err = stop(gw);

    // Restart: same store, no new key printed, the old key still works.
    let gw = start_gateway(dir.path());
    assert!(
        gw.printed_key.is_none(),
        "admin key printed twice:\n{}",
        gw.stdout_head
    );
    let status = rt.block_on(async {
        http.get(format!("{}/api/me", gw.url))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status, 200);
    let second_err = stop(gw);

    // Neither the backend secret nor the admin key reach the logs.
    for log in [&first_err, &second_err] {
        assert!(
            log.contains("gateway started"),
            "debug log captured:\n{log}"
        );
        assert!(
            !log.contains(BACKEND_SECRET),
            "backend secret in the log:\n{log}"
        );
        assert!(!log.contains(&key), "admin key in the log:\n{log}");
    }

    // Offline verification: intact, then one changed byte is caught and named.
    let out = run(warden(dir.path()).args(["audit", "verify"]));
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("audit log intact"));

    let out =
        run(warden(dir.path()).args(["audit", "list", "--kind", "connection.create", "--json"]));
    assert!(out.status.success());
    // Offline, --tail gives the newest too, in chain order.
    let all = run(warden(dir.path()).args(["audit", "list", "--json"]));
    let tail = run(warden(dir.path()).args(["audit", "list", "--json", "--limit", "3", "--tail"]));
    let all = text(&all.stdout);
    let last: Vec<&str> = all
        .lines()
        .skip(all.lines().count().saturating_sub(3))
        .collect();
    assert_eq!(text(&tail.stdout).lines().collect::<Vec<_>>(), last);
    let entry: Value = serde_json::from_str(text(&out.stdout).lines().next().unwrap()).unwrap();
    let (seq, id) = (
        entry["seq"].as_i64().unwrap(),
        entry["event"]["id"].as_str().unwrap().to_string(),
    );
    assert!(!text(&out.stdout).contains(BACKEND_SECRET));

    rt.block_on(async {
        let url = format!("sqlite://{}", data.join("warden.db").display());
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        let done = sqlx::query("UPDATE audit_events SET body = REPLACE(body, '\"billing\"', '\"billinG\"') WHERE seq = ?")
            .bind(seq)
            .execute(&pool)
            .await
            .unwrap();
        assert_eq!(done.rows_affected(), 1);
        pool.close().await;
    });
    let out = run(warden(dir.path()).args(["audit", "verify"]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let report = text(&out.stdout);
    assert!(
        report.contains(&format!("seq {seq}")) && report.contains(&id),
        "{report}"
    );
    let out = run(warden(dir.path()).args(["audit", "verify", "--json"]));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (json["ok"].as_bool(), json["problem"]["seq"].as_i64()),
        (Some(false), Some(seq))
    );
}

#[test]
fn wrong_or_exposed_master_key_fails_fast() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gateway(dir.path());
    stop(gw);
    let key_path = dir.path().join("warden-data/master.key");
    use std::os::unix::fs::PermissionsExt;

    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(warden(dir.path()).arg("gateway"));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("chmod 600"),
        "{}",
        text(&out.stderr)
    );

    std::fs::remove_file(&key_path).unwrap();
    let out = run(warden(dir.path()).arg("gateway").env(
        "WARDEN_SECRETS__MASTER_KEY",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    ));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("master key does not match"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn print_config_redacts_secrets_and_applies_env() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("warden.toml"),
        "data_dir = \"/var/lib/warden\"\n[store]\nurl = \"postgres://warden:StorePass99@db:5432/warden\"\n",
    )
    .unwrap();
    let out = run(warden(dir.path())
        .args(["gateway", "--config", "warden.toml", "--print-config"])
        .env("WARDEN_ADMIN_TOKEN", "env-admin-token-0123456789abcdef")
        .env(
            "WARDEN_SECRETS__MASTER_KEY",
            "bWFzdGVyLWtleS1tYXN0ZXIta2V5LW1hc3Rlci1rZXkh",
        )
        .env("WARDEN_API__MAX_BODY_BYTES", "4096"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    for secret in [
        "StorePass99",
        "env-admin-token-0123456789abcdef",
        "bWFzdGVy",
    ] {
        assert!(!printed.contains(secret), "{secret} printed:\n{printed}");
    }
    for expected in [
        "data_dir = \"/var/lib/warden\"",
        "max_body_bytes = 4096",
        "listen = \"127.0.0.1:0\"",
        "postgres://warden:<redacted>@db:5432/warden",
        "admin_token = \"<redacted>\"",
    ] {
        assert!(printed.contains(expected), "{expected} missing:\n{printed}");
    }
    // Printing the config touches nothing on disk.
    assert!(!dir.path().join("warden-data").exists());
}

#[test]
fn bad_config_fails_fast_naming_field_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.toml"),
        "admin_groups = [\"ops\"]\n\n[api]\nlisen = \"0.0.0.0:80\"\n",
    )
    .unwrap();
    let out = run(warden(dir.path()).args(["gateway", "--config", "bad.toml"]));
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("line 4") && err.contains("lisen"),
        "{err}"
    );

    let out = run(warden(dir.path()).args(["gateway", "--config", "missing.toml"]));
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("missing.toml"));

    let out = run(warden(dir.path())
        .arg("gateway")
        .env("WARDEN_API__LISTEN", "everywhere"));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("WARDEN_API__LISTEN"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        !dir.path().join("warden-data").exists(),
        "a failed start left state behind"
    );
}

/// The held password of the `warden_t_scram` role that `scripts/test.sh` creates.
const PG_PASSWORD: &str = "scram-pw-1";
/// The held password of the MariaDB `warden_t_ed` account (ed25519) it creates.
const MYSQL_PASSWORD: &str = "ed-pw-1";
/// A held password the server rejects: it must not surface in the error either.
const WRONG_MYSQL_PASSWORD: &str = "wrong-pw-4f9c2a";

#[test]
fn psql_session_is_replayable_and_no_secret_reaches_logs_recordings_or_the_store() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("warden.toml"),
        r#"
[[policies.guardrails]]
name = "no-drops"
[[policies.guardrails.rules]]
name = "no-ddl"
sql_statements = ["ddl"]

[[policies.masking]]
name = "pii"
detectors = ["email"]
"#,
    )
    .unwrap();
    // The benchmark ladder's switch, which only a build with the `ablation` feature
    // reads: this (normal) build must audit and record everything regardless.
    let gw = start_gateway_with(
        dir.path(),
        &[
            ("WARDEN_CONFIG", "warden.toml"),
            ("WARDEN_ABLATE", "journal,ship,record"),
        ],
    );
    let (pg, mysql, ssh) = (
        gw.listener("PostgreSQL"),
        gw.listener("MySQL"),
        gw.listener("SSH"),
    );
    // Read, then deleted, as its output asks; no other file may hold it.
    let admin = gw.printed_key.clone().unwrap();
    std::fs::remove_file(dir.path().join("warden-data/admin.key")).unwrap();

    let post = |path: &str, body: Value| post_admin(&gw.url, &admin, path, &body);
    post(
        "/api/connections",
        json!({"name": "billing", "kind": "postgres", "target": "127.0.0.1:5432/postgres",
               "username": "warden_t_scram", "secret": PG_PASSWORD, "allowed_groups": ["dba"],
               "policies": {"guardrails": ["no-drops"], "masking": ["pii"]},
               // Backend TLS has its own tests; plain TCP keeps this one about the binary.
               "tls": {"mode": "disable"}}),
    );
    let mariadb =
        std::env::var("WARDEN_TEST_MYSQL_HOSTPORT").unwrap_or_else(|_| "127.0.0.1:3306".into());
    for (name, password) in [("shop", MYSQL_PASSWORD), ("shop-bad", WRONG_MYSQL_PASSWORD)] {
        post(
            "/api/connections",
            json!({"name": name, "kind": "mysql", "target": format!("{mariadb}/warden_t"),
                   "username": "warden_t_ed", "secret": password, "allowed_groups": ["dba"],
                   "policies": {"guardrails": ["no-drops"], "masking": ["pii"]},
                   "tls": {"mode": "disable"}}),
        );
    }
    let (ssh_box, held_key) = sshd_connection(&["dba"]);
    post("/api/connections", ssh_box);
    let token = post(
        "/api/api-keys",
        json!({"name": "psql-user", "groups": ["dba"]}),
    )["token"]
        .as_str()
        .unwrap()
        .to_string();

    let (host, port) = pg.rsplit_once(':').unwrap();
    let psql = Command::new("psql")
        .args([
            "-X",
            "-v",
            "ON_ERROR_STOP=0",
            &format!("host={host} port={port} dbname=billing user=me"),
            "-c",
            "SELECT 'reach me at eve@example.com' AS contact",
            "-c",
            "DROP TABLE IF EXISTS nothing_here",
        ])
        .env("PGPASSWORD", &token)
        .output()
        .unwrap();
    let psql_out = text(&psql.stdout) + &text(&psql.stderr);
    assert!(
        psql_out.contains("reach me at [redacted:email]"),
        "{psql_out}"
    );
    assert!(psql_out.contains("no-drops/no-ddl"), "{psql_out}");
    // The same through the MySQL listener with the mysql client, and a connection
    // whose held password the server rejects.
    let (mhost, mport) = mysql.rsplit_once(':').unwrap();
    let mysql_cli = |db: &str| {
        let out = Command::new("mysql")
            .args([
                &format!("-h{mhost}"),
                &format!("-P{mport}"),
                "-ume",
                "--batch",
                db,
            ])
            .args(["-e", "SELECT 'reach me at eve@example.com' AS contact"])
            .env("MYSQL_PWD", &token)
            .output()
            .unwrap();
        text(&out.stdout) + &text(&out.stderr)
    };
    let out = mysql_cli("shop");
    assert!(out.contains("reach me at [redacted:email]"), "{out}");
    let out = mysql_cli("shop-bad");
    assert!(out.contains("could not log in to the database"), "{out}");
    // And a command through the SSH listener with the real ssh client.
    let ssh_port = ssh.rsplit_once(':').unwrap().1;
    let out = Command::new("sshpass")
        .args([
            "-e",
            "ssh",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args([
            "-o",
            "LogLevel=ERROR",
            "-o",
            "PubkeyAuthentication=no",
            "-p",
            ssh_port,
        ])
        .args(["box@127.0.0.1", "echo ssh-ok-$((40+2))"])
        .env("SSHPASS", &token)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout), "ssh-ok-42\n", "{}", text(&out.stderr));
    let log = stop(gw);

    // Replay from the recordings directory, the gateway stopped.
    let out = run(warden(dir.path()).args(["audit", "list", "--kind", "session.start", "--json"]));
    let start: Value = serde_json::from_str(text(&out.stdout).lines().next().unwrap()).unwrap();
    let session = start["event"]["session_id"].as_str().unwrap().to_string();
    // The log says when a PostgreSQL session opened and ended, as for every protocol.
    for said in ["session opened", "session ended"] {
        assert!(
            log.lines()
                .any(|l| l.contains(said) && l.contains(&session)),
            "no `{said}` for {session} in the log"
        );
    }
    assert!(log.contains("protocol=\"postgres\""), "{log}");
    // Elsewhere, with no gateway named or logged in to, replay says where it looked.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = run(warden(elsewhere.path()).args(["replay", &session]));
    assert!(!out.status.success());
    let said = text(&out.stderr);
    assert!(
        said.contains("no recording of session")
            && said.contains(
                &elsewhere
                    .path()
                    .join("warden-data/recordings")
                    .display()
                    .to_string()
            )
            && said.contains("WARDEN_GATEWAY"),
        "{said}"
    );
    let out = run(warden(dir.path()).args(["replay", &session, "--config", "warden.toml"]));
    let replay = text(&out.stdout);
    assert!(out.status.success(), "{replay}{}", text(&out.stderr));
    // The statement as kept: its literal masked like the results.
    assert!(
        replay.contains("> SELECT 'reach me at [redacted:email]'"),
        "{replay}"
    );
    assert!(!replay.contains("eve@example.com"), "{replay}");
    assert!(replay.contains("reach me at [redacted:email]"), "{replay}");
    assert!(replay.contains("DENIED by no-drops/no-ddl"), "{replay}");
    assert!(replay.contains("ERROR 42501"), "{replay}");
    assert!(replay.contains("session ended"), "{replay}");
    // Paced replay prints the same timeline.
    let out = run(warden(dir.path()).args([
        "replay",
        &session,
        "--speed",
        "1000",
        "--config",
        "warden.toml",
    ]));
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), replay);
    // The SSH session replays with its terminal, and exports as asciicast.
    let out = run(warden(dir.path()).args(["audit", "list", "--kind", "ssh.exec", "--json"]));
    let exec: Value = serde_json::from_str(text(&out.stdout).lines().next().unwrap()).unwrap();
    let ssh_session = exec["event"]["session_id"].as_str().unwrap().to_string();
    let out = run(warden(dir.path()).args(["replay", &ssh_session, "--config", "warden.toml"]));
    let replay_ssh = text(&out.stdout);
    assert!(
        replay_ssh.contains("> echo ssh-ok-$((40+2))"),
        "{replay_ssh}"
    );
    assert!(replay_ssh.contains("ssh-ok-42"), "{replay_ssh}");
    assert!(replay_ssh.contains("exited with 0"), "{replay_ssh}");
    let channel = replay_ssh
        .lines()
        .find_map(|l| {
            l.split("terminal ")
                .nth(1)?
                .split(':')
                .next()?
                .parse::<u32>()
                .ok()
        })
        .unwrap();
    let cast = dir.path().join("exec.cast");
    let out = run(warden(dir.path()).args([
        "replay",
        &ssh_session,
        "--config",
        "warden.toml",
        "--terminal",
        &channel.to_string(),
        "--export",
        cast.to_str().unwrap(),
    ]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let played = Command::new("script")
        .args([
            "-qec",
            &format!("asciinema cat {}", cast.display()),
            "/dev/null",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(played.status.success(), "{}", text(&played.stdout));
    assert!(text(&played.stdout).contains("ssh-ok-42"));
    let out =
        run(warden(dir.path()).args(["replay", &session, "--json", "--config", "warden.toml"]));
    assert!(text(&out.stdout).lines().count() >= 5);
    let out = run(warden(dir.path()).args(["replay", "0190f2a4-0000-7000-8000-000000000000"]));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no recording"),
        "{}",
        text(&out.stderr)
    );

    // The held password and the user's token appear in no log, recording or store
    // file (the store keeps the password sealed, the token hashed).
    let mut haystack = log.into_bytes();
    let mut files = vec![dir.path().join("warden-data")];
    while let Some(p) = files.pop() {
        if p.is_dir() {
            files.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else if p.to_string_lossy().ends_with(".zst") {
            // Terminal recordings are compressed: search what they hold.
            let bytes = std::fs::read(&p).unwrap();
            let mut decoder = zstd::stream::read::Decoder::new(&bytes[..]).unwrap();
            std::io::Read::read_to_end(&mut decoder, &mut haystack).unwrap();
        } else {
            haystack.extend(std::fs::read(&p).unwrap());
        }
    }
    let secret_part = token.rsplit('_').next().unwrap();
    // The longest line of the held private key's body.
    let key_line = held_key
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .max_by_key(|l| l.len())
        .unwrap();
    for needle in [
        key_line,
        PG_PASSWORD,
        MYSQL_PASSWORD,
        WRONG_MYSQL_PASSWORD,
        token.as_str(),
        secret_part,
        admin.as_str(),
    ] {
        assert!(
            !haystack
                .windows(needle.len())
                .any(|w| w == needle.as_bytes()),
            "`{needle}` leaked into logs or data files"
        );
    }
}

#[test]
fn a_killed_gateway_leaves_a_playable_terminal_recording() {
    let dir = tempfile::tempdir().unwrap();
    let mut gw = start_gateway(dir.path());
    let admin = gw.printed_key.clone().unwrap();
    let ssh_addr = gw
        .stdout_head
        .lines()
        .find_map(|l| l.trim().strip_prefix("SSH proxy listening on "))
        .unwrap()
        .to_string();
    let post = |path: &str, body: Value| post_admin(&gw.url, &admin, path, &body);
    post("/api/connections", sshd_connection(&["ops"]).0);
    let token = post("/api/api-keys", json!({"name": "ops", "groups": ["ops"]}))["token"]
        .as_str()
        .unwrap()
        .to_string();
    // A shell with a PTY that prints a line and then stays open.
    let mut client = Command::new("sshpass")
        .args(["-e", "ssh", "-tt", "-o", "StrictHostKeyChecking=no"])
        .args(["-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
        .args(["-o", "PubkeyAuthentication=no", "-p"])
        .arg(ssh_addr.rsplit_once(':').unwrap().1)
        .arg("box@127.0.0.1")
        .env("SSHPASS", &token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = client.stdin.take().unwrap();
    let recordings = dir.path().join("warden-data/recordings");
    let cast = || {
        std::fs::read_dir(&recordings)
            .ok()?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .find(|n| n.ends_with(".cast.zst"))
    };
    let export = dir.path().join("cut.cast");
    let exported = |name: &str| {
        let mut parts = name.split('.');
        let (session, channel) = (parts.next().unwrap(), parts.next().unwrap());
        let out = run(warden(dir.path()).args([
            "replay",
            session,
            "--terminal",
            channel,
            "--export",
            export.to_str().unwrap(),
        ]));
        assert!(out.status.success(), "{}", text(&out.stderr));
        std::fs::read_to_string(&export).unwrap()
    };
    use std::io::Write;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let name = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no terminal recording"
        );
        if let Some(n) = cast() {
            break n;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    writeln!(stdin, "echo before-kill-$((20+22))").unwrap();
    // Wait until the line is on disk (frames are written at least every 0.5 s).
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the output never reached the file"
        );
        if exported(&name).contains("before-kill-42") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // SIGKILL: no shutdown, no final flush.
    gw.child.kill().unwrap();
    gw.child.wait().unwrap();
    let _ = client.kill();
    let _ = client.wait();
    let cast_text = exported(&name);
    assert!(cast_text.contains("before-kill-42"));
    let played = Command::new("script")
        .args([
            "-qec",
            &format!("asciinema cat {}", export.display()),
            "/dev/null",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(played.status.success(), "{}", text(&played.stdout));
    assert!(text(&played.stdout).contains("before-kill-42"));

    // The restart closes the session the dead run left open, as interrupted, and
    // records that the gateway died; a clean stop and start after it records nothing.
    let session = name.split('.').next().unwrap().to_string();
    let gw = start_gateway(dir.path());
    let (status, view) = call(
        &gw.url,
        &admin,
        "GET",
        &format!("/api/sessions/{session}"),
        None,
    );
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["status"], "interrupted", "{view}");
    assert!(view["ended_at"].is_string(), "{view}");
    let events = |kind: &str| {
        let (_, page) = call(
            &gw.url,
            &admin,
            "GET",
            &format!("/api/audit?kind={kind}"),
            None,
        );
        page["events"].as_array().unwrap().clone()
    };
    let crashes = events("gateway.unclean_stop");
    assert_eq!(crashes.len(), 1, "{crashes:?}");
    assert_eq!(crashes[0]["event"]["payload"]["sessions_interrupted"], 1);
    let ends: Vec<Value> = events("session.end")
        .into_iter()
        .filter(|e| e["event"]["session_id"] == session.as_str())
        .collect();
    assert_eq!(ends.len(), 1, "{ends:?}");
    assert_eq!(ends[0]["event"]["payload"]["status"], "interrupted");
    stop(gw);
    let gw = start_gateway(dir.path());
    let (_, page) = call(
        &gw.url,
        &admin,
        "GET",
        "/api/audit?kind=gateway.unclean_stop",
        None,
    );
    assert_eq!(
        page["events"].as_array().unwrap().len(),
        1,
        "a clean stop is not a crash"
    );
    stop(gw);
}

#[test]
fn access_requests_and_reviews_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_gateway(dir.path());
    let admin = running.printed_key.clone().unwrap();
    let url = running.url.clone();
    post_admin(
        &url,
        &admin,
        "/api/connections",
        &json!({"name": "prod", "kind": "postgres", "target": "127.0.0.1:5432/postgres",
                "username": "warden_t_scram", "secret": "scram-pw-1", "allowed_groups": ["dev"],
                "tls": {"mode": "disable"},
                "access": {"request_required": true, "reviewers": ["sre"]}}),
    );
    let key = |subject: &str, group: &str| api_key(&url, &admin, subject, group);
    let (alice, bob) = (key("alice", "dev"), key("bob", "sre"));
    let cli = |token: &str, args: &[&str]| {
        run(warden(dir.path())
            .env("WARDEN_GATEWAY", &url)
            .env("WARDEN_TOKEN", token)
            .args(args))
    };

    let out = cli(
        &alice,
        &[
            "request",
            "prod",
            "--for",
            "1h",
            "--reason",
            "INC-7 check",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["status"], "pending");

    let out = cli(&bob, &["review", "list"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed = text(&out.stdout);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("access") && l.contains(&id) && l.contains("INC-7 check")),
        "{listed}"
    );
    let out = cli(&alice, &["review", "approve", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot decide your own"),
        "{}",
        text(&out.stderr)
    );
    let out = cli(
        &bob,
        &["review", "approve", &id, "--comment", "ok for INC-7"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("approved: granted until"),
        "{}",
        text(&out.stdout)
    );
    let out = cli(&alice, &["review", "show", &id]);
    let shown = text(&out.stdout);
    assert!(
        shown.contains("approved") && shown.contains("by bob") && shown.contains("ok for INC-7"),
        "{shown}"
    );

    // `--wait` returns when a reviewer decides; a rejection exits 1.
    let mut waiting = warden(dir.path())
        .env("WARDEN_GATEWAY", &url)
        .env("WARDEN_TOKEN", &alice)
        .args([
            "request", "prod", "--for", "30m", "--reason", "again", "--wait",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(waiting.stdout.as_mut().unwrap())
        .read_line(&mut first)
        .unwrap();
    let second = first.split_whitespace().nth(2).unwrap().to_string();
    assert!(first.contains("pending"), "{first}");
    let out = cli(
        &bob,
        &["review", "reject", &second, "--comment", "one is enough"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut rest = String::new();
    waiting
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut rest)
        .unwrap();
    assert_eq!(waiting.wait().unwrap().code(), Some(1));
    assert!(rest.contains("rejected by bob: one is enough"), "{rest}");

    // Clear errors without a token or a gateway.
    let out = run(warden(dir.path())
        .env("WARDEN_GATEWAY", &url)
        .args(["review", "list"]));
    assert!(
        text(&out.stderr).contains("WARDEN_TOKEN"),
        "{}",
        text(&out.stderr)
    );
    let out = run(warden(dir.path())
        .env("WARDEN_GATEWAY", "http://127.0.0.1:9")
        .env("WARDEN_TOKEN", &bob)
        .args(["review", "list"]));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("cannot reach the gateway at http://127.0.0.1:9"),
        "{}",
        text(&out.stderr)
    );
    let out = run(warden(dir.path())
        .env("WARDEN_GATEWAY", &url)
        .env("WARDEN_TOKEN", "wdn_bogus_token")
        .args(["review", "list"]));
    assert!(
        text(&out.stderr).contains("the gateway refused the token"),
        "{}",
        text(&out.stderr)
    );
    stop(running);
}

/// A minimal HTTP receiver on `listener`: answers every POST with 204 and keeps
/// the bodies (requests on one connection are read in turn).
fn webhook_receiver(
    listener: std::net::TcpListener,
) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = bodies.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let kept = kept.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                loop {
                    let mut length = 0usize;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some((k, v)) = line.split_once(':')
                            && k.eq_ignore_ascii_case("content-length")
                        {
                            length = v.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0u8; length];
                    reader.read_exact(&mut body).unwrap();
                    kept.lock().unwrap().push(String::from_utf8(body).unwrap());
                    use std::io::Write;
                    writer
                        .write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                        .unwrap();
                }
            });
        }
    });
    bodies
}

#[test]
fn events_undelivered_when_the_gateway_is_killed_are_delivered_after_it_restarts() {
    let dir = tempfile::tempdir().unwrap();
    // A port for the receiver, which is not there yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut gw = start_gateway(dir.path());
    let admin = gw.printed_key.clone().unwrap();
    let secret = "cli-webhook-secret-0123456789";
    let hook = post_admin(
        &gw.url,
        &admin,
        "/api/webhooks",
        &json!({"url": format!("http://127.0.0.1:{port}/hook"), "kinds": ["connection.*"],
                "secret": secret}),
    );
    assert!(hook["id"].is_string(), "{hook}");
    for name in ["one", "two", "three"] {
        post_admin(
            &gw.url,
            &admin,
            "/api/connections",
            &json!({"name": name, "kind": "postgres", "target": "127.0.0.1:5432",
                    "username": "warden_t_scram", "allowed_groups": ["dev"]}),
        );
    }
    // SIGKILL while the receiver is down: no shutdown, nothing delivered.
    std::thread::sleep(std::time::Duration::from_millis(300));
    gw.child.kill().unwrap();
    let _ = gw.child.wait();
    let mut logs = String::new();
    let _ = gw.child.stderr.take().unwrap().read_to_string(&mut logs);

    let bodies = webhook_receiver(std::net::TcpListener::bind(("127.0.0.1", port)).unwrap());
    let again = start_gateway(dir.path());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let names = loop {
        let got: Vec<String> = bodies
            .lock()
            .unwrap()
            .iter()
            .map(|b| {
                serde_json::from_str::<Value>(b).unwrap()["connection"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        let mut unique = got.clone();
        unique.dedup();
        if unique.len() >= 3 {
            break unique;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "delivered only {got:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(names, ["one", "two", "three"], "in order, none lost");
    logs += &stop(again);
    assert!(
        !logs.contains(secret),
        "the webhook secret reached the logs"
    );
}

/// The test OpenID provider's issuer (scripts/test.sh starts it).
/// The guardrail set the tunnel tests attach: no DDL.
const NO_DROPS: &str = "[[policies.guardrails]]\nname = \"no-drops\"\n[[policies.guardrails.rules]]\nname = \"no-ddl\"\nsql_statements = [\"ddl\"]\n";

/// `name="..." value="..."` pairs of a page's hidden form fields.
fn hidden_fields(html: &str) -> Vec<(String, String)> {
    html.split("<input")
        .skip(1)
        .filter_map(|tag| {
            let attr = |name: &str| {
                let start = tag.find(&format!("{name}=\""))? + name.len() + 2;
                Some(tag[start..].split('"').next()?.to_string())
            };
            tag.contains("type=\"hidden\"")
                .then(|| Some((attr("name")?, attr("value")?)))
                .flatten()
        })
        .collect()
}

#[test]
fn login_with_the_device_flow_and_pkce_caches_and_renews_tokens() {
    let issuer = provider_issuer();
    let dir = tempfile::tempdir().unwrap();
    let running = start_gateway_trusting_provider(
        dir.path(),
        &format!(
            "[auth.cli]\nissuer = \"{issuer}\"\nclient_id = \"warden-cli\"\n\
             scopes = [\"openid\", \"offline_access\", \"api\"]\nresource = \"urn:warden\"\n"
        ),
        &[],
    );
    let url = running.url.clone();
    let home = dir.path().join("cfg");
    let cli = |args: &[&str]| {
        let mut cmd = warden(dir.path());
        cmd.env("XDG_CONFIG_HOME", &home)
            .env("WARDEN_GATEWAY", &url)
            .args(args);
        cmd
    };
    let rt = tokio::runtime::Runtime::new().unwrap();

    // The device flow: the CLI prints where to confirm; the test confirms as bob.
    let mut login = cli(&["login", "--device"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(login.stdout.take().unwrap());
    let verify = line_after(&mut out, "To log in, open");
    assert!(verify.contains("user_code="), "{verify}");
    rt.block_on(async {
        reqwest::get(format!("{issuer}/test/next-account?name=bob"))
            .await
            .unwrap();
        let mut browser = Browser::new();
        let mut page = browser.go(&verify, None).await;
        let code = verify.split("user_code=").nth(1).unwrap().to_string();
        for _ in 0..3 {
            if page.contains("Sign-in Success") {
                break;
            }
            let mut fields = hidden_fields(&page);
            fields.retain(|(k, _)| k != "user_code");
            fields.push(("user_code".into(), code.clone()));
            page = browser.go(&format!("{issuer}/device"), Some(fields)).await;
        }
        assert!(page.contains("Sign-in Success"), "{page}");
    });
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let status = login.wait().unwrap();
    let mut err = String::new();
    login
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{rest}\n{err}");
    assert!(
        rest.contains(&format!("logged in to {url} as bob (groups: sre)")),
        "{rest}"
    );

    // Cached 0600 in a 0700 directory; whoami and API commands use it.
    use std::os::unix::fs::PermissionsExt;
    let cache = home.join("warden/tokens.json");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&cache), 0o600);
    assert_eq!(mode(&home.join("warden")), 0o700);
    let cached: Value = serde_json::from_str(&std::fs::read_to_string(&cache).unwrap()).unwrap();
    let first_token = cached["gateways"][&url]["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        cached["gateways"][&url]["refresh_token"].is_string(),
        "{cached}"
    );
    let who = run(&mut cli(&["whoami"]));
    assert!(who.status.success(), "{}", text(&who.stderr));
    let shown = text(&who.stdout);
    assert!(
        shown.contains("subject  bob") && shown.contains("groups   sre"),
        "{shown}"
    );
    assert!(!shown.contains(&first_token), "the token is never printed");
    let listed = run(&mut cli(&["review", "list"]));
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    // Replay goes to the gateway logged in to when none is named (here, no such
    // session for bob), not to a recordings directory that is not here.
    let unknown = uuid::Uuid::now_v7().to_string();
    let replay = run(warden(dir.path())
        .env("XDG_CONFIG_HOME", &home)
        .args(["replay", &unknown]));
    assert!(!replay.status.success());
    assert!(
        text(&replay.stderr).contains("that you may see"),
        "{}",
        text(&replay.stderr)
    );

    // An expired token is renewed with the refresh token.
    let mut edited = cached.clone();
    edited["gateways"][&url]["expires_at"] = json!(0);
    std::fs::write(&cache, edited.to_string()).unwrap();
    let who = run(&mut cli(&["whoami"]));
    assert!(who.status.success(), "{}", text(&who.stderr));
    let renewed: Value = serde_json::from_str(&std::fs::read_to_string(&cache).unwrap()).unwrap();
    let second_token = renewed["gateways"][&url]["access_token"].as_str().unwrap();
    assert_ne!(second_token, first_token);
    assert!(renewed["gateways"][&url]["expires_at"].as_i64().unwrap() > 0);

    // Logged out, commands say how to log in.
    assert!(run(&mut cli(&["logout"])).status.success());
    let who = run(&mut cli(&["whoami"]));
    assert!(!who.status.success());
    assert!(
        text(&who.stderr).contains("run `warden login --gateway"),
        "{}",
        text(&who.stderr)
    );

    // The browser flow with PKCE: the CLI listens on loopback for the redirect.
    let mut login = cli(&["login", "--no-browser"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(login.stdout.take().unwrap());
    let page_url = line_after(&mut out, "To log in, open this page in your browser:");
    assert!(
        page_url.contains("code_challenge_method=S256"),
        "{page_url}"
    );
    // Stray requests to the loopback listener do not end the login.
    let redirect = reqwest::Url::parse(&page_url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "redirect_uri")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    let callback_port = reqwest::Url::parse(&redirect).unwrap().port().unwrap();
    for stray in [
        "GET http://[broken HTTP/1.1\r\n\r\n",
        "GET /favicon.ico HTTP/1.1\r\n\r\n",
        "\x00\x01garbage\r\n\r\n",
    ] {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", callback_port)).unwrap();
        s.write_all(stray.as_bytes()).unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 4"), "{answer}");
    }
    let landed = rt.block_on(async {
        Browser::new()
            .go(&format!("{page_url}&login_hint=alice"), None)
            .await
    });
    assert!(landed.contains("You are logged in to Warden"), "{landed}");
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let status = login.wait().unwrap();
    let mut err = String::new();
    login
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{rest}\n{err}");
    assert!(
        rest.contains("as alice (groups: dba, developers)"),
        "{rest}"
    );
    let who = run(&mut cli(&["whoami", "--json"]));
    let me: Value = serde_json::from_slice(&who.stdout).unwrap();
    assert_eq!(me["subject"], "alice");
    stop(running);
}

#[test]
fn connect_tunnels_psql_with_policies_applied_and_refuses_expired_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_gateway_trusting_provider(
        dir.path(),
        &format!("{NO_DROPS}\n[[policies.masking]]\nname = \"pii\"\ndetectors = [\"email\"]\n"),
        &[("WARDEN_AUTH__CLOCK_SKEW_SECS", "0")],
    );
    let admin = running.printed_key.clone().unwrap();
    let url = running.url.clone();
    post_admin(
        &url,
        &admin,
        "/api/connections",
        &json!({"name": "billing", "kind": "postgres", "target": "127.0.0.1:5432/postgres",
                "username": "warden_t_scram", "secret": "scram-pw-1", "allowed_groups": ["dba"],
                "tls": {"mode": "disable"},
                "policies": {"guardrails": ["no-drops"], "masking": ["pii"]}}),
    );
    let token = post_admin(
        &url,
        &admin,
        "/api/api-keys",
        &json!({"name": "tunnel", "subject": "carol", "groups": ["dba"]}),
    )["token"]
        .as_str()
        .unwrap()
        .to_string();
    let start_connect = |token: &str| {
        let mut child = warden(dir.path())
            .env("WARDEN_GATEWAY", &url)
            .env("WARDEN_TOKEN", token)
            .args(["connect", "billing"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut head = String::new();
        let port = loop {
            let mut line = String::new();
            if out.read_line(&mut line).unwrap() == 0 {
                break None;
            }
            head.push_str(&line);
            if let Some(rest) = line.split("port=").nth(1) {
                break Some(rest.split_whitespace().next().unwrap().to_string());
            }
        };
        (child, out, port, head)
    };
    let psql = |port: &str, sql: &str| {
        run(Command::new("psql")
            .arg(format!(
                "host=127.0.0.1 port={port} dbname=billing sslmode=disable"
            ))
            .args(["-X", "-At", "-c", sql])
            .env_remove("PGPASSWORD"))
    };

    let (mut child, out, port, head) = start_connect(&token);
    let port = port.unwrap_or_else(|| panic!("no port in {head}"));
    assert!(head.contains("psql \"host=127.0.0.1 port="), "{head}");
    // No password: the tunnel carries the token; the mask and the guardrail apply.
    let masked = psql(&port, "SELECT 'someone@example.com' AS email");
    assert!(masked.status.success(), "{}", text(&masked.stderr));
    assert!(
        !text(&masked.stdout).contains("someone@example.com"),
        "{}",
        text(&masked.stdout)
    );
    let denied = psql(&port, "DROP TABLE nothing_here");
    assert!(!denied.status.success());
    assert!(
        text(&denied.stderr).contains("Warden denied this statement"),
        "{}",
        text(&denied.stderr)
    );
    // It is a session of the token's subject, recorded like any other.
    let sessions = {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            reqwest::Client::new()
                .get(format!("{url}/api/sessions"))
                .bearer_auth(&admin)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })
    };
    let list = sessions
        .as_array()
        .cloned()
        .unwrap_or_else(|| sessions["sessions"].as_array().unwrap().clone());
    assert!(
        list.iter()
            .filter(|s| s["subject"] == "carol" && s["connection"] == "billing")
            .count()
            >= 2,
        "{sessions}"
    );
    // Ctrl-C closes it cleanly.
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    drop(out);

    // A token that expires while the tunnel listens: later connections are refused.
    let short = client_token("short-lived");
    let (mut child, _out, port, head) = start_connect(&short);
    std::thread::sleep(std::time::Duration::from_secs(3));
    let refused = match &port {
        // Started before the expiry: the next connection through it is refused.
        Some(port) => text(&psql(port, "SELECT 1").stderr),
        // The machine was slow enough for it to expire first: refused at the start.
        None => {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            head + &err
        }
    };
    assert!(refused.contains("expired"), "{refused}");
    let _ = child.kill();
    let _ = child.wait();

    // --json: where the tunnel listens, as one line a script can read.
    let mut child = warden(dir.path())
        .env("WARDEN_GATEWAY", &url)
        .env("WARDEN_TOKEN", &token)
        .args(["connect", "billing", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let said: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        (&said["connection"], &said["kind"]),
        (&json!("billing"), &json!("postgres"))
    );
    let listen = said["listen"].as_str().unwrap();
    assert!(listen.starts_with("127.0.0.1:"), "{said}");
    let port = listen.rsplit_once(':').unwrap().1;
    assert!(
        said["command"]
            .as_str()
            .unwrap()
            .contains(&format!("port={port}")),
        "{said}"
    );
    stop(running);
}

#[test]
fn exec_prints_results_and_waits_for_a_review() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_gateway_trusting_provider(
        dir.path(),
        &format!(
            "{NO_DROPS}\n[[policies.guardrails]]\nname = \"held\"\n\
             [[policies.guardrails.rules]]\nname = \"deletes\"\nsql_statements = [\"delete\"]\n"
        ),
        &[],
    );
    let (url, admin) = (running.url.clone(), running.printed_key.clone().unwrap());
    post_admin(
        &url,
        &admin,
        "/api/connections",
        &json!({"name": "ledger", "kind": "postgres", "target": "127.0.0.1:5432/postgres",
                "username": "warden_t_scram", "secret": "scram-pw-1", "allowed_groups": ["dba"],
                "tls": {"mode": "disable"}, "access": {"reviewers": ["sre"]},
                "policies": {"guardrails": ["no-drops"], "reviews": ["held"]}}),
    );
    let key = |subject: &str, group: &str| api_key(&url, &admin, subject, group);
    let (carol, bob) = (key("carol", "dba"), key("bob", "sre"));
    let setup = run(Command::new("psql")
        .arg("postgres://postgres@127.0.0.1:5432/postgres")
        .args(["-X", "-q", "-c"])
        .arg(
            "DROP TABLE IF EXISTS warden_exec_t; CREATE TABLE warden_exec_t (id int, v text); \
             INSERT INTO warden_exec_t VALUES (1, 'a,b'), (2, NULL); \
             GRANT ALL ON warden_exec_t TO warden_t_scram;",
        ));
    assert!(setup.status.success(), "{}", text(&setup.stderr));
    let exec = |token: &str, args: &[&str]| {
        let mut cmd = warden(dir.path());
        cmd.env("WARDEN_GATEWAY", &url)
            .env("WARDEN_TOKEN", token)
            .arg("exec")
            .arg("ledger")
            .args(args);
        cmd
    };
    let select = "SELECT id, v FROM warden_exec_t ORDER BY id";
    let out = run(&mut exec(&carol, &["-i", select, "--format", "csv"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "id,v\n1,\"a,b\"\n2,\n");
    let out = run(&mut exec(&carol, &["-i", select, "--format", "json"]));
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        rows,
        json!([{"id": "1", "v": "a,b"}, {"id": "2", "v": null}])
    );
    let out = run(&mut exec(&carol, &["-i", select]));
    assert!(
        text(&out.stdout).contains("(2 rows)"),
        "{}",
        text(&out.stdout)
    );
    let out = run(&mut exec(&carol, &["-i", "DROP TABLE warden_exec_t"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("(42501)"),
        "{}",
        text(&out.stderr)
    );
    // A failing statement after others: their results first, then the error.
    let out = run(&mut exec(
        &carol,
        &["-i", "SELECT 41 + 1 AS answer; SELECT 1 / 0"],
    ));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("42"), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("ERROR: "),
        "{}",
        text(&out.stderr)
    );

    // Held for review: the notice names the review; bob approves; it runs.
    let mut held = exec(&carol, &["-i", "DELETE FROM warden_exec_t WHERE id = 1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(held.stderr.take().unwrap());
    let notice = line_after(&mut err, "warden: Warden holds this command for review");
    let id = notice.split_whitespace().next().unwrap().to_string();
    let approve = run(warden(dir.path())
        .env("WARDEN_GATEWAY", &url)
        .env("WARDEN_TOKEN", &bob)
        .args(["review", "approve", &id]));
    assert!(approve.status.success(), "{}", text(&approve.stderr));
    let mut stdout = String::new();
    held.stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    assert!(held.wait().unwrap().success());
    assert!(stdout.contains("(1 rows affected)"), "{stdout}");
    // The session's timeline says how many rows the DELETE changed.
    let cli = |args: &[&str]| {
        run(warden(dir.path())
            .env("WARDEN_GATEWAY", &url)
            .env("WARDEN_TOKEN", &carol)
            .args(args))
    };
    let sessions: Value =
        serde_json::from_slice(&cli(&["sessions", "--json", "--connection", "ledger"]).stdout)
            .unwrap();
    let newest = sessions[0]["id"].as_str().unwrap();
    let replay = text(&cli(&["replay", newest]).stdout);
    assert!(replay.contains("DELETE 1 (1 rows affected, "), "{replay}");
    stop(running);
}

#[test]
fn connect_and_exec_reach_mysql_and_ssh_through_tunnels() {
    let dir = tempfile::tempdir().unwrap();
    // A tunnel-only deployment: no MySQL or SSH listener, tunnels still lead in.
    let running = start_gateway_with(
        dir.path(),
        &[
            ("WARDEN_MYSQL__ENABLED", "false"),
            ("WARDEN_SSH__ENABLED", "false"),
        ],
    );
    let (url, admin) = (running.url.clone(), running.printed_key.clone().unwrap());
    post_admin(
        &url,
        &admin,
        "/api/connections",
        &sshd_connection(&["ops"]).0,
    );
    let mariadb =
        std::env::var("WARDEN_TEST_MYSQL_HOSTPORT").unwrap_or_else(|_| "127.0.0.1:3306".into());
    post_admin(
        &url,
        &admin,
        "/api/connections",
        &json!({"name": "shop", "kind": "mysql", "target": format!("{mariadb}/warden_t"),
                "username": "warden_t_native", "secret": "native-pw-1", "allowed_groups": ["ops"],
                "tls": {"mode": "disable"}}),
    );
    let token = post_admin(
        &url,
        &admin,
        "/api/api-keys",
        &json!({"name": "ops", "subject": "dave", "groups": ["ops"]}),
    )["token"]
        .as_str()
        .unwrap()
        .to_string();
    let cli = || {
        let mut cmd = warden(dir.path());
        cmd.env("WARDEN_GATEWAY", &url).env("WARDEN_TOKEN", &token);
        cmd
    };

    // exec on SSH: output, quoting and the remote exit status come back.
    let out = run(cli().args(["exec", "box", "--", "echo", "a  b", "$HOME"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "a  b $HOME\n");
    let out = run(cli().args(["exec", "box", "--", "sh", "-c", "echo oops >&2; exit 3"]));
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out.stderr).contains("oops"), "{}", text(&out.stderr));

    // exec on MySQL: several statements, their result sets and affected rows, as a
    // table, CSV and JSON; an error exits 1 after the results before it.
    let sql = "CREATE TEMPORARY TABLE t (a INT, b VARCHAR(20)); \
               INSERT INTO t VALUES (1, 'x, y'), (2, NULL); SELECT a, b FROM t ORDER BY a";
    let out = run(cli().args(["exec", "shop", "-i", sql]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "(0 rows affected)\n(2 rows affected)\na | b\n--+-----\n1 | x, y\n2 | NULL\n(2 rows)\n"
    );
    let out = run(cli().args([
        "exec",
        "shop",
        "--format",
        "csv",
        "-i",
        "SELECT 1 AS n, 'a,b' AS s",
    ]));
    assert_eq!(
        text(&out.stdout),
        "n,s\n1,\"a,b\"\n",
        "{}",
        text(&out.stderr)
    );
    let out = run(cli().args(["exec", "shop", "--format", "json", "-i", "SELECT NULL AS v"]));
    assert_eq!(
        text(&out.stdout),
        "[{\"v\":null}]\n",
        "{}",
        text(&out.stderr)
    );
    let out = run(cli().args(["exec", "shop", "-i", "SELECT 7 AS n; SELEC oops"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("7"), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("ERROR: ") && text(&out.stderr).contains("1064"),
        "{}",
        text(&out.stderr)
    );
    let out = run(cli().args(["exec", "shop", "--", "ls"]));
    assert!(
        text(&out.stderr).contains("give the SQL with -i"),
        "{}",
        text(&out.stderr)
    );

    // The thin clients: connections, sessions, and a replay fetched from the API.
    let listed = text(&run(cli().arg("connections")).stdout);
    assert!(
        listed.contains("box") && listed.contains("shop"),
        "{listed}"
    );
    let sessions: Value = serde_json::from_slice(
        &run(cli().args(["sessions", "--json", "--connection", "box"])).stdout,
    )
    .unwrap();
    let first = sessions
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .min()
        .unwrap();
    let table = text(&run(cli().args(["sessions", "--user", "dave"])).stdout);
    assert!(table.contains(&first), "{table}");
    // Times in full, and every column in line with its header.
    let started = sessions[0]["started_at"].as_str().unwrap();
    assert!(table.contains(started), "{table}");
    let header = table.lines().next().unwrap();
    let at = |line: &str, from: usize| line.char_indices().nth(from).map(|(i, _)| i);
    for column in ["CONNECTION", "SUBJECT", "STARTED", "STATUS"] {
        let start = header.find(column).unwrap();
        for line in table.lines().skip(1) {
            let before = &line[..at(line, start).unwrap()];
            assert!(
                before.ends_with("  ") || before.ends_with(' '),
                "{column} misaligned:\n{table}"
            );
            assert_ne!(
                line[at(line, start).unwrap()..].chars().next(),
                Some(' '),
                "{table}"
            );
        }
    }
    let as_admin = |args: &[&str]| {
        run(warden(dir.path())
            .env("WARDEN_GATEWAY", &url)
            .env("WARDEN_TOKEN", &admin)
            .args(args))
    };
    let verified = as_admin(&["audit", "verify"]);
    assert!(
        text(&verified.stdout).starts_with("audit log intact"),
        "{}",
        text(&verified.stderr)
    );
    let events = text(&as_admin(&["audit", "list", "--kind", "ssh.", "--limit", "1000"]).stdout);
    assert!(events.contains("ssh.exec"), "{events}");
    // --tail: the newest, in chain order, the same lines the full list ends with.
    let tail =
        text(&as_admin(&["audit", "list", "--kind", "ssh.", "--limit", "2", "--tail"]).stdout);
    let last_two: Vec<&str> = events
        .lines()
        .rev()
        .take(2)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    assert_eq!(tail.lines().collect::<Vec<_>>(), last_two, "{tail}");
    let refused = run(cli().args(["audit", "list"]));
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("admin"),
        "{}",
        text(&refused.stderr)
    );
    let replayed = run(cli().args(["replay", &first, "--gateway", &url]));
    assert!(replayed.status.success(), "{}", text(&replayed.stderr));
    let shown = text(&replayed.stdout);
    assert!(
        shown.contains("echo 'a  b' '$HOME'") && shown.contains("a  b $HOME"),
        "{shown}"
    );

    // connect: the printed command works as printed, without a password.
    let connect = |name: &str| {
        let mut child = cli()
            .args(["connect", name])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let command = line_after(&mut out, "Forwarding");
        let command = if command.contains("Connect with") {
            line_after(&mut out, "")
        } else {
            command
        };
        (child, command)
    };
    let (mut ssh_tunnel, printed) = connect("box");
    assert!(printed.starts_with("ssh -p "), "{printed}");
    let port = printed.split_whitespace().nth(2).unwrap().to_string();
    let out = run(Command::new("ssh")
        .args(["-p", &port, "-o", "NoHostAuthenticationForLocalhost=yes"])
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "box@127.0.0.1",
            "whoami",
        ])
        .stdin(Stdio::null()));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "warden_t\n");
    let _ = ssh_tunnel.kill();
    let _ = ssh_tunnel.wait();

    let (mut mysql_tunnel, printed) = connect("shop");
    assert!(printed.starts_with("mysql -h 127.0.0.1 -P "), "{printed}");
    let port = printed.split_whitespace().nth(4).unwrap().to_string();
    let out = run(Command::new("mysql")
        .args(["-h", "127.0.0.1", "-P", &port, "--protocol=TCP", "-N", "-e"])
        .arg("SELECT CURRENT_USER()")
        .arg("shop"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("warden_t_native@"),
        "{}",
        text(&out.stdout)
    );
    let _ = mysql_tunnel.kill();
    let _ = mysql_tunnel.wait();
    stop(running);
}

#[test]
fn connect_gives_kubectl_a_context_and_http_a_local_url() {
    let dir = tempfile::tempdir().unwrap();
    // Tunnels only: no Kubernetes or HTTP listener.
    let running = start_gateway_with(
        dir.path(),
        &[
            ("WARDEN_KUBERNETES__ENABLED", "false"),
            ("WARDEN_HTTP__ENABLED", "false"),
        ],
    );
    let (url, admin) = (running.url.clone(), running.printed_key.clone().unwrap());
    let env = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    let stack = "/var/tmp/warden-test-k8s";
    let held = std::fs::read_to_string(env(
        "WARDEN_TEST_K8S_TOKEN_FILE",
        &format!("{stack}/admin.token"),
    ))
    .unwrap();
    post_admin(
        &url,
        &admin,
        "/api/connections",
        &json!({"name": "cluster", "kind": "kubernetes",
                "target": env("WARDEN_TEST_K8S_URL", "https://127.0.0.1:16443"),
                "tls": {"ca_pem": std::fs::read_to_string(env("WARDEN_TEST_K8S_CA", &format!("{stack}/ca.crt"))).unwrap()},
                "secret": held.trim(), "allowed_groups": ["ops"]}),
    );
    post_admin(
        &url,
        &admin,
        "/api/connections",
        &json!({"name": "wiki", "kind": "http",
                "target": env("WARDEN_TEST_HTTPBIN_URL", "http://127.0.0.1:18080"),
                "allowed_groups": ["ops"]}),
    );
    let token = api_key(&url, &admin, "dave", "ops");
    let runtime = dir.path().join("run");
    std::fs::create_dir_all(&runtime).unwrap();
    let connect = |name: &str| {
        let mut child = warden(dir.path())
            .env("WARDEN_GATEWAY", &url)
            .env("WARDEN_TOKEN", &token)
            .env("XDG_RUNTIME_DIR", &runtime)
            .args(["connect", name])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let _ = line_after(&mut out, "Forwarding");
        (child, line_after(&mut out, ""))
    };

    // kubectl with the written kubeconfig: no token in it, the tunnel carries it.
    let (mut k8s, printed) = connect("cluster");
    assert!(
        printed.trim_start().starts_with("kubectl --kubeconfig "),
        "{printed}"
    );
    let kubeconfig = printed.split_whitespace().nth(2).unwrap().to_string();
    let config = std::fs::read_to_string(&kubeconfig).unwrap();
    assert!(config.contains("current-context: warden-cluster") && !config.contains(&token));
    let kubectl = env(
        "WARDEN_TEST_KUBECTL",
        "/var/cache/warden-test/k8s-1.37.2-etcd-3.6.16-kwok-0.8.0-r2/kubectl",
    );
    let out = run(Command::new(&kubectl).args([
        "--kubeconfig",
        &kubeconfig,
        "--context",
        "warden-cluster",
        "get",
        "pods",
        "-n",
        "default",
    ]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("web"), "{}", text(&out.stdout));
    let _ = k8s.kill();
    let _ = k8s.wait();

    // HTTP: a local URL that needs no token.
    let (mut wiki, printed) = connect("wiki");
    let local = printed
        .split_whitespace()
        .find(|w| w.starts_with("http://127.0.0.1:"))
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    let out = run(Command::new("curl").args(["-fsS", &format!("{local}/get?from=tunnel")]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("tunnel"),
        "{}",
        text(&out.stdout)
    );
    let _ = wiki.kill();
    let _ = wiki.wait();
    let log = stop(running);
    assert!(!log.contains(held.trim()));
}

#[test]
fn a_listing_cut_short_by_its_reader_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_gateway(dir.path());
    let admin = running.printed_key.clone().unwrap();
    // Enough events that the listing outgrows a pipe's buffer (64 KiB).
    for i in 0..300 {
        post_admin(
            &running.url,
            &admin,
            "/api/api-keys",
            &json!({"name": format!("key-{i}")}),
        );
    }
    stop(running);
    let bin = env!("CARGO_BIN_EXE_warden");
    let out = run(Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{bin}' audit list --json --limit 10000 | head -n 1"
        ))
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default()));
    assert!(out.status.success());
    assert_eq!(text(&out.stdout).lines().count(), 1);
    assert_eq!(text(&out.stderr), "", "nothing but the one line");
}
