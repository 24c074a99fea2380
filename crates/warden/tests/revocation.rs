//! Revocation and expiry as users meet them: an identity's open sessions end, with
//! the client's own error naming why, on every gateway sharing the store — psql,
//! mysql, ssh with a registered key and psql through `warden connect`, against two
//! gateway processes over one PostgreSQL store.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::zombie_processes)]

mod common;
use common::*;

use serde_json::{Value, json};
use std::io::BufReader;
use std::path::Path;
use std::process::{Command, Stdio};

/// A fresh database on the test PostgreSQL for a shared store.
fn fresh_store() -> String {
    let admin = std::env::var("WARDEN_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let name = format!(
        "warden_t_cli_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros()
    );
    let out = run(Command::new("psql").arg(&admin).args([
        "-X",
        "-c",
        &format!("CREATE DATABASE {name}"),
    ]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    format!("{}/{name}", admin.rsplit_once('/').unwrap().0)
}

fn psql(port: &str, dbname: &str, password: Option<&str>) -> Interactive {
    let mut cmd = Command::new("psql");
    cmd.arg(format!(
        "host=127.0.0.1 port={port} dbname={dbname} user=carol sslmode=disable"
    ))
    .args(["-X", "-At"]);
    match password {
        Some(p) => cmd.env("PGPASSWORD", p),
        None => cmd.env_remove("PGPASSWORD"),
    };
    Interactive::spawn(&mut cmd)
}

fn mysql(port: &str, password: &str) -> Interactive {
    Interactive::spawn(
        Command::new("mysql")
            .args([
                "-h",
                "127.0.0.1",
                "-P",
                port,
                "--protocol=TCP",
                "-u",
                "carol",
            ])
            .args(["-n", "-N", "-B", "shop"])
            .env("MYSQL_PWD", password),
    )
}

/// `warden connect` on a free port; returns it and the port psql reaches it on.
fn connect(dir: &Path, url: &str, token: &str, name: &str) -> (std::process::Child, String) {
    let mut child = warden(dir)
        .env("WARDEN_GATEWAY", url)
        .env("WARDEN_TOKEN", token)
        .args(["connect", name])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let port = line_after(&mut out, "Forwarding")
        .split("port=")
        .nth(1)
        .map(|r| r.split_whitespace().next().unwrap().to_string());
    let port = port.unwrap_or_else(|| {
        let line = line_after(&mut out, "");
        line.split("port=")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    });
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    (child, port)
}

fn key_id(token: &str) -> String {
    token
        .strip_prefix("wdn_")
        .unwrap()
        .split('_')
        .next()
        .unwrap()
        .to_string()
}

fn audit(url: &str, admin: &str, kind: &str) -> Vec<Value> {
    let (status, page) = call(
        url,
        admin,
        "GET",
        &format!("/api/audit?kind={kind}&limit=1000"),
        None,
    );
    assert_eq!(status, 200, "{page}");
    page["events"].as_array().unwrap().clone()
}

#[test]
fn revoked_or_expired_identities_lose_their_open_sessions_on_every_gateway() {
    let store = fresh_store();
    let envs = [
        ("WARDEN_STORE__URL", store.as_str()),
        ("WARDEN_AUTH__CLOCK_SKEW_SECS", "0"),
    ];
    let dir_a = tempfile::tempdir().unwrap();
    let a = start_gateway_trusting_provider(dir_a.path(), "", &envs);
    let admin = a.printed_key.clone().unwrap();
    // The second gateway shares the store, so it needs the same master key.
    let dir_b = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir_b.path().join("warden-data")).unwrap();
    let key_b = dir_b.path().join("warden-data/master.key");
    std::fs::copy(dir_a.path().join("warden-data/master.key"), &key_b).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_b, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let b = start_gateway_trusting_provider(dir_b.path(), "", &envs);
    assert!(b.printed_key.is_none(), "the store has its admin key");

    let mariadb =
        std::env::var("WARDEN_TEST_MYSQL_HOSTPORT").unwrap_or_else(|_| "127.0.0.1:3306".into());
    for body in [
        json!({"name": "billing", "kind": "postgres", "target": "127.0.0.1:5432/postgres",
               "username": "warden_t_scram", "secret": "scram-pw-1", "allowed_groups": ["dba"],
               "tls": {"mode": "disable"}}),
        json!({"name": "shop", "kind": "mysql", "target": format!("{mariadb}/warden_t"),
               "username": "warden_t_native", "secret": "native-pw-1", "allowed_groups": ["dba"],
               "tls": {"mode": "disable"}}),
        sshd_connection(&["dba"]).0,
    ] {
        post_admin(&a.url, &admin, "/api/connections", &body);
    }
    let carol = api_key(&a.url, &admin, "carol", "dba");

    // An SSH key carol registers with her API key, for a key login.
    let id_file = dir_a.path().join("id_carol");
    let out = run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "carol", "-f"])
        .arg(&id_file));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let public = std::fs::read_to_string(id_file.with_extension("pub")).unwrap();
    let (status, registered) = call(
        &a.url,
        &carol,
        "POST",
        "/api/ssh-keys",
        Some(&json!({"public_key": public, "name": "laptop"})),
    );
    assert_eq!(status, 201, "{registered}");

    // Carol's open sessions: psql and mysql on gateway B, ssh with her key on B,
    // psql through a `warden connect` tunnel on A.
    let mut pg_b = psql(&b.port("PostgreSQL"), "billing", Some(&carol));
    pg_b.send("SELECT 'alive' || 1;");
    pg_b.wait_for("alive1", "");
    let mut my_b = mysql(&b.port("MySQL"), &carol);
    my_b.send("SELECT CONCAT('alive', 2);");
    my_b.wait_for("alive2", "");
    let mut ssh_b = Interactive::spawn(
        Command::new("ssh")
            .args(["-i"])
            .arg(&id_file)
            .args(["-p", &b.port("SSH"), "-o", "StrictHostKeyChecking=no"])
            .args([
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "IdentitiesOnly=yes",
            ])
            .args(["-o", "BatchMode=yes", "box@127.0.0.1", "sh"]),
    );
    ssh_b.send("echo alive$((1+2))");
    ssh_b.wait_for("alive3", "");
    let (mut tunnel, tunnel_port) = connect(dir_a.path(), &a.url, &carol, "billing");
    let mut pg_tunnel = psql(&tunnel_port, "billing", None);
    pg_tunnel.send("SELECT 'alive' || 4;");
    pg_tunnel.wait_for("alive4", "");

    // Revoked on gateway A: every one of them ends, each client told why.
    let (status, _) = call(
        &a.url,
        &admin,
        "DELETE",
        &format!("/api/api-keys/{}", key_id(&carol)),
        None,
    );
    assert_eq!(status, 204);
    // Gateway B learns of it from the store within seconds (statements in that
    // window run); gateway A ends its sessions before anything more runs.
    let probe_sql = "SELECT 'ran' || 'after';";
    for (name, client, probe, same_gateway) in [
        (
            "psql through a tunnel to A",
            &mut pg_tunnel,
            probe_sql,
            true,
        ),
        ("psql on B", &mut pg_b, probe_sql, false),
        (
            "mysql on B",
            &mut my_b,
            "SELECT CONCAT('ran', 'after');",
            false,
        ),
        ("ssh on B", &mut ssh_b, "echo ran''after", false),
    ] {
        let out = client.wait_for("revoked", probe);
        eprintln!("{name}: {out}");
        let told = out.find("revoked").unwrap();
        assert!(
            !out[told..].contains("ranafter"),
            "{name} ran a command after its end: {out}"
        );
        if same_gateway {
            assert!(!out.contains("ranafter"), "{name} ran a command: {out}");
        }
    }
    for client in [pg_b, my_b, ssh_b, pg_tunnel] {
        let out = client.finish();
        let told = out.find("revoked").unwrap();
        assert!(!out[told..].contains("ranafter"), "{out}");
    }
    let _ = tunnel.kill();
    let _ = tunnel.wait();
    let ended = audit(&a.url, &admin, "session.terminate");
    let revoked: Vec<&Value> = ended
        .iter()
        .filter(|e| e["event"]["payload"]["cause"] == "credential_revoked")
        .collect();
    assert_eq!(revoked.len(), 4, "{ended:?}");
    for e in &revoked {
        assert_eq!(e["event"]["payload"]["key_id"], key_id(&carol).as_str());
        assert_eq!(e["event"]["identity"]["subject"], "carol");
    }
    // And nothing new opens with it.
    let mut again = psql(&b.port("PostgreSQL"), "billing", Some(&carol));
    again.send("SELECT 1;");
    again.wait_for("the API key has been revoked", "");
    again.finish();

    // Expiry: a 10-second JWT on A and a 6-second API key on B end their sessions.
    let jwt = client_token("ten-seconds");
    let mut pg_jwt = psql(&a.port("PostgreSQL"), "billing", Some(&jwt));
    pg_jwt.send("SELECT 'alive' || 5;");
    pg_jwt.wait_for("alive5", "");
    let brief = post_admin(
        &a.url,
        &admin,
        "/api/api-keys",
        &json!({"name": "brief", "subject": "dave", "groups": ["dba"], "ttl_secs": 6}),
    )["token"]
        .as_str()
        .unwrap()
        .to_string();
    let mut my_brief = mysql(&b.port("MySQL"), &brief);
    my_brief.send("SELECT CONCAT('alive', 6);");
    my_brief.wait_for("alive6", "");
    pg_jwt.wait_for("your token expired at", "SELECT 1;");
    my_brief.wait_for("expired at", "SELECT 1;");
    pg_jwt.finish();
    my_brief.finish();
    let expired = audit(&b.url, &admin, "session.terminate");
    assert_eq!(
        expired
            .iter()
            .filter(|e| e["event"]["payload"]["cause"] == "credential_expired")
            .count(),
        2,
        "{expired:?}"
    );
    let ends = audit(&a.url, &admin, "session.end");
    assert!(ends.len() >= 6, "every session's end is recorded: {ends:?}");

    stop(a);
    stop(b);
}
