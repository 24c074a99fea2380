//! Kubernetes streams through Warden with the real kubectl: exec (WebSocket and SPDY,
//! with and without a terminal), attach, port-forward, watches and `logs -f`, and
//! what revocation does to them. The stack: see `tests/kubernetes.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod k8s;
mod support;

use k8s::*;
use serde_json::{Value, json};
use support::*;

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
                    "sh",
                    "-c",
                    "echo via-spdy-$((6*7))",
                ])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "via-spdy-42");
    // ... and recorded like the WebSocket one.
    eventually("the SPDY exec recording", || async {
        k.gw.recordings_text().contains("via-spdy-42").then_some(())
    })
    .await;
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
