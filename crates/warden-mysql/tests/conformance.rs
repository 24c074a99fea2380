//! The shared conformance scenarios (`warden_core::testing::conformance`) through the
//! MySQL proxy: a real client (mysql_async) against the real MariaDB.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};
use warden_core::testing::conformance::{self, ConformanceGuard, Outcome, Scenario};
use warden_core::testing::{MemorySink, MemoryTimeline, eventually};
use warden_core::{
    BackendTarget, LoginRequest, Refusal, Secret, SessionEnd, SessionHandle, SessionHooks, TlsMode,
    TlsOptions,
};
use warden_mysql::proxy::{ProxyConfig, serve_client};

struct Hooks {
    sink: Arc<MemorySink>,
    timeline: Arc<MemoryTimeline>,
}

fn mariadb() -> String {
    std::env::var("WARDEN_TEST_MYSQL_HOSTPORT").unwrap_or_else(|_| "127.0.0.1:3306".into())
}

impl SessionHooks for Hooks {
    async fn open(&self, _login: LoginRequest<'_>) -> Result<SessionHandle, Refusal> {
        let target = BackendTarget {
            addr: mariadb(),
            user: "warden_t_native".into(),
            database: "warden_t".into(),
            secret: Some(Secret::new("native-pw-1".into())),
            secret_kind: Some(warden_core::SecretKind::Password),
            ssh: Default::default(),
            tls: TlsOptions {
                mode: TlsMode::Disable,
                ..TlsOptions::default()
            },
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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, peer) = listener.accept().await.unwrap();
            tokio::spawn(serve_client(
                stream,
                peer,
                hooks.clone(),
                ProxyConfig::default(),
            ));
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
        let opts = OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(addr.port())
            .user(Some("alice"))
            .pass(Some("token"))
            .db_name(Some("c"))
            .enable_cleartext_plugin(true);
        let mut conn = Conn::new(opts).await.unwrap();
        scenario.arrange(&hooks.sink, &hooks.timeline);
        let sql = format!("SELECT '{}'", scenario.marker());
        let seen = if scenario == Scenario::ClientGoneDuringReview {
            let query = tokio::spawn(async move {
                let _ = conn.query_drop(sql).await;
                conn
            });
            eventually("the hold", || {
                conformance::trace(&hooks.sink).contains(&"held".to_string())
            })
            .await;
            // The client's process dies: the task and its socket are dropped.
            query.abort();
            eventually("the session's end", || conformance::closed(&hooks.sink)).await;
            Outcome::Left
        } else {
            match conn.query_drop(&sql).await {
                Ok(()) => Outcome::Ran,
                Err(mysql_async::Error::Server(e)) if e.code == 1227 => Outcome::Refused,
                Err(mysql_async::Error::Server(e)) if e.code == 1105 => {
                    // A gateway fault: the session goes on, unless it ended.
                    match conn.ping().await {
                        Ok(()) => Outcome::Unavailable,
                        Err(_) => Outcome::Ended,
                    }
                }
                Err(e) => {
                    assert!(conn.ping().await.is_err(), "{scenario:?}: {e}");
                    Outcome::Ended
                }
            }
        };
        if seen == Outcome::Ended {
            eventually("the session's end", || conformance::closed(&hooks.sink)).await;
        }
        conformance::verify(scenario, seen, &hooks.sink);
    }
}
