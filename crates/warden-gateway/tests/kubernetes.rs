//! Kubernetes connections end to end: the real `kubectl` (built with the API server)
//! through the gateway's `[kubernetes]` listener (TLS, so kubectl speaks HTTP/2) to a
//! real kube-apiserver with etcd and kwok (started by scripts/test.sh; see
//! `setup_k8s` in scripts/lib.sh): requests, rules, reviews, Secrets, identities.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// Test clients write plain TCP, which holds back no unflushed bytes.
#![allow(clippy::disallowed_methods)]

mod k8s;
mod support;

use k8s::*;
use serde_json::{Value, json};

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
