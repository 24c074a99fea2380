//! Kubernetes connections end to end: the real `kubectl` (built with the API server)
//! through the gateway's `[kubernetes]` listener (TLS, so kubectl speaks HTTP/2) to a
//! real kube-apiserver with etcd and kwok (started by scripts/test.sh; see
//! `setup_k8s` in scripts/lib.sh).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::Output;

use serde_json::{Value, json};
use support::*;
use warden_core::ConnectionKind;

const STACK: &str = "/var/tmp/warden-test-k8s";

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn kubectl_path() -> String {
    env_or(
        "WARDEN_TEST_KUBECTL",
        "/var/cache/warden-test/k8s-1.37.2-etcd-3.6.16-kwok-0.8.0-r2/kubectl",
    )
}

/// The cluster's URL, CA and the token the gateway holds (cluster admin).
fn cluster() -> (String, String, String) {
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

struct Cluster {
    gw: TestGateway,
    held_token: String,
    dir: tempfile::TempDir,
    ca_path: String,
    port: u16,
}

/// A gateway whose Kubernetes listener speaks TLS, with a connection `name` to the
/// test cluster; `extra` is merged into the connection.
async fn start(name: &str, extra: Value) -> Cluster {
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
    fn kubeconfig(&self, name: &str, token: &str) -> String {
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
    async fn kubectl(&self, kubeconfig: &str, args: &[&str]) -> Output {
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

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_works_through_warden_under_its_rules() {
    let k = start("k8s", json!({})).await;
    let key = k.gw.key_for("alice@example.com", &["eng"]).await;
    let cfg = k.kubeconfig("k8s", &key);
    let mut outputs = String::new();

    let out = k.kubectl(&cfg, &["get", "pods", "-n", "default"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("web"), "{}", text(&out.stdout));
    outputs += &text(&out.stdout);

    // apply, read back, delete.
    let cm = unique("cm");
    let manifest = k.dir.path().join("cm.yaml");
    std::fs::write(
        &manifest,
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {cm}\n  namespace: default\ndata:\n  greeting: hello\n"),
    )
    .unwrap();
    let out = k
        .kubectl(&cfg, &["apply", "-f", &manifest.display().to_string()])
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = k
        .kubectl(
            &cfg,
            &["get", "configmap", &cm, "-o", "jsonpath={.data.greeting}"],
        )
        .await;
    assert_eq!(text(&out.stdout), "hello", "{}", text(&out.stderr));
    let out = k.kubectl(&cfg, &["delete", "configmap", &cm]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));

    // A denied delete shows the rule, and nothing is deleted.
    let out = k.kubectl(&cfg, &["delete", "namespace", "prod"]).await;
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("Forbidden") && err.contains("k8s-safety/no-namespace-deletes"),
        "{err}"
    );
    let out = k
        .kubectl(&cfg, &["get", "namespace", "prod", "-o", "name"])
        .await;
    assert_eq!(
        text(&out.stdout).trim(),
        "namespace/prod",
        "{}",
        text(&out.stderr)
    );

    // exec runs (WebSocket), and answers to the Kubernetes and the shell rules.
    let out = k
        .kubectl(&cfg, &["exec", "web", "--", "echo", "hi-from-web"])
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "hi-from-web");
    let out = k
        .kubectl(&cfg, &["exec", "-n", "prod", "api", "--", "echo", "x"])
        .await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("k8s-safety/no-prod-exec"),
        "{}",
        text(&out.stderr)
    );
    let out = k
        .kubectl(
            &cfg,
            &["exec", "web", "--", "sh", "-c", "rm -rf /tmp/nothing"],
        )
        .await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("k8s-safety/no-rm-rf"),
        "{}",
        text(&out.stderr)
    );

    // logs.
    let out = k.kubectl(&cfg, &["logs", "web"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    outputs += &(text(&out.stdout) + &text(&out.stderr));

    // Every request was audited, denials with their rule.
    let events = k.gw.audit_events("k8s.request").await;
    let denied: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"]["decision"]["outcome"] == "deny")
        .collect();
    assert!(
        denied
            .iter()
            .any(|e| e["event"]["payload"]["request"] == "delete namespaces prod -n prod"),
        "{denied:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["event"]["payload"]["detail"]["resource"] == "configmaps")
    );

    // The held token is nowhere a client or an admin can read.
    let (_, conn) = k.gw.admin("GET", "/api/connections/k8s", None).await;
    let visible = k.gw.everything_visible(&[&conn]).await + &outputs;
    assert!(!visible.contains(&k.held_token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_values_are_masked_unless_the_connection_reveals_them() {
    let k = start("k8s", json!({})).await;
    let key = k.gw.key_for("alice@example.com", &["eng"]).await;
    let cfg = k.kubeconfig("k8s", &key);
    let name = unique("db");
    let password = unique("hunter2");
    let encoded = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(&password)
    };
    let out = k
        .kubectl(
            &cfg,
            &[
                "create",
                "secret",
                "generic",
                &name,
                &format!("--from-literal=password={password}"),
            ],
        )
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));

    // kubectl apply keeps a copy in an annotation: that is masked too.
    let manifest = k.dir.path().join("secret.yaml");
    let applied = unique("applied");
    std::fs::write(
        &manifest,
        format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: {applied}\nstringData:\n  token: {password}\n"),
    )
    .unwrap();
    let out = k
        .kubectl(&cfg, &["apply", "-f", &manifest.display().to_string()])
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));

    let mut seen = String::new();
    for args in [
        vec!["get", "secret", name.as_str(), "-o", "yaml"],
        vec!["get", "secret", applied.as_str(), "-o", "json"],
        vec!["get", "secrets", "-o", "json"],
        vec!["get", "secrets", "-A", "-o", "yaml"],
        vec!["describe", "secret", name.as_str()],
    ] {
        let out = k.kubectl(&cfg, &args).await;
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        seen += &text(&out.stdout);
    }
    // A watch is masked event by event.
    let out = k
        .kubectl(
            &cfg,
            &[
                "get",
                "secrets",
                "--watch",
                "-o",
                "json",
                "--request-timeout=3s",
            ],
        )
        .await;
    seen += &text(&out.stdout);
    assert!(seen.contains(&name) && seen.contains(&applied), "{seen}");
    assert!(seen.contains("W21hc2tlZF0="), "{seen}");
    assert!(
        !seen.contains(&encoded) && !seen.contains(&password),
        "{seen}"
    );

    // A connection that reveals them shows the value (the masking is what hid it).
    let k2 = start("k8s-open", json!({"kubernetes": {"reveal_secrets": true}})).await;
    let key2 = k2.gw.key_for("alice@example.com", &["eng"]).await;
    let cfg2 = k2.kubeconfig("k8s-open", &key2);
    let out = k2
        .kubectl(
            &cfg2,
            &["get", "secret", &name, "-o", "jsonpath={.data.password}"],
        )
        .await;
    assert_eq!(text(&out.stdout), encoded, "{}", text(&out.stderr));
    for s in [&name, &applied] {
        let _ = k.kubectl(&cfg, &["delete", "secret", s]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_delete_runs_once_a_reviewer_approves() {
    let k = start(
        "k8s",
        json!({"policies": {"guardrails": ["k8s-safety"], "reviews": ["k8s-review"]}}),
    )
    .await;
    let ops = k.gw.key_for("alice@example.com", &["eng"]).await;
    let sre = k.gw.key_for("sam@example.com", &["sre"]).await;
    let cfg = k.kubeconfig("k8s", &ops);
    let deploy = unique("dep");
    let manifest = k.dir.path().join("deploy.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {deploy}\n  namespace: default\nspec:\n  replicas: 0\n  selector:\n    matchLabels: {{app: {deploy}}}\n  template:\n    metadata:\n      labels: {{app: {deploy}}}\n    spec:\n      containers:\n      - {{name: c, image: busybox}}\n"
        ),
    )
    .unwrap();
    let out = k
        .kubectl(&cfg, &["apply", "-f", &manifest.display().to_string()])
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));

    let held = {
        let (kubectl, cfg, deploy) = (kubectl_path(), cfg.clone(), deploy.clone());
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(kubectl)
                .args([
                    "--kubeconfig",
                    &cfg,
                    "delete",
                    "deployment",
                    &deploy,
                    "--wait=false",
                ])
                .output()
                .unwrap()
        })
    };
    let id =
        k.gw.pending_review(
            &sre,
            &format!("delete deployments.apps {deploy} -n default"),
        )
        .await;
    let (status, body) =
        k.gw.call(
            "POST",
            &format!("/api/reviews/{id}/approve"),
            Some(&sre),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let out = held.await.unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = k.kubectl(&cfg, &["get", "deployment", &deploy]).await;
    assert!(
        text(&out.stderr).contains("NotFound"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impersonation_lets_the_cluster_decide_as_the_person() {
    let k = start("k8s", json!({"kubernetes": {"impersonate": true}})).await;
    let alice = k.gw.key_for("alice@example.com", &["eng"]).await;
    let cfg = k.kubeconfig("k8s", &alice);
    // The cluster's RBAC lets alice read pods in `default` only.
    let out = k.kubectl(&cfg, &["get", "pods", "-n", "default"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = k.kubectl(&cfg, &["get", "pods", "-n", "prod"]).await;
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("alice@example.com") && err.contains("forbidden"),
        "{err}"
    );
    // An identity that cannot travel as a header is refused, never dropped (the
    // request would run as the gateway's own credential).
    let odd = k.gw.key_for("ctl\u{1}user", &["eng"]).await;
    let cfg_odd = k.kubeconfig("k8s", &odd);
    let out = k.kubectl(&cfg_odd, &["get", "pods", "-n", "default"]).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("cannot be sent to the cluster"),
        "{}",
        text(&out.stderr)
    );
    // A client may not pick another identity for the gateway's credential.
    let out = k
        .kubectl(&cfg, &["--as", "system:admin", "get", "pods", "-n", "prod"])
        .await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("Impersonate"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_streams_are_recorded_and_the_older_transport_still_works() {
    let k = start("k8s", json!({})).await;
    let key = k.gw.key_for("alice@example.com", &["eng"]).await;
    let cfg = k.kubeconfig("k8s", &key);
    let marker = unique("typed");
    // An interactive shell (stdin over the v5 WebSocket channels): what was typed
    // and what came back are both in the session's terminal recording.
    let run = {
        let (kubectl, cfg, marker) = (kubectl_path(), cfg.clone(), marker.clone());
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut child = std::process::Command::new(kubectl)
                .args(["--kubeconfig", &cfg, "exec", "-i", "web", "--", "sh"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdin = child.stdin.take().unwrap();
            writeln!(stdin, "echo out-$(echo {marker} | tr a-z A-Z)").unwrap();
            writeln!(stdin, "exit").unwrap();
            drop(stdin);
            child.wait_with_output().unwrap()
        })
    };
    let out = run.await.unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shouted = format!("out-{}", marker.to_uppercase());
    assert!(
        text(&out.stdout).contains(&shouted),
        "{}",
        text(&out.stdout)
    );
    let recorded = eventually("the exec recording", || async {
        let all = k.gw.recordings_text();
        (all.contains(&shouted) && all.contains(&marker)).then_some(all)
    })
    .await;
    assert!(recorded.contains("\"i\""), "stdin is recorded as input");

    // kubectl's older transport (SPDY/3.1) is relayed too.
    let out = tokio::task::spawn_blocking({
        let (kubectl, cfg) = (kubectl_path(), cfg.clone());
        move || {
            std::process::Command::new(kubectl)
                .env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")
                .args([
                    "--kubeconfig",
                    &cfg,
                    "exec",
                    "web",
                    "--",
                    "echo",
                    "via-spdy",
                ])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "via-spdy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_stream_events_as_they_happen() {
    let k = start("k8s", json!({})).await;
    let key = k.gw.key_for("alice@example.com", &["eng"]).await;
    let cfg = k.kubeconfig("k8s", &key);
    let name = unique("watched");
    let mut watch = tokio::process::Command::new(kubectl_path())
        .args([
            "--kubeconfig",
            &cfg,
            "get",
            "configmaps",
            "--watch-only",
            "-o",
            "name",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(watch.stdout.take().unwrap()));
    // Once the watch is open, an event arrives while it stays open: nothing waits
    // for its end.
    eventually("the watch to open", || async {
        let events = k.gw.audit_events("k8s.request").await;
        events
            .iter()
            .any(|e| e["event"]["payload"]["request"] == "watch configmaps -n default")
            .then_some(())
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut seen = false;
    for _ in 0..5 {
        let out = k.kubectl(&cfg, &["create", "configmap", &name]).await;
        if out.status.success() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while let Ok(Ok(Some(line))) = tokio::time::timeout_at(deadline, lines.next_line()).await {
        if line.contains(&name) {
            seen = true;
            break;
        }
    }
    if !seen {
        let _ = watch.kill().await;
        let out = watch.wait_with_output().await.unwrap();
        panic!(
            "the watch did not deliver the new configmap while open: {:?} {} {}",
            out.status,
            text(&out.stderr),
            k.gw.recordings_text()
        );
    }
    let _ = watch.kill().await;
    let _ = k.kubectl(&cfg, &["delete", "configmap", &name]).await;
}

/// Starts a long-running kubectl and returns it with its stdout as lines.
fn kubectl_stream(
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
async fn line_with(
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_is_the_connections_choice_and_logs_follow() {
    // Refused by default, as a decision naming the setting.
    let k = start("k8s", json!({})).await;
    let key = k.gw.key_for("alice@example.com", &["eng"]).await;
    let cfg = k.kubeconfig("k8s", &key);
    let (mut child, _) = kubectl_stream(&cfg, &["port-forward", "pod/web", "0:80"]);
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), child.wait())
        .await
        .expect("a refused port-forward ends");
    assert!(!out.unwrap().success());
    let refused = eventually("the refused port-forward", || async {
        let events = k.gw.audit_events("k8s.request").await;
        events
            .into_iter()
            .find(|e| e["event"]["decision"]["rule"] == "kubernetes.port_forwarding")
    })
    .await;
    assert_eq!(
        refused["event"]["payload"]["detail"]["subresource"],
        "portforward"
    );

    // Allowed: the forwarded port reaches the pod (kwok forwards it to httpbin).
    let open = start("k8s-pf", json!({"kubernetes": {"port_forwarding": true}})).await;
    let key = open.gw.key_for("alice@example.com", &["eng"]).await;
    let cfg = open.kubeconfig("k8s-pf", &key);
    let (_child, mut lines) = kubectl_stream(&cfg, &["port-forward", "pod/web", "0:80"]);
    let line = line_with(&mut lines, "Forwarding from 127.0.0.1:")
        .await
        .expect("kubectl port-forward listening");
    let port = line
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .to_string();
    let body: Value = reqwest::get(format!("http://127.0.0.1:{port}/get?via=warden"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["args"]["via"][0], "warden", "{body}");

    // logs -f: a line written while it runs arrives while it runs.
    let log = env_or("WARDEN_TEST_K8S_LOG_FILE", &format!("{STACK}/pods.log"));
    let marker = unique("logged");
    let (_logs, mut lines) = kubectl_stream(&cfg, &["logs", "-f", "--tail=0", "web"]);
    eventually("logs -f to open", || async {
        let events = open.gw.audit_events("k8s.request").await;
        events
            .iter()
            .any(|e| e["event"]["payload"]["request"] == "get pods/log web -n default")
            .then_some(())
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        writeln!(f, "2026-12-02T00:00:00.000000000Z stdout F {marker}").unwrap();
    }
    assert!(
        line_with(&mut lines, &marker).await.is_some(),
        "logs -f did not deliver the new line"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ways_around_masking_and_rules_are_closed() {
    let k = start("k8s", json!({"kubernetes": {"port_forwarding": true}})).await;
    let key = k.gw.key_for("alice@example.com", &["eng"]).await;
    let cfg = k.kubeconfig("k8s", &key);

    // A service account token minted through Warden would let its holder go around
    // it: the TokenRequest's answer is masked.
    let sa = unique("sa");
    let out = k.kubectl(&cfg, &["create", "serviceaccount", &sa]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = k.kubectl(&cfg, &["create", "token", &sa]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "[masked]");
    let _ = k.kubectl(&cfg, &["delete", "serviceaccount", &sa]).await;

    // A JSON patch may not copy, move or test a masked Secret's values.
    let secret = unique("patched");
    let out = k
        .kubectl(
            &cfg,
            &[
                "create",
                "secret",
                "generic",
                &secret,
                "--from-literal=password=s3cr3t-value",
            ],
        )
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let copy = r#"[{"op":"add","path":"/metadata/annotations","value":{}},{"op":"copy","from":"/data/password","path":"/metadata/annotations/leak"}]"#;
    let out = k
        .kubectl(
            &cfg,
            &[
                "patch",
                "secret",
                &secret,
                "--type=json",
                "-p",
                copy,
                "--dry-run=server",
                "-o",
                "json",
            ],
        )
        .await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("copies, moves or tests"),
        "{}",
        text(&out.stderr)
    );
    assert!(!text(&out.stdout).contains("czNjcjN0LXZhbHVl"));
    let out = k
        .kubectl(
            &cfg,
            &[
                "patch",
                "secret",
                &secret,
                "--type=json",
                "-p",
                r#"[{"op":"add","path":"/metadata/labels","value":{"a":"b"}}]"#,
                "-o",
                "json",
            ],
        )
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !text(&out.stdout).contains("czNjcjN0LXZhbHVl"),
        "{}",
        text(&out.stdout)
    );
    let _ = k.kubectl(&cfg, &["delete", "secret", &secret]).await;

    // The kubelet's API behind the node proxy is never relayed.
    let node = env_or("WARDEN_TEST_K8S_NODE", "warden-fake-node");
    let out = k
        .kubectl(
            &cfg,
            &["get", "--raw", &format!("/api/v1/nodes/{node}/proxy/pods")],
        )
        .await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("Forbidden"),
        "{}",
        text(&out.stderr)
    );

    // A watch over WebSocket would carry Secrets unread: only exec, attach,
    // port-forward and the proxies may switch protocols.
    let addr = format!("127.0.0.1:{}", k.port);
    let connector = {
        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read(&k.ca_path).unwrap();
        for cert in rustls_pemfile_certs(&pem) {
            roots.add(cert).unwrap();
        }
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
    };
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut tls = connector
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = format!(
        "GET /k8s/api/v1/secrets?watch=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: base64.binary.k8s.io\r\n\r\n"
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tls.read(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).to_string();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("cannot switch protocols"), "{answer}");
}

/// The certificates of a PEM bundle.
fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .map(|c| c.unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_ends_its_open_watch_and_its_next_request() {
    let k = start("k8s", json!({})).await;
    let key = k.gw.key_for("alice@example.com", &["eng"]).await;
    let client = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&k.ca_path).unwrap()).unwrap(),
        )
        .build()
        .unwrap();
    let base = format!("https://127.0.0.1:{}/k8s", k.port);
    let mut watch = client
        .get(format!(
            "{base}/api/v1/namespaces/default/configmaps?watch=1"
        ))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(watch.status(), 200);
    // An exec stream runs on its own connection, which the upgrade took over.
    let cfg = k.kubeconfig("k8s", &key);
    let (mut exec, mut ticks) = kubectl_stream(
        &cfg,
        &[
            "exec",
            "web",
            "--",
            "sh",
            "-c",
            "while true; do echo tick; sleep 1; done",
        ],
    );
    assert!(
        line_with(&mut ticks, "tick").await.is_some(),
        "the exec did not start"
    );
    // The same client connection asks again once the key is gone.
    let key_id = key.split('_').nth(1).unwrap();
    let (status, _) =
        k.gw.admin("DELETE", &format!("/api/api-keys/{key_id}"), None)
            .await;
    assert_eq!(status, 204);
    // The open watch is cut (its stream ends with an error, or ends).
    let ended = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Ok(Some(_)) = watch.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the watch outlived its key");
    let exited = tokio::time::timeout(std::time::Duration::from_secs(30), exec.wait()).await;
    assert!(exited.is_ok(), "the exec outlived its key");
    let (status, body) = {
        let r = client
            .get(format!("{base}/api/v1/namespaces/default/pods"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    assert_eq!(status, 401, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_can_be_the_held_credential() {
    // A certificate the cluster's CA signs for a user in system:masters.
    let dir = tempfile::tempdir().unwrap();
    let stack = env_or("WARDEN_TEST_K8S_DIR", STACK);
    let ca_key = format!("{stack}/ca.key");
    let ca_crt = env_or("WARDEN_TEST_K8S_CA", &format!("{stack}/ca.crt"));
    let (key, csr, crt) = (
        dir.path().join("c.key"),
        dir.path().join("c.csr"),
        dir.path().join("c.crt"),
    );
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    };
    openssl(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        key.to_str().unwrap(),
    ]);
    openssl(&[
        "req",
        "-new",
        "-key",
        key.to_str().unwrap(),
        "-subj",
        "/O=system:masters/CN=warden-cert-user",
        "-out",
        csr.to_str().unwrap(),
    ]);
    let ext = dir.path().join("ext.cnf");
    std::fs::write(
        &ext,
        "extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        csr.to_str().unwrap(),
        "-CA",
        &ca_crt,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        ext.to_str().unwrap(),
        "-out",
        crt.to_str().unwrap(),
    ]);
    let pem = std::fs::read_to_string(&crt).unwrap() + &std::fs::read_to_string(&key).unwrap();
    let k = start(
        "k8s-cert",
        json!({"secret": pem, "secret_kind": "private_key"}),
    )
    .await;
    let user = k.gw.key_for("alice@example.com", &["eng"]).await;
    let cfg = k.kubeconfig("k8s-cert", &user);
    let out = k
        .kubectl(
            &cfg,
            &[
                "auth",
                "whoami",
                "-o",
                "jsonpath={.status.userInfo.username}",
            ],
        )
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "warden-cert-user");
    // The key never shows.
    let visible = k.gw.everything_visible(&[]).await;
    let key_pem = std::fs::read_to_string(&key).unwrap();
    let key_body = key_pem.lines().nth(1).unwrap();
    assert!(!visible.contains(key_body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_exec_and_attach_work_and_are_recorded() {
    let k = start("k8s", json!({})).await;
    let key = k.gw.key_for("alice@example.com", &["eng"]).await;
    let cfg = k.kubeconfig("k8s", &key);
    // exec -it under a real terminal (script gives kubectl one).
    let marker = unique("pty");
    let command = format!("{} --kubeconfig {cfg} exec -it web -- sh", kubectl_path());
    let out = tokio::task::spawn_blocking({
        let marker = marker.clone();
        move || {
            use std::io::Write;
            let mut child = std::process::Command::new("script")
                .args(["-qec", &command, "/dev/null"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdin = child.stdin.take().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(1500));
            write!(stdin, "echo tty-$(tty | cut -c1-8)-{marker}\r").unwrap();
            std::thread::sleep(std::time::Duration::from_millis(1000));
            write!(stdin, "exit\r").unwrap();
            std::thread::sleep(std::time::Duration::from_millis(500));
            drop(stdin);
            child.wait_with_output().unwrap()
        }
    })
    .await
    .unwrap();
    let shown = text(&out.stdout);
    assert!(
        shown.contains(&format!("tty-/dev/pts-{marker}")),
        "{shown} {}",
        text(&out.stderr)
    );
    let recorded = eventually("the terminal recording", || async {
        let all = k.gw.recordings_text();
        all.contains(&format!("tty-/dev/pts-{marker}"))
            .then_some(all)
    })
    .await;
    assert!(
        recorded.contains("\"TERM\""),
        "a PTY exec is recorded as a terminal"
    );

    // attach streams what the container writes while it is attached.
    let log = env_or("WARDEN_TEST_K8S_LOG_FILE", &format!("{STACK}/pods.log"));
    let attached = unique("attached");
    let (_attach, mut lines) = kubectl_stream(&cfg, &["attach", "web"]);
    eventually("attach to open", || async {
        let events = k.gw.audit_events("k8s.request").await;
        events
            .iter()
            .any(|e| e["event"]["payload"]["request"] == "create pods/attach web -n default")
            .then_some(())
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        writeln!(f, "2026-12-02T00:00:00.000000000Z stdout F {attached}").unwrap();
    }
    assert!(
        line_with(&mut lines, &attached).await.is_some(),
        "attach did not stream"
    );
    eventually("the attach recording", || async {
        let all = k.gw.recordings_text();
        all.contains(&attached).then_some(())
    })
    .await;
}
