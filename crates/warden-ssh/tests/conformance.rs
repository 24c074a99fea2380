//! The shared conformance scenarios (`warden_core::testing::conformance`) through the
//! SSH proxy: the real OpenSSH client (token by sshpass) against the OpenSSH server
//! `scripts/test.sh` starts (`setup_sshd`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use warden_core::testing::conformance::{self, ConformanceGuard, Outcome, Scenario};
use warden_core::testing::{MemorySink, MemoryTimeline, eventually};
use warden_core::{
    BackendTarget, LoginRequest, Refusal, Secret, SecretKind, SessionEnd, SessionHandle,
    SessionHooks, SshOptions,
};
use warden_ssh::proxy::{ProxyConfig, SshProxy};

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

struct Hooks {
    sink: Arc<MemorySink>,
    timeline: Arc<MemoryTimeline>,
}

impl SessionHooks for Hooks {
    async fn open(&self, _login: LoginRequest<'_>) -> Result<SessionHandle, Refusal> {
        let (addr, dir) = sshd();
        let key = std::fs::read_to_string(dir.join("warden_t_key")).unwrap();
        let host_key = std::fs::read_to_string(dir.join("host_ed25519.pub")).unwrap();
        let target = BackendTarget {
            addr,
            user: "warden_t".into(),
            database: String::new(),
            secret: Some(Secret::new(key)),
            secret_kind: Some(SecretKind::PrivateKey),
            ssh: SshOptions {
                host_key: Some(host_key.trim().to_string()),
                ..SshOptions::default()
            },
            tls: Default::default(),
            http: Default::default(),
        };
        let masker = warden_policy::MaskingEngine::from_sets(&[], b"k").unwrap();
        Ok(self.sink.open(
            target,
            Arc::new(ConformanceGuard),
            Arc::new(masker),
            self.timeline.clone(),
            SessionEnd::never(),
        ))
    }
}

async fn start(hooks: Arc<Hooks>) -> SocketAddr {
    let dir = tempfile::tempdir().unwrap();
    let host_key = warden_ssh::keys::load_or_create_host_key(&dir.path().join("host_key")).unwrap();
    let proxy = Arc::new(SshProxy::new(
        hooks,
        ProxyConfig {
            host_key,
            login_timeout: Duration::from_secs(20),
            max_channels: 4,
            auth_timeout: Duration::from_secs(20),
        },
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, peer) = listener.accept().await.unwrap();
            let proxy = proxy.clone();
            tokio::spawn(async move { proxy.serve(stream, peer).await });
        }
    });
    addr
}

/// The real `ssh`, logging in with a token as its password.
fn ssh(addr: SocketAddr, command: &str) -> Command {
    let mut cmd = Command::new("sshpass");
    cmd.arg("-e")
        .arg("ssh")
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args(["-o", "LogLevel=ERROR", "-o", "PubkeyAuthentication=no"])
        .args(["-p", &addr.port().to_string(), "conn@127.0.0.1", command])
        .env("SSHPASS", "token")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_ends_as_the_pipeline_says() {
    for scenario in Scenario::ALL {
        let hooks = Arc::new(Hooks {
            sink: Arc::default(),
            timeline: Arc::new(MemoryTimeline::new(2)),
        });
        let addr = start(hooks.clone()).await;
        // Arranged before the login: SSH records nothing before the command.
        scenario.arrange(&hooks.sink, &hooks.timeline);
        let command = format!("echo {}", scenario.marker());
        let mut child = ssh(addr, &command).spawn().unwrap();
        let seen = if scenario == Scenario::ClientGoneDuringReview {
            eventually("the hold", || {
                conformance::trace(&hooks.sink).contains(&"held".to_string())
            })
            .await;
            // The client's process dies: its connection closes.
            child.kill().unwrap();
            let _ = child.wait();
            eventually("the session's end", || conformance::closed(&hooks.sink)).await;
            Outcome::Left
        } else {
            let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
                .await
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            match out.status.code() {
                Some(0) => {
                    let ran = format!("{}\n", scenario.marker());
                    assert_eq!(String::from_utf8_lossy(&out.stdout), ran);
                    Outcome::Ran
                }
                Some(1) => Outcome::Refused,
                // The session ends: ssh shows the disconnect's reason (or the
                // channel's, when it arrives first).
                Some(255)
                    if stderr.contains("recording cannot be written")
                        || stderr.contains("cannot be recorded") =>
                {
                    Outcome::Ended
                }
                Some(255) if stderr.contains("audit log cannot be written") => Outcome::Unavailable,
                other => panic!("{scenario:?}: exit {other:?}: {stderr}"),
            }
        };
        // Each ssh invocation is one session: wait for it to close before checking.
        eventually("the session's end", || conformance::closed(&hooks.sink)).await;
        conformance::verify(scenario, seen, &hooks.sink);
    }
}
