//! The SSH proxy in the gateway: the real `ssh`, `scp` and `sftp` clients (token by
//! sshpass) and russh as a client, the OpenSSH server `scripts/test.sh` starts
//! behind (`setup_sshd`), the held key never shown.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// Test clients write plain TCP, which holds back no unflushed bytes.
#![allow(clippy::disallowed_methods)]

mod support;

use russh::client;
use russh::{ChannelMsg, Disconnect};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;
use support::*;
use warden_store::Backend;

/// The test OpenSSH server: its address and the directory with its host key and the
/// key Warden holds for user `warden_t`.
fn sshd() -> (String, PathBuf) {
    let dir = PathBuf::from(
        std::env::var("WARDEN_TEST_SSHD_DIR")
            .unwrap_or_else(|_| "/var/tmp/warden-test-sshd".into()),
    );
    let port = std::env::var("WARDEN_TEST_SSHD_PORT").unwrap_or_else(|_| "2201".into());
    assert!(
        dir.join("warden_t_key").exists(),
        "no test sshd: run scripts/test.sh (or `. scripts/lib.sh; setup_sshd`)"
    );
    (format!("127.0.0.1:{port}"), dir)
}

fn held_key() -> String {
    std::fs::read_to_string(sshd().1.join("warden_t_key")).unwrap()
}

fn host_key() -> String {
    std::fs::read_to_string(sshd().1.join("host_ed25519.pub")).unwrap()
}

/// Registers an SSH connection (`warden_t` with the held key, host key pinned)
/// with extra fields from `extra`.
async fn add_ssh(gw: &TestGateway, name: &str, extra: Value) {
    let mut body = json!({
        "name": name, "kind": "ssh", "target": sshd().0, "username": "warden_t",
        "secret": held_key(), "allowed_groups": ["ops"],
        "ssh": {"host_key": host_key()},
        "policies": {"guardrails": ["shell-safety"]},
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let (status, answer) = gw.admin("POST", "/api/connections", Some(body)).await;
    assert_eq!(status, 201, "{answer}");
}

async fn token(gw: &TestGateway, groups: &[&str]) -> String {
    let (status, key) = gw
        .admin(
            "POST",
            "/api/api-keys",
            Some(json!({"name": format!("k{}", uuid::Uuid::now_v7().simple()), "groups": groups})),
        )
        .await;
    assert_eq!(status, 201, "{key}");
    key["token"].as_str().unwrap().to_string()
}

fn port(gw: &TestGateway) -> u16 {
    gw.gateway
        .listener(warden_core::ConnectionKind::Ssh)
        .unwrap()
        .port()
}

const CLIENT_OPTIONS: &[&str] = &[
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "LogLevel=ERROR",
    "-o",
    "ConnectTimeout=20",
];

/// Runs a real OpenSSH client program (`ssh`, `scp`, `sftp`) with the token as its
/// password (through sshpass's environment, never the command line).
fn with_token(program: &str, token: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new("sshpass");
    cmd.arg("-e").arg(program).args(CLIENT_OPTIONS);
    cmd.args(["-o", "PubkeyAuthentication=no", "-o", "BatchMode=no"]);
    cmd.args(args)
        .env("SSHPASS", token)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ssh(gw: &TestGateway, conn: &str, token: &str, command: &str) -> Output {
    let p = port(gw).to_string();
    with_token(
        "ssh",
        token,
        &["-p", &p, &format!("{conn}@127.0.0.1"), command],
    )
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A russh client that trusts the gateway's host key (the tests check Warden's
/// pinning of targets, not their own).
struct TrustGateway;

impl client::Handler for TrustGateway {
    type Error = russh::Error;
    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

async fn russh_login(gw: &TestGateway, conn: &str, token: &str) -> client::Handle<TrustGateway> {
    let config = Arc::new(client::Config::default());
    let mut handle = client::connect(config, ("127.0.0.1", port(gw)), TrustGateway)
        .await
        .unwrap();
    let auth = handle.authenticate_password(conn, token).await.unwrap();
    assert!(auth.success(), "login refused");
    handle
}

async fn events(gw: &TestGateway, kind: &str) -> Vec<Value> {
    // Some events are written just after the client sees the result.
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.audit_events(kind).await
}

async fn last_session(gw: &TestGateway) -> String {
    let (status, list) = gw.admin("GET", "/api/sessions", None).await;
    assert_eq!(status, 200, "{list}");
    let sessions = list
        .as_array()
        .cloned()
        .unwrap_or_else(|| list["sessions"].as_array().unwrap().clone());
    sessions
        .iter()
        .filter(|s| s["protocol"] == "ssh")
        .map(|s| s["id"].as_str().unwrap().to_string())
        .max()
        .unwrap()
}

async fn exec_is_guarded_audited_and_recorded(backend: Backend) {
    let gw = TestGateway::start(backend, None).await;
    add_ssh(&gw, "box", json!({})).await;
    let ops = token(&gw, &["ops"]).await;

    let out = ssh(&gw, "box", &ops, "echo hello; whoami; exit 7");
    assert_eq!(
        text(&out.stdout),
        "hello\nwarden_t\n",
        "{}",
        text(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(7));

    // A denied command never runs: the directory it would remove survives.
    let dir = format!("/tmp/warden-t-{}", uuid::Uuid::now_v7().simple());
    let out = ssh(&gw, "box", &ops, &format!("mkdir -p {dir}/keep"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = ssh(&gw, "box", &ops, &format!("rm -rf {dir}"));
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("warden: denied by rule `shell-safety/no-rm-rf`"),
        "{err}"
    );
    assert!(std::path::Path::new(&format!("{dir}/keep")).is_dir());
    assert!(
        ssh(&gw, "box", &ops, &format!("rmdir {dir}/keep {dir}"))
            .status
            .success()
    );

    let execs = events(&gw, "ssh.exec").await;
    let denied: Vec<_> = execs
        .iter()
        .filter(|e| e["event"]["decision"]["outcome"] == "deny")
        .collect();
    assert_eq!(denied.len(), 1, "{execs:?}");
    assert_eq!(
        denied[0]["event"]["payload"]["command"],
        format!("rm -rf {dir}")
    );
    assert!(
        denied[0]["event"]["identity"]["subject"]
            .as_str()
            .unwrap()
            .starts_with("apikey:")
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let outcomes = gw.outcomes("ssh").await;
    let exited = outcomes
        .iter()
        .find(|o| o["exit_status"] == 7)
        .unwrap_or_else(|| panic!("{outcomes:?}"));
    // The exit names the command it ended.
    let command = execs
        .iter()
        .find(|e| e["event"]["id"] == exited["statement"])
        .unwrap_or_else(|| panic!("{exited} names no ssh.exec: {execs:?}"));
    assert_eq!(
        command["event"]["payload"]["command"],
        "echo hello; whoami; exit 7"
    );
    // The command's output is in its terminal recording.
    let recorded = gw.recordings_text();
    assert!(recorded.contains(r#""o","hello\n"#), "{recorded}");

    // Neither the held key nor the token is anywhere an admin or a recording shows.
    let seen = gw.everything_visible(&[]).await;
    let key_body: String = held_key()
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert!(!seen.contains(&key_body[..40]));
    assert!(!seen.contains(&ops));
    let (_, conns) = gw.admin("GET", "/api/connections", None).await;
    assert!(!conns.to_string().contains(&key_body[..40]));
}
both_stores!(exec_is_guarded_audited_and_recorded);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pty_shell_is_recorded_as_asciicast_with_typed_commands() {
    let gw = TestGateway::start(Backend::Sqlite, None).await;
    add_ssh(&gw, "box", json!({})).await;
    let ops = token(&gw, &["ops"]).await;
    let client = russh_login(&gw, "box", &ops).await;
    let mut channel = client.channel_open_session().await.unwrap();
    channel
        .request_pty(true, "xterm-256color", 100, 30, 0, 0, &[])
        .await
        .unwrap();
    channel.request_shell(true).await.unwrap();
    channel.data(&b"echo marker-$((6*7))\r"[..]).await.unwrap();
    let mut output = Vec::new();
    let mut resized = false;
    let mut exited = false;
    let mut status = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, channel.wait()).await {
        match msg {
            ChannelMsg::Data { data } => {
                output.extend_from_slice(&data);
                if !resized && text(&output).contains("marker-42") {
                    // The new size reaches the target's PTY.
                    resized = true;
                    channel.window_change(120, 40, 0, 0).await.unwrap();
                    channel.data(&b"stty size\r"[..]).await.unwrap();
                }
                if resized && !exited && text(&output).contains("40 120") {
                    exited = true;
                    channel.data(&b"exit\r"[..]).await.unwrap();
                }
            }
            ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    assert!(text(&output).contains("marker-42"), "{}", text(&output));
    assert!(text(&output).contains("40 120"), "{}", text(&output));
    assert_eq!(status, Some(0));
    // A command killed by a signal: the signal reaches the client.
    let mut ch = client.channel_open_session().await.unwrap();
    ch.exec(true, "kill -TERM $$").await.unwrap();
    let mut signal = None;
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(10), ch.wait()).await {
        match msg {
            ChannelMsg::ExitSignal { signal_name, .. } => signal = Some(signal_name),
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    assert!(matches!(signal, Some(russh::Sig::TERM)), "{signal:?}");
    client
        .disconnect(Disconnect::ByApplication, "", "en")
        .await
        .unwrap();

    let session = last_session(&gw).await;
    let (status, rec) = gw
        .admin("GET", &format!("/api/sessions/{session}/recording"), None)
        .await;
    assert_eq!(status, 200, "{rec}");
    let terminal = rec["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "terminal")
        .unwrap_or_else(|| panic!("{rec}"))
        .clone();
    let channel_no = terminal["channel"].as_u64().unwrap();
    let resp = gw
        .http
        .get(format!(
            "{}/api/sessions/{session}/terminals/{channel_no}",
            gw.url
        ))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let cast = resp.text().await.unwrap();
    let header: Value = serde_json::from_str(cast.lines().next().unwrap()).unwrap();
    assert_eq!(
        (header["version"].as_u64(), header["width"].as_u64()),
        (Some(2), Some(100))
    );
    assert!(cast.contains(r#""r","120x40""#), "{cast}");
    assert!(cast.contains(r#""i","echo marker-$((6*7))\r""#), "{cast}");
    // asciinema itself accepts the file.
    let file = gw.dir.path().join("shell.cast");
    std::fs::write(&file, &cast).unwrap();
    let played = Command::new("script")
        .args([
            "-qec",
            &format!("asciinema cat {}", file.display()),
            "/dev/null",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(played.status.success(), "{}", text(&played.stdout));
    assert!(text(&played.stdout).contains("marker-42"));

    let typed = events(&gw, "ssh.command").await;
    let lines: Vec<_> = typed
        .iter()
        .map(|e| {
            e["event"]["payload"]["command"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(lines, vec!["echo marker-$((6*7))", "stty size", "exit"]);
}

fn sha256(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    text(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scp_and_sftp_move_100_mib_intact_and_each_transfer_is_audited() {
    let gw = TestGateway::start(Backend::Sqlite, None).await;
    add_ssh(&gw, "box", json!({})).await;
    let ops = token(&gw, &["ops"]).await;
    let p = port(&gw).to_string();
    let local = gw.dir.path().join("big.bin");
    let status = Command::new("head")
        .args(["-c", "104857600", "/dev/urandom"])
        .stdout(std::fs::File::create(&local).unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    let local_sum = sha256(&local);
    let remote = format!("/tmp/warden-t-{}.bin", uuid::Uuid::now_v7().simple());
    let target = format!("box@127.0.0.1:{remote}");
    // At most two copies of the file exist at once: CI machines may have little disk.
    // Upload and download through SFTP (scp's default protocol).
    let up = with_token("scp", &ops, &["-P", &p, local.to_str().unwrap(), &target]);
    assert!(up.status.success(), "{}", text(&up.stderr));
    let back = gw.dir.path().join("back.bin");
    let down = with_token("scp", &ops, &["-P", &p, &target, back.to_str().unwrap()]);
    assert!(down.status.success(), "{}", text(&down.stderr));
    std::fs::remove_file(&local).unwrap();
    assert_eq!(local_sum, sha256(&back));
    // sftp: removing is audited.
    let sftp_batch = |name: &str, commands: String| {
        let batch = gw.dir.path().join(name);
        std::fs::write(&batch, commands).unwrap();
        let sftp = with_token(
            "sftp",
            &ops,
            &["-P", &p, "-b", batch.to_str().unwrap(), "box@127.0.0.1"],
        );
        assert!(sftp.status.success(), "{}", text(&sftp.stderr));
    };
    sftp_batch("rm-batch", format!("rm {remote}\n"));
    // The legacy scp protocol (an exec of `scp -t`).
    let legacy = format!("{remote}.legacy");
    let up = with_token(
        "scp",
        &ops,
        &[
            "-O",
            "-P",
            &p,
            back.to_str().unwrap(),
            &format!("box@127.0.0.1:{legacy}"),
        ],
    );
    assert!(up.status.success(), "{}", text(&up.stderr));
    std::fs::remove_file(&back).unwrap();
    assert_eq!(local_sum, sha256(std::path::Path::new(&legacy)));
    // sftp: rename is audited too.
    sftp_batch(
        "rename-batch",
        format!("rename {legacy} {legacy}.2\nrm {legacy}.2\n"),
    );

    let transfers = events(&gw, "ssh.transfer").await;
    let seen: Vec<(String, String, String, u64)> = transfers
        .iter()
        .map(|e| {
            let p = &e["event"]["payload"];
            (
                p["protocol"].as_str().unwrap().into(),
                p["direction"].as_str().unwrap().into(),
                p["path"].as_str().unwrap().into(),
                p["bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    let mib100 = 104_857_600;
    assert!(
        seen.contains(&("sftp".into(), "upload".into(), remote.clone(), mib100)),
        "{seen:?}"
    );
    assert!(
        seen.contains(&("sftp".into(), "download".into(), remote.clone(), mib100)),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|s| s.0 == "scp" && s.1 == "upload" && s.2 == legacy && s.3 >= mib100),
        "{seen:?}"
    );
    let changes = events(&gw, "ssh.file").await;
    let ops_seen: Vec<_> = changes
        .iter()
        .map(|e| {
            (
                e["event"]["payload"]["op"].as_str().unwrap().to_string(),
                e["event"]["payload"]["path"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        ops_seen,
        vec![
            ("remove".to_string(), remote.clone()),
            ("rename".to_string(), legacy.clone()),
            ("remove".to_string(), format!("{legacy}.2")),
        ]
    );
    assert!(!std::path::Path::new(&remote).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forwarding_follows_the_connection_and_is_audited() {
    let gw = TestGateway::start(Backend::Sqlite, None).await;
    add_ssh(
        &gw,
        "fwd",
        json!({"ssh": {"host_key": host_key(), "port_forwarding": true}}),
    )
    .await;
    add_ssh(&gw, "nofwd", json!({})).await;
    let ops = token(&gw, &["ops"]).await;
    let (sshd_addr, _) = sshd();
    let (host, sshd_port) = sshd_addr.rsplit_once(':').unwrap();
    let sshd_port: u32 = sshd_port.parse().unwrap();

    // Allowed: a forwarded connection reaches the target's network (here the sshd
    // itself, which greets first).
    let client = russh_login(&gw, "fwd", &ops).await;
    let mut ch = client
        .channel_open_direct_tcpip(host, sshd_port, "127.0.0.1", 40000)
        .await
        .unwrap();
    let mut greeting = Vec::new();
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(10), ch.wait()).await {
        if let ChannelMsg::Data { data } = msg {
            greeting.extend_from_slice(&data);
            if greeting.contains(&b'\n') {
                break;
            }
        }
    }
    assert!(
        text(&greeting).starts_with("SSH-2.0-OpenSSH"),
        "{}",
        text(&greeting)
    );
    // Denied: the channel is refused, the session goes on.
    let client = russh_login(&gw, "nofwd", &ops).await;
    assert!(
        client
            .channel_open_direct_tcpip(host, sshd_port, "127.0.0.1", 40001)
            .await
            .is_err()
    );
    let mut ch = client.channel_open_session().await.unwrap();
    ch.exec(true, "echo still-here").await.unwrap();
    let mut out = Vec::new();
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(10), ch.wait()).await {
        match msg {
            ChannelMsg::Data { data } => out.extend_from_slice(&data),
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    assert_eq!(text(&out), "still-here\n");
    let forwards = events(&gw, "ssh.forward").await;
    let decisions: Vec<_> = forwards
        .iter()
        .map(|e| {
            (
                e["event"]["connection"].as_str().unwrap().to_string(),
                e["event"]["decision"]["outcome"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(
        decisions,
        vec![
            ("fwd".to_string(), "allow".to_string()),
            ("nofwd".to_string(), "deny".to_string())
        ]
    );
    // Agent forwarding is refused (and noted); the command still runs.
    let p = port(&gw).to_string();
    // (`ssh -A` asks only when it has an agent: run one for it.)
    let out = Command::new("ssh-agent")
        .args(["sshpass", "-e", "ssh"])
        .args(CLIENT_OPTIONS)
        .args([
            "-o",
            "PubkeyAuthentication=no",
            "-A",
            "-p",
            &p,
            "fwd@127.0.0.1",
            "echo ok",
        ])
        .env("SSHPASS", &ops)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout), "ok\n", "{}", text(&out.stderr));
    let refused = events(&gw, "ssh.refused").await;
    assert!(
        refused
            .iter()
            .any(|e| e["event"]["payload"]["what"] == "agent_forwarding"),
        "{refused:?}"
    );
}

/// Logs in with `token` by keyboard-interactive and returns the instructions the
/// gateway shows after refusing it (what `ssh` prints before prompting again).
async fn refusal_shown(gw: &TestGateway, conn: &str, token: &str) -> String {
    let config = Arc::new(client::Config::default());
    let mut c = client::connect(config, ("127.0.0.1", port(gw)), TrustGateway)
        .await
        .unwrap();
    assert!(
        !c.authenticate_password(conn, token)
            .await
            .unwrap()
            .success()
    );
    let first = c
        .authenticate_keyboard_interactive_start(conn, None::<String>)
        .await
        .unwrap();
    assert!(matches!(
        first,
        client::KeyboardInteractiveAuthResponse::InfoRequest { .. }
    ));
    match c
        .authenticate_keyboard_interactive_respond(vec![token.into()])
        .await
        .unwrap()
    {
        client::KeyboardInteractiveAuthResponse::InfoRequest { instructions, .. } => instructions,
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_name_their_reason() {
    let gw = TestGateway::start(Backend::Sqlite, None).await;
    add_ssh(&gw, "box", json!({})).await;
    let wrong_key =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
    add_ssh(&gw, "spoofed", json!({"ssh": {"host_key": wrong_key}})).await;
    add_ssh(&gw, "unpinned", json!({"ssh": {}})).await;
    add_ssh(&gw, "tofu", json!({"ssh": {"trust_on_first_use": true}})).await;
    add_ssh(&gw, "admins-only", json!({"allowed_groups": ["admins"]})).await;
    let ops = token(&gw, &["ops"]).await;

    // A wrong token: the password method is refused; keyboard-interactive shows why.
    let out = ssh(&gw, "box", "wdn_bogus_token", "true");
    assert!(!out.status.success());
    let shown = refusal_shown(&gw, "box", "not-a-token").await;
    assert!(
        shown.starts_with("warden: authentication failed"),
        "{shown}"
    );
    assert!(!events(&gw, "auth.failure").await.is_empty());

    let out = ssh(&gw, "admins-only", &ops, "true");
    assert!(!out.status.success());
    assert_eq!(
        refusal_shown(&gw, "admins-only", &ops).await,
        "warden: there is no SSH connection `admins-only` that you may use"
    );
    let denied = events(&gw, "access.denied").await;
    assert_eq!(denied[0]["event"]["connection"], "admins-only");

    let out = ssh(&gw, "spoofed", &ops, "echo should-not-run");
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("does not match the key pinned"),
        "{}",
        text(&out.stderr)
    );
    assert!(text(&out.stdout).is_empty());

    let out = ssh(&gw, "unpinned", &ops, "true");
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("no host key is pinned"),
        "{}",
        text(&out.stderr)
    );

    // Trust on first use pins the key the target presented, and audits it.
    let out = ssh(&gw, "tofu", &ops, "echo pinned");
    assert_eq!(text(&out.stdout), "pinned\n", "{}", text(&out.stderr));
    let (_, conn) = gw.admin("GET", "/api/connections/tofu", None).await;
    let expected = host_key();
    let expected: Vec<&str> = expected.split_whitespace().take(2).collect();
    assert_eq!(conn["ssh"]["host_key"], expected.join(" "));
    assert_eq!(events(&gw, "connection.host_key_pinned").await.len(), 1);
    let out = ssh(&gw, "tofu", &ops, "echo again");
    assert_eq!(text(&out.stdout), "again\n");

    // Garbage instead of SSH ends only that connection.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", port(&gw)))
        .await
        .unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\n\r\n\x00\xff\xff\xff\xff garbage")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), raw.read_to_end(&mut buf)).await;
    assert!(text(&buf).starts_with("SSH-2.0-Warden"), "{}", text(&buf));
    let out = ssh(&gw, "box", &ops, "echo fine");
    assert_eq!(text(&out.stdout), "fine\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_keys_log_in_until_deleted_or_expired() {
    let gw = TestGateway::start(Backend::Sqlite, None).await;
    add_ssh(&gw, "box", json!({})).await;
    let ops = token(&gw, &["ops"]).await;
    let key = gw.dir.path().join("id_ed25519");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "alice@laptop", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(status.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let (status, reg) = gw
        .call(
            "POST",
            "/api/ssh-keys",
            Some(&ops),
            Some(json!({"public_key": public})),
        )
        .await;
    assert_eq!(status, 201, "{reg}");
    assert_eq!(reg["name"], "alice@laptop");
    assert_eq!(reg["groups"], json!(["ops"]));
    let fingerprint = reg["fingerprint"].as_str().unwrap().to_string();
    let p = port(&gw).to_string();
    let with_key = |conn: &str| {
        Command::new("ssh")
            .args(CLIENT_OPTIONS)
            .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i"])
            .arg(&key)
            .args(["-p", &p, &format!("{conn}@127.0.0.1"), "echo by-key"])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = with_key("box");
    assert_eq!(text(&out.stdout), "by-key\n", "{}", text(&out.stderr));
    let starts = events(&gw, "session.start").await;
    let identity = &starts.last().unwrap()["event"]["identity"];
    assert!(
        identity["subject"].as_str().unwrap().starts_with("apikey:"),
        "{identity}"
    );

    // Registering the same key twice is a conflict; others do not see it.
    let (status, _) = gw
        .call(
            "POST",
            "/api/ssh-keys",
            Some(&ops),
            Some(json!({"public_key": public})),
        )
        .await;
    assert_eq!(status, 409);
    let (_, mine) = gw.call("GET", "/api/ssh-keys", Some(&ops), None).await;
    assert_eq!(mine.as_array().unwrap().len(), 1);

    let path = format!(
        "/api/ssh-keys/{}",
        fingerprint.replace('/', "%2F").replace('+', "%2B")
    );
    let (status, body) = gw.call("DELETE", &path, Some(&ops), None).await;
    assert_eq!(status, 204, "{body}");
    let out = with_key("box");
    assert_eq!(out.status.code(), Some(255));
    assert!(text(&out.stdout).is_empty());

    // A registration that expired no longer logs in.
    let (status, _) = gw
        .call(
            "POST",
            "/api/ssh-keys",
            Some(&ops),
            Some(json!({"public_key": public, "ttl_secs": 1})),
        )
        .await;
    assert_eq!(status, 201);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let out = with_key("box");
    assert_eq!(out.status.code(), Some(255));
    let failures = events(&gw, "auth.failure").await;
    assert!(
        failures
            .iter()
            .any(|e| e["event"]["payload"]["code"] == "key_expired"),
        "{failures:?}"
    );

    // A registration never outlives the token that made it: its expiry is capped at
    // the token's, and revoking the token revokes it.
    let (status, short) = gw
        .admin(
            "POST",
            "/api/api-keys",
            Some(json!({"name": "short", "groups": ["ops"], "ttl_secs": 60})),
        )
        .await;
    assert_eq!(status, 201, "{short}");
    let short_token = short["token"].as_str().unwrap().to_string();
    let (status, _) = gw.call("DELETE", &path, Some(&ops), None).await;
    assert!(status == 204 || status == 404);
    let (status, reg) = gw
        .call(
            "POST",
            "/api/ssh-keys",
            Some(&short_token),
            Some(json!({"public_key": public, "ttl_secs": 43200})),
        )
        .await;
    assert_eq!(status, 201, "{reg}");
    let key_ends = time::OffsetDateTime::parse(
        reg["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let token_ends = time::OffsetDateTime::parse(
        short["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!(key_ends <= token_ends, "{reg} outlives {short}");
    let out = with_key("box");
    assert_eq!(text(&out.stdout), "by-key\n", "{}", text(&out.stderr));
    let key_id = short["id"].as_str().unwrap();
    let (status, _) = gw
        .admin("DELETE", &format!("/api/api-keys/{key_id}"), None)
        .await;
    assert_eq!(status, 204);
    let out = with_key("box");
    assert_eq!(out.status.code(), Some(255));
    assert!(text(&out.stdout).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_tokens_log_in_until_they_expire_and_a_held_password_works_too() {
    let gw = TestGateway::start(Backend::Sqlite, None).await;
    add_ssh(
        &gw,
        "pw",
        json!({"secret": "ssh-pw-1", "secret_kind": "password", "allowed_groups": ["ci", "dba"]}),
    )
    .await;
    // A JWT from the real OpenID provider, through the real ssh client.
    let jwt = provider_token("ci-deployer", PROVIDER_AUDIENCE).await;
    let short = provider_token("short-lived", PROVIDER_AUDIENCE).await;
    let out = ssh(&gw, "pw", &jwt, "whoami");
    assert_eq!(text(&out.stdout), "warden_t\n", "{}", text(&out.stderr));
    let starts = events(&gw, "session.start").await;
    assert_eq!(starts[0]["event"]["identity"]["subject"], "ci-deployer");
    // A token that expired is refused, and the client is told why.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let shown = refusal_shown(&gw, "pw", &short).await;
    assert!(shown.contains("expired"), "{shown}");
    let seen = gw.everything_visible(&[]).await;
    assert!(!seen.contains("ssh-pw-1"));
    assert!(!seen.contains(&jwt));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_commands_wait_for_review_and_grants_end_sessions() {
    let gw = TestGateway::start(Backend::Sqlite, None).await;
    add_ssh(
        &gw,
        "held-box",
        json!({"policies": {"guardrails": ["shell-safety"], "reviews": ["held-for-review"]},
               "access": {"reviewers": ["sre"], "review_timeout_secs": 60}}),
    )
    .await;
    let ops = token(&gw, &["ops"]).await;
    let sre = token(&gw, &["sre"]).await;

    // Held: the client is told on stderr, a reviewer approves, the command runs.
    let run = |command: &'static str| {
        let (url, ops) = (gw.url.clone(), ops.clone());
        let port = port(&gw);
        tokio::task::spawn_blocking(move || {
            let _ = url;
            with_token(
                "ssh",
                &ops,
                &["-p", &port.to_string(), "held-box@127.0.0.1", command],
            )
        })
    };
    let held = run("echo held-ok");
    let id = gw.pending_review(&sre, "echo held-ok").await;
    let (status, _) = gw
        .call(
            "POST",
            &format!("/api/reviews/{id}/approve"),
            Some(&sre),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let out = held.await.unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "held-ok\n");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "warden: Warden holds this command for review {id}"
        )),
        "{stderr}"
    );

    // Rejected: exit status 1 and the reason on stderr; nothing ran.
    let held = run("echo held-no");
    let id = gw.pending_review(&sre, "echo held-no").await;
    let (status, _) = gw
        .call(
            "POST",
            &format!("/api/reviews/{id}/reject"),
            Some(&sre),
            Some(json!({"comment": "why echo"})),
        )
        .await;
    assert_eq!(status, 200);
    let out = held.await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).is_empty());
    assert!(
        text(&out.stderr).contains("rejected by") && text(&out.stderr).contains("why echo"),
        "{}",
        text(&out.stderr)
    );

    // A connection behind access requests: the grant's end disconnects the client.
    add_ssh(
        &gw,
        "jit-box",
        json!({"access": {"request_required": true, "reviewers": ["sre"]}}),
    )
    .await;
    let shown = refusal_shown(&gw, "jit-box", &ops).await;
    assert!(shown.contains("warden request jit-box"), "{shown}");
    let (status, request) = gw
        .call(
            "POST",
            "/api/access-requests",
            Some(&ops),
            Some(json!({"connection": "jit-box", "duration": "3s", "reason": "look at logs"})),
        )
        .await;
    assert_eq!(status, 201, "{request}");
    let rid = request["id"].as_str().unwrap();
    let (status, _) = gw
        .call(
            "POST",
            &format!("/api/access-requests/{rid}/approve"),
            Some(&sre),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let p = port(&gw).to_string();
    let out = tokio::task::spawn_blocking(move || {
        with_token(
            "ssh",
            &ops,
            &["-p", &p, "jit-box@127.0.0.1", "echo started; sleep 60"],
        )
    })
    .await
    .unwrap();
    assert_eq!(
        text(&out.stdout),
        "started\n",
        "it ran until the grant ended"
    );
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&format!("your access grant {rid} has ended")),
        "{}",
        text(&out.stderr)
    );
}

/// SFTP changes reach the audit log in the order they happened, every one of them,
/// also those the client makes just before it quits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_changes_are_audited_in_order_and_none_is_lost() {
    let gw = TestGateway::start(Backend::Sqlite, None).await;
    add_ssh(&gw, "box", json!({})).await;
    let ops = token(&gw, &["ops"]).await;
    let p = port(&gw).to_string();
    let base = format!("/tmp/warden-t-order-{}", uuid::Uuid::now_v7().simple());
    let mut batch = format!("mkdir {base}\n");
    let mut expected = vec![("mkdir".to_string(), base.clone())];
    for i in 0..12 {
        batch.push_str(&format!("mkdir {base}/d{i}\n"));
        expected.push(("mkdir".into(), format!("{base}/d{i}")));
    }
    for i in (0..12).rev() {
        batch.push_str(&format!("rmdir {base}/d{i}\n"));
        expected.push(("rmdir".into(), format!("{base}/d{i}")));
    }
    batch.push_str(&format!("rmdir {base}\n"));
    expected.push(("rmdir".into(), base.clone()));
    let file = gw.dir.path().join("order-batch");
    std::fs::write(&file, batch).unwrap();
    let sftp = with_token(
        "sftp",
        &ops,
        &["-P", &p, "-b", file.to_str().unwrap(), "box@127.0.0.1"],
    );
    assert!(sftp.status.success(), "{}", text(&sftp.stderr));
    let mut seen = Vec::new();
    for _ in 0..100 {
        seen = events(&gw, "ssh.file")
            .await
            .iter()
            .map(|e| {
                let p = &e["event"]["payload"];
                (
                    p["op"].as_str().unwrap().to_string(),
                    p["path"].as_str().unwrap().to_string(),
                )
            })
            .collect::<Vec<_>>();
        if seen.len() >= expected.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, expected);
}

/// Every phase before the login is timed: a socket that never sends its SSH
/// identification, and one that sends it and stalls, are both dropped by
/// `ssh.auth_timeout_secs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_do_not_log_in_in_time_are_dropped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = TestGateway::sqlite_with(|c| {
        c.ssh.auth_timeout_secs = 2;
    })
    .await;
    let addr = gw
        .gateway
        .listener(warden_core::ConnectionKind::Ssh)
        .unwrap();
    let silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(b"SSH-2.0-OpenSSH_9.2 stalls\r\n")
        .await
        .unwrap();
    for (what, mut s) in [("silent", silent), ("stalled after its banner", stalled)] {
        let mut sink = Vec::new();
        let closed =
            tokio::time::timeout(std::time::Duration::from_secs(30), s.read_to_end(&mut sink))
                .await;
        assert!(
            matches!(closed, Ok(Ok(_)) | Ok(Err(_))),
            "the {what} socket is still open"
        );
    }
    // The listener still serves.
    let fresh = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut banner = [0u8; 8];
    let mut fresh = fresh;
    fresh.read_exact(&mut banner).await.unwrap();
    assert_eq!(&banner, b"SSH-2.0-");
}

/// Forwarded ports count against `ssh.max_channels`, and a client that keeps asking
/// for refused forwards is disconnected rather than made to cost an audit write each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_count_as_channels_and_refusals_are_bounded() {
    let gw = TestGateway::sqlite_with(|c| {
        c.ssh.max_channels = 2;
    })
    .await;
    add_ssh(
        &gw,
        "fwd",
        json!({"ssh": {"host_key": host_key(), "port_forwarding": true}}),
    )
    .await;
    add_ssh(&gw, "nofwd", json!({})).await;
    let ops = token(&gw, &["ops"]).await;
    let (sshd_addr, _) = sshd();
    let (host, sshd_port) = sshd_addr.rsplit_once(':').unwrap();
    let sshd_port: u32 = sshd_port.parse().unwrap();

    let handle = russh_login(&gw, "fwd", &ops).await;
    let mut open = Vec::new();
    for _ in 0..2 {
        open.push(
            handle
                .channel_open_direct_tcpip(host, sshd_port, "127.0.0.1", 5000)
                .await
                .expect("within the channel limit"),
        );
    }
    let third = handle
        .channel_open_direct_tcpip(host, sshd_port, "127.0.0.1", 5000)
        .await;
    assert!(
        matches!(
            third,
            Err(russh::Error::ChannelOpenFailure(
                russh::ChannelOpenFailure::ResourceShortage
            ))
        ),
        "{third:?}"
    );
    // A session channel counts against the same limit.
    assert!(handle.channel_open_session().await.is_err());
    // Closing one gives its place back.
    open.pop().unwrap().close().await.unwrap();
    let again = eventually("a channel's place back", || async {
        handle
            .channel_open_direct_tcpip(host, sshd_port, "127.0.0.1", 5000)
            .await
            .ok()
    })
    .await;
    drop(again);

    // Refused forwards: after 64 the connection is closed.
    let refused = russh_login(&gw, "nofwd", &ops).await;
    let mut outcomes = 0;
    for _ in 0..100 {
        match refused
            .channel_open_direct_tcpip(host, sshd_port, "127.0.0.1", 5000)
            .await
        {
            Err(russh::Error::ChannelOpenFailure(_)) => outcomes += 1,
            Err(_) => break,
            Ok(_) => panic!("a forward was allowed on a connection without forwarding"),
        }
    }
    assert!(
        (64..100).contains(&outcomes),
        "the client was cut after {outcomes} refusals"
    );
    assert!(refused.is_closed());
    let ended = events(&gw, "session.end").await;
    assert!(
        ended.iter().any(|e| e["event"]["payload"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("port forwards were refused"))),
        "{ended:?}"
    );
}
