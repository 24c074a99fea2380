//! The shared conformance scenarios (`warden_core::testing::conformance`) through the
//! PostgreSQL proxy: a real client (tokio-postgres) against the real PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::NoTls;
use warden_core::testing::conformance::{self, ConformanceGuard, Outcome, Scenario};
use warden_core::testing::{MemorySink, MemoryTimeline, eventually};
use warden_core::{
    BackendTarget, LoginRequest, Refusal, Secret, SessionEnd, SessionHandle, SessionHooks, TlsMode,
    TlsOptions,
};
use warden_pg::proxy::{CancelMap, ProxyConfig, serve_client};

struct Hooks {
    sink: Arc<MemorySink>,
    timeline: Arc<MemoryTimeline>,
}

impl SessionHooks for Hooks {
    async fn open(&self, _login: LoginRequest<'_>) -> Result<SessionHandle, Refusal> {
        let target = BackendTarget {
            addr: "127.0.0.1:5432".into(),
            user: "warden_t_scram".into(),
            database: "postgres".into(),
            secret: Some(Secret::new("scram-pw-1".into())),
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
            let config = ProxyConfig {
                cancels: CancelMap::default(),
                allow_plaintext_tokens: false,
                tls: None,
                max_message: 1 << 24,
                login_timeout: Duration::from_secs(10),
            };
            tokio::spawn(serve_client(stream, peer, hooks.clone(), config));
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
        let conn = format!(
            "host=127.0.0.1 port={} user=alice dbname=c password=t",
            addr.port()
        );
        let (client, connection) = tokio_postgres::connect(&conn, NoTls).await.unwrap();
        let connection = tokio::spawn(connection);
        scenario.arrange(&hooks.sink, &hooks.timeline);
        let sql = format!("SELECT '{}'", scenario.marker());
        let seen = if scenario == Scenario::ClientGoneDuringReview {
            let query = tokio::spawn(async move { client.simple_query(&sql).await });
            eventually("the hold", || {
                conformance::trace(&hooks.sink).contains(&"held".to_string())
            })
            .await;
            // The client's process dies: its socket closes.
            connection.abort();
            query.abort();
            eventually("the session's end", || conformance::closed(&hooks.sink)).await;
            Outcome::Left
        } else {
            match client.simple_query(&sql).await {
                Ok(_) => Outcome::Ran,
                Err(e) => match e
                    .as_db_error()
                    .map(|d| (d.code().code().to_string(), d.severity().to_string()))
                {
                    Some((code, sev)) if sev == "FATAL" => {
                        let _ = code;
                        Outcome::Ended
                    }
                    Some((code, _)) if code == "42501" => Outcome::Refused,
                    Some((code, _)) if code == "58000" => Outcome::Unavailable,
                    _ if client.is_closed() => Outcome::Ended,
                    other => panic!("{scenario:?}: unexpected {other:?}: {e}"),
                },
            }
        };
        if seen == Outcome::Ended {
            eventually("the session's end", || conformance::closed(&hooks.sink)).await;
        }
        conformance::verify(scenario, seen, &hooks.sink);
    }
}
