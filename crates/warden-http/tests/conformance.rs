//! The shared conformance scenarios (`warden_core::testing::conformance`) through the
//! HTTP proxy: reqwest as the client, the real go-httpbin `scripts/test.sh` starts as
//! the target (`WARDEN_TEST_HTTPBIN_URL`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;

use warden_core::testing::conformance::{self, ConformanceGuard, Outcome, Scenario};
use warden_core::testing::{MemorySink, MemoryTimeline, eventually};
use warden_core::{
    BackendTarget, ConnectionKind, LoginRequest, Refusal, SessionEnd, SessionHandle, SessionHooks,
};
use warden_http::{HttpProxy, ProxyLimits};

fn httpbin() -> String {
    std::env::var("WARDEN_TEST_HTTPBIN_URL").unwrap_or_else(|_| "http://127.0.0.1:18080".into())
}

struct Hooks {
    sink: Arc<MemorySink>,
    timeline: Arc<MemoryTimeline>,
}

impl SessionHooks for Hooks {
    async fn open(&self, _login: LoginRequest<'_>) -> Result<SessionHandle, Refusal> {
        let target = BackendTarget {
            addr: httpbin(),
            user: String::new(),
            database: String::new(),
            secret: None,
            secret_kind: None,
            ssh: Default::default(),
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
    let proxy = Arc::new(HttpProxy::new(
        hooks,
        ConnectionKind::Http,
        None,
        ProxyLimits::default(),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_ends_as_the_pipeline_says() {
    for scenario in Scenario::ALL {
        let hooks = Arc::new(Hooks {
            sink: Arc::default(),
            timeline: Arc::new(MemoryTimeline::new(2)),
        });
        let addr = start(hooks.clone()).await;
        // Arranged before the request: the session opens with it.
        scenario.arrange(&hooks.sink, &hooks.timeline);
        let url = format!("http://{addr}/conn/anything/{}", scenario.marker());
        // One client per scenario: its connection (and so the session) ends with it.
        let client = reqwest::Client::new();
        let request = client.get(&url).bearer_auth("token").send();
        let seen = if scenario == Scenario::ClientGoneDuringReview {
            let pending = tokio::spawn(request);
            eventually("the hold", || {
                conformance::trace(&hooks.sink).contains(&"held".to_string())
            })
            .await;
            // The client gives up: its connection closes.
            pending.abort();
            drop(client);
            eventually("the session's end", || conformance::closed(&hooks.sink)).await;
            Outcome::Left
        } else {
            let response = request.await.unwrap();
            let status = response.status().as_u16();
            let body = response.text().await.unwrap();
            drop(client);
            match status {
                200 => {
                    assert!(body.contains(scenario.marker()), "{body}");
                    Outcome::Ran
                }
                403 => Outcome::Refused,
                503 if body.contains("the Warden session ended") => Outcome::Ended,
                503 => Outcome::Unavailable,
                other => panic!("{scenario:?}: {other} {body}"),
            }
        };
        eventually("the session's end", || conformance::closed(&hooks.sink)).await;
        conformance::verify(scenario, seen, &hooks.sink);
    }
}
