//! What the Kubernetes tests share: a gateway with a TLS Kubernetes listener and a
//! connection to the test cluster (scripts/test.sh starts it: `setup_k8s` in
//! scripts/lib.sh), kubeconfigs for Warden tokens, and the real kubectl.
#![allow(dead_code)]

use std::process::Output;

use serde_json::{Value, json};
use warden_core::ConnectionKind;

use crate::support::*;

pub const STACK: &str = "/var/tmp/warden-test-k8s";

pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

pub fn kubectl_path() -> String {
    env_or(
        "WARDEN_TEST_KUBECTL",
        "/var/cache/warden-test/k8s-1.37.2-etcd-3.6.16-kwok-0.8.0-r2/kubectl",
    )
}

/// The cluster's URL, CA and the token the gateway holds (cluster admin).
pub fn cluster() -> (String, String, String) {
    let url = env_or("WARDEN_TEST_K8S_URL", "https://127.0.0.1:16443");
    let ca = std::fs::read_to_string(env_or("WARDEN_TEST_K8S_CA", &format!("{STACK}/ca.crt")))
        .expect("the test cluster's CA (scripts/test.sh starts the cluster)");
    let token = std::fs::read_to_string(env_or(
        "WARDEN_TEST_K8S_TOKEN_FILE",
        &format!("{STACK}/admin.token"),
    ))
    .unwrap()
    .trim()
    .to_string();
    (url, ca, token)
}

pub struct Cluster {
    pub gw: TestGateway,
    pub held_token: String,
    pub dir: tempfile::TempDir,
    pub ca_path: String,
    pub port: u16,
}

/// A gateway whose Kubernetes listener speaks TLS, with a connection `name` to the
/// test cluster; `extra` is merged into the connection.
pub async fn start(name: &str, extra: Value) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let cert_path = dir.path().join("gw.crt");
    let key_path = dir.path().join("gw.key");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let gw = TestGateway::sqlite_with(|c| {
        c.kubernetes.tls_cert = Some(cert_path.clone());
        c.kubernetes.tls_key = Some(key_path.clone());
    })
    .await;
    let (url, ca, held_token) = cluster();
    let mut conn = json!({
        "name": name, "kind": "kubernetes", "target": url,
        "tls": {"ca_pem": ca}, "secret": held_token, "allowed_groups": ["eng", "sre"],
        "policies": {"guardrails": ["k8s-safety"]},
        "access": {"reviewers": ["sre"], "review_timeout_secs": 60},
    });
    if let (Some(c), Some(e)) = (conn.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    let (status, body) = gw.admin("POST", "/api/connections", Some(conn)).await;
    assert_eq!(status, 201, "{body}");
    let port = gw
        .gateway
        .listener(ConnectionKind::Kubernetes)
        .unwrap()
        .port();
    Cluster {
        gw,
        held_token,
        ca_path: cert_path.display().to_string(),
        dir,
        port,
    }
}

impl Cluster {
    /// A kubeconfig for `token` pointing at connection `name` through the gateway.
    pub fn kubeconfig(&self, name: &str, token: &str) -> String {
        let path = self
            .dir
            .path()
            .join(format!("{name}-{}.kubeconfig", &token[..8]));
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: w\n  cluster:\n    server: https://127.0.0.1:{}/{name}\n    certificate-authority: {}\nusers:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: warden-{name}\n  context: {{cluster: w, user: u}}\ncurrent-context: warden-{name}\n",
            self.port, self.ca_path
        );
        std::fs::write(&path, config).unwrap();
        path.display().to_string()
    }

    /// Runs kubectl with `kubeconfig` (off the async runtime).
    pub async fn kubectl(&self, kubeconfig: &str, args: &[&str]) -> Output {
        let kubeconfig = kubeconfig.to_string();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(kubectl_path())
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .arg("--request-timeout=60s")
                .args(&args)
                .output()
                .expect("kubectl from the test stack")
        })
        .await
        .unwrap()
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    )
}

/// Starts a long-running kubectl and returns it with its stdout as lines.
pub fn kubectl_stream(
    cfg: &str,
    args: &[&str],
) -> (
    tokio::process::Child,
    tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) {
    let mut child = tokio::process::Command::new(kubectl_path())
        .arg("--kubeconfig")
        .arg(cfg)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stdout.take().unwrap()));
    (child, lines)
}

/// The first line of `lines` containing `needle`, within 30 s.
pub async fn line_with(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    needle: &str,
) -> Option<String> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while let Ok(Ok(Some(line))) = tokio::time::timeout_at(deadline, lines.next_line()).await {
        if line.contains(needle) {
            return Some(line);
        }
    }
    None
}

/// The certificates of a PEM bundle.
pub fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .map(|c| c.unwrap())
        .collect()
}
