//! A property of the PostgreSQL proxy's masking, through the proxy against the real
//! PostgreSQL: any value masked in text format is masked in binary format as well
//! (or comes back NULL), for every type the masker searches.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use tokio_postgres::NoTls;
use tokio_postgres::types::{FromSql, Type};
use warden_core::testing::{MemorySink, MemoryTimeline};
use warden_core::{
    BackendTarget, LoginRequest, Refusal, Secret, SessionEnd, SessionHandle, SessionHooks, TlsMode,
    TlsOptions,
};
use warden_pg::proxy::{CancelMap, ProxyConfig, serve_client};
use warden_policy::{Guardrails, MaskingEngine, PolicyConfig};

const MASKING: &str = r#"
[[masking]]
name = "pii"
detectors = ["email", "card_number"]
"#;

struct Hooks {
    sink: Arc<MemorySink>,
}

impl SessionHooks for Hooks {
    async fn open(&self, _login: LoginRequest<'_>) -> Result<SessionHandle, Refusal> {
        let policy: PolicyConfig = toml::from_str(MASKING).unwrap();
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
        Ok(self.sink.open(
            target,
            Arc::new(Guardrails::compile(&[], &[]).unwrap()),
            Arc::new(MaskingEngine::from_sets(&policy.masking, b"k").unwrap()),
            Arc::new(MemoryTimeline::new(2)),
            SessionEnd::never(),
        ))
    }
}

async fn start() -> SocketAddr {
    let hooks = Arc::new(Hooks {
        sink: Arc::default(),
    });
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

/// Any value: whether it is NULL, and its bytes.
struct RawValue(Option<Vec<u8>>);

impl<'a> FromSql<'a> for RawValue {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawValue(Some(raw.to_vec())))
    }
    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawValue(None))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

/// A Luhn-valid 16-digit card number from 15 random digits.
fn card(digits: &[u8]) -> String {
    let mut d: Vec<u32> = digits.iter().map(|b| u32::from(*b % 10)).collect();
    d.insert(0, 4);
    d.truncate(15);
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, x)| {
            if i % 2 == 0 {
                let y = x * 2;
                if y > 9 { y - 9 } else { y }
            } else {
                *x
            }
        })
        .sum();
    d.push((10 - sum % 10) % 10);
    d.iter()
        .map(|x| char::from_digit(*x, 10).unwrap())
        .collect()
}

/// A value of `ty` as an SQL expression, from a piece of text.
fn expression(ty: &str, text: &str) -> String {
    let quoted = format!("'{}'", text.replace('\'', "''"));
    match ty {
        "text[]" => format!("ARRAY[{quoted}, 'x']"),
        "jsonb" => format!("jsonb_build_object('v', {quoted}::text)"),
        "record" => format!("row({quoted}::text, 1)"),
        "bytea" => format!("convert_to({quoted}, 'UTF8')"),
        "int8" | "numeric" | "float8" => format!("{quoted}::{ty}"),
        "int8[]" => format!("ARRAY[{quoted}::int8]"),
        _ => format!("{quoted}::text"),
    }
}

fn values() -> impl Strategy<Value = (String, String)> {
    let text_types = prop::sample::select(vec!["text", "text[]", "jsonb", "record", "bytea"]);
    let number_types = prop::sample::select(vec!["int8", "numeric", "float8", "int8[]"]);
    let digits = prop::collection::vec(any::<u8>(), 15);
    prop_oneof![
        (text_types.clone(), "[a-z]{1,8}", "[a-z]{1,8}")
            .prop_map(|(t, a, b)| (t.to_string(), format!("{a}@{b}.com"))),
        (text_types.clone(), digits.clone())
            .prop_map(|(t, d)| (t.to_string(), format!("card {}", card(&d)))),
        (text_types, "[a-z ]{0,12}").prop_map(|(t, s)| (t.to_string(), s)),
        (number_types.clone(), digits).prop_map(|(t, d)| (t.to_string(), card(&d))),
        (number_types, 0u64..1_000_000).prop_map(|(t, n)| (t.to_string(), n.to_string())),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn masked_in_text_means_masked_in_binary((ty, text) in values()) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let addr = start().await;
            let conn = format!("host=127.0.0.1 port={} user=a dbname=c password=t", addr.port());
            let (c, connection) = tokio_postgres::connect(&conn, NoTls).await.unwrap();
            tokio::spawn(connection);
            let (direct, connection) = tokio_postgres::connect(
                "host=127.0.0.1 port=5432 user=warden_t_scram password=scram-pw-1 dbname=postgres",
                NoTls,
            )
            .await
            .unwrap();
            tokio::spawn(connection);
            let sql = format!("SELECT {}", expression(&ty, &text));
            let first_text = |rows: Vec<tokio_postgres::SimpleQueryMessage>| {
                rows.iter().find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_string)),
                    _ => None,
                }).flatten()
            };
            // Masked in text format: the proxy's text differs from the server's own.
            let through_text = first_text(c.simple_query(&sql).await.unwrap());
            let from_server = first_text(direct.simple_query(&sql).await.unwrap());
            let masked_in_text = through_text != from_server;
            let row = c.query_one(&sql, &[]).await.unwrap();
            let RawValue(binary) = row.get(0);
            if masked_in_text && !text.is_empty() {
                let needle = text.trim_start_matches("card ");
                let leaked = binary.as_deref().is_some_and(|b| {
                    String::from_utf8_lossy(b).contains(needle)
                        // A number that is a masked value in text is not left as a number.
                        || matches!(ty.as_str(), "int8" | "numeric" | "float8")
                });
                prop_assert!(!leaked, "{ty} {text:?}: text {through_text:?}, binary {binary:?}");
            }
            Ok(())
        })?;
    }
}
