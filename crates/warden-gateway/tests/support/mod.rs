//! Shared test fixtures: a real OpenID provider, a second issuer the tests control,
//! and an in-process gateway over either store engine.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use axum::Json;
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use warden_gateway::Gateway;
use warden_gateway::config::{Config, OidcIssuerConfig, StoreUrl};
use warden_store::Backend;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";
pub const PROVIDER_AUDIENCE: &str = "urn:warden";
pub const TEST_ISSUER_AUDIENCE: &str = "warden-test";

/// The issuer URL of the real `oidc-provider`: `WARDEN_TEST_OIDC_ISSUER` when the test
/// script started one, else one started for this test binary.
pub fn provider_issuer() -> String {
    static ISSUER: OnceLock<String> = OnceLock::new();
    // The child and its stdin live as long as the test process; closing stdin at exit
    // makes the provider exit.
    static CHILD: OnceLock<Mutex<(Child, ChildStdin)>> = OnceLock::new();
    ISSUER
        .get_or_init(|| {
            if let Ok(url) = std::env::var("WARDEN_TEST_OIDC_ISSUER") {
                return url;
            }
            let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/oidc");
            assert!(
                std::path::Path::new(dir).join("node_modules/oidc-provider").exists(),
                "the test OpenID provider is not installed: run scripts/test.sh (or `npm ci` in tests/oidc)"
            );
            let mut child = Command::new("node")
                .arg("provider.mjs")
                .current_dir(dir)
                .env("EXIT_WITH_STDIN", "1")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("start node for the OpenID provider");
            let stdout = child.stdout.take().expect("provider stdout");
            let stdin = child.stdin.take().expect("provider stdin");
            CHILD.set(Mutex::new((child, stdin))).ok();
            for line in BufReader::new(stdout).lines() {
                let line = line.expect("provider output");
                if let Some(json) = line.strip_prefix("{\"issuer\"") {
                    let v: Value = serde_json::from_str(&format!("{{\"issuer\"{json}")).unwrap();
                    return v["issuer"].as_str().unwrap().to_string();
                }
            }
            panic!("the OpenID provider exited without printing its issuer");
        })
        .clone()
}

/// A JWT access token from the real provider, via the client credentials grant.
pub async fn provider_token(client: &str, resource: &str) -> String {
    let issuer = provider_issuer();
    let resp: Value = reqwest::Client::new()
        .post(format!("{issuer}/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", client),
            ("client_secret", &format!("{client}-secret")),
            ("resource", resource),
            ("scope", "api"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    resp["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token from provider: {resp}"))
        .to_string()
}

/// A second issuer, served by the test, whose keys the test holds, for tokens no
/// well-behaved provider would issue (future `nbf`, `alg: none`, unknown kids).
pub struct TestIssuer {
    pub url: String,
    keys: Arc<Mutex<Vec<(String, rcgen::KeyPair)>>>,
    pub jwks_fetches: Arc<AtomicUsize>,
}

fn jwk_of(kid: &str, key: &rcgen::KeyPair) -> Value {
    let raw = key.public_key_raw(); // 0x04 || x || y
    json!({
        "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
        "x": URL_SAFE_NO_PAD.encode(&raw[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&raw[33..65]),
    })
}

impl TestIssuer {
    pub async fn start() -> TestIssuer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let keys = Arc::new(Mutex::new(vec![(
            "test-1".to_string(),
            rcgen::KeyPair::generate().unwrap(),
        )]));
        let fetches = Arc::new(AtomicUsize::new(0));
        let discovery = json!({"issuer": url, "jwks_uri": format!("{url}/jwks")});
        let (k, f) = (keys.clone(), fetches.clone());
        let app = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                get(move || async move { Json(discovery) }),
            )
            .route(
                "/jwks",
                get(move || async move {
                    f.fetch_add(1, Ordering::SeqCst);
                    let keys: Vec<Value> = k
                        .lock()
                        .unwrap()
                        .iter()
                        .map(|(kid, key)| jwk_of(kid, key))
                        .collect();
                    Json(json!({ "keys": keys }))
                }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        TestIssuer {
            url,
            keys,
            jwks_fetches: fetches,
        }
    }

    /// Publishes a new key (rotation) and returns its kid.
    pub fn rotate(&self) -> String {
        let mut keys = self.keys.lock().unwrap();
        let kid = format!("test-{}", keys.len() + 1);
        keys.push((kid.clone(), rcgen::KeyPair::generate().unwrap()));
        kid
    }

    /// Signs `claims` with the published key `kid`.
    pub fn sign(&self, kid: &str, claims: &Value) -> String {
        let keys = self.keys.lock().unwrap();
        let key = &keys.iter().find(|(k, _)| k == kid).expect("known kid").1;
        sign_es256(key, Some(kid), claims)
    }

    /// Standard valid claims for this issuer.
    pub fn claims(&self, sub: &str, groups: &[&str]) -> Value {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        json!({"iss": self.url, "aud": TEST_ISSUER_AUDIENCE, "sub": sub, "groups": groups,
               "iat": now, "exp": now + 600})
    }
}

pub fn sign_es256(key: &rcgen::KeyPair, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = kid.map(String::from);
    let enc = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
    jsonwebtoken::encode(&header, claims, &enc).unwrap()
}

/// An unsigned token (`alg: none`).
pub fn unsigned_token(claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{payload}.")
}

/// A gateway started in this process, with a client and the admin token.
pub struct TestGateway {
    pub gateway: Gateway,
    pub url: String,
    pub http: reqwest::Client,
    pub dir: tempfile::TempDir,
}

pub fn base_config(
    dir: &std::path::Path,
    store_url: String,
    issuers: Vec<OidcIssuerConfig>,
) -> Config {
    let mut config = Config {
        data_dir: dir.to_path_buf(),
        admin_token: Some(ADMIN_TOKEN.to_string().into()),
        ..Config::default()
    };
    config.api.listen = "127.0.0.1:0".parse().unwrap();
    config.api.max_body_bytes = 64 * 1024;
    config.pg.listen = "127.0.0.1:0".parse().unwrap();
    config.mysql.listen = "127.0.0.1:0".parse().unwrap();
    config.ssh.listen = "127.0.0.1:0".parse().unwrap();
    config.kubernetes.listen = "127.0.0.1:0".parse().unwrap();
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.store.url = Some(StoreUrl(store_url.into()));
    config.auth.clock_skew_secs = 1;
    config.auth.jwks_min_refresh_secs = 1;
    config.auth.oidc = issuers;
    config.policies = toml::from_str(TEST_POLICIES).unwrap();
    config
}

/// Policy sets every test gateway defines in its config file.
pub const TEST_POLICIES: &str = r#"
[[guardrails]]
name = "no-drops"
[[guardrails.rules]]
name = "no-ddl"
sql_statements = ["ddl"]
[[guardrails.rules]]
name = "no-unbounded"
sql_unbounded_writes = true

[[guardrails]]
name = "read-only"
[[guardrails.rules]]
name = "reads-only"
sql_read_only = true

[[guardrails]]
name = "shell-safety"
[[guardrails.rules]]
name = "no-rm-rf"
shell = ["rm -rf *"]

[[guardrails]]
name = "held-for-review"
[[guardrails.rules]]
name = "deletes-need-review"
sql_statements = ["delete"]
[[guardrails.rules]]
name = "held-commands"
shell = ["echo held*"]

[[guardrails]]
name = "http-safety"
[[guardrails.rules]]
name = "no-deletes"
http = ["DELETE /**"]

[[guardrails]]
name = "k8s-safety"
[[guardrails.rules]]
name = "no-namespace-deletes"
kubernetes = ["delete namespaces"]
[[guardrails.rules]]
name = "no-prod-exec"
kubernetes = ["create pods/exec in prod"]
[[guardrails.rules]]
name = "no-rm-rf"
shell = ["rm -rf *"]

[[guardrails]]
name = "k8s-review"
[[guardrails.rules]]
name = "deployment-deletes"
kubernetes = ["delete deployments.apps"]

[[masking]]
name = "pii"
detectors = ["email", "card_number"]
columns = [{ pattern = "*.ssn" }]
"#;

pub fn issuer_config(issuer: &str, audience: &str) -> OidcIssuerConfig {
    OidcIssuerConfig {
        issuer: issuer.to_string(),
        audiences: vec![audience.to_string()],
        groups_claim: "groups".into(),
        subject_claim: "sub".into(),
        algorithms: vec!["RS256".into(), "ES256".into()],
        jwks_uri: None,
    }
}

impl TestGateway {
    /// A gateway trusting the real provider and, when given, a test issuer.
    pub async fn start(backend: Backend, test_issuer: Option<&TestIssuer>) -> TestGateway {
        let dir = tempfile::tempdir().unwrap();
        let store_url = warden_store::testing::fresh_url(backend, dir.path())
            .await
            .unwrap();
        let mut issuers = vec![issuer_config(&provider_issuer(), PROVIDER_AUDIENCE)];
        if let Some(t) = test_issuer {
            issuers.push(issuer_config(&t.url, TEST_ISSUER_AUDIENCE));
        }
        Self::with_config(base_config(dir.path(), store_url, issuers), dir).await
    }

    /// A gateway on a fresh SQLite store with no OpenID issuer, its configuration
    /// changed by `tweak` first (a limit or timeout a test exercises).
    pub async fn sqlite_with(tweak: impl FnOnce(&mut Config)) -> TestGateway {
        let dir = tempfile::tempdir().unwrap();
        let store_url = warden_store::testing::fresh_url(Backend::Sqlite, dir.path())
            .await
            .unwrap();
        let mut config = base_config(dir.path(), store_url, vec![]);
        tweak(&mut config);
        Self::with_config(config, dir).await
    }

    pub async fn with_config(config: Config, dir: tempfile::TempDir) -> TestGateway {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let gateway = Gateway::start(config).await.unwrap();
        TestGateway {
            url: gateway.api_url(),
            gateway,
            http: reqwest::Client::new(),
            dir,
        }
    }

    /// Sends a request with `token` (if any) and JSON `body` (if any); returns status and JSON.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call(method, path, Some(ADMIN_TOKEN), body).await
    }

    /// Every session recording this gateway wrote (terminals decompressed),
    /// concatenated.
    pub fn recordings_text(&self) -> String {
        let mut all = String::new();
        for f in std::fs::read_dir(self.dir.path().join("recordings")).unwrap() {
            let path = f.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            if path.to_string_lossy().ends_with(".zst") {
                let mut text = Vec::new();
                let mut decoder = zstd::stream::read::Decoder::new(&bytes[..]).unwrap();
                let _ = std::io::Read::read_to_end(&mut decoder, &mut text);
                all += &String::from_utf8_lossy(&text);
            } else {
                all += &String::from_utf8(bytes).unwrap();
            }
        }
        all
    }

    /// What the admin can read of the gateway's state — the whole audit log, `extra`
    /// answers — and every recording: the haystack secret checks search.
    pub async fn everything_visible(&self, extra: &[&serde_json::Value]) -> String {
        let mut all = self
            .admin("GET", "/api/audit?limit=1000", None)
            .await
            .1
            .to_string();
        for v in extra {
            all += &v.to_string();
        }
        all + &self.recordings_text()
    }

    /// An API key for `subject` in `groups`.
    pub async fn key_for(&self, subject: &str, groups: &[&str]) -> String {
        let (status, key) = self
            .admin(
                "POST",
                "/api/api-keys",
                Some(
                    json!({"name": format!("{subject}-key"), "subject": subject, "groups": groups}),
                ),
            )
            .await;
        assert_eq!(status, 201, "{key}");
        key["token"].as_str().unwrap().to_string()
    }

    /// Waits (bounded) for a pending review of exactly `command` that `token` may
    /// see, and returns its id.
    pub async fn pending_review(&self, token: &str, command: &str) -> String {
        for _ in 0..300 {
            let (_, list) = self
                .call("GET", "/api/reviews?status=pending", Some(token), None)
                .await;
            if let Some(r) = list
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["command"] == command)
            {
                return r["id"].as_str().unwrap().to_string();
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("no pending review of `{command}`");
    }

    /// Audit events of one kind, as the admin sees them.
    pub async fn audit_events(&self, kind: &str) -> Vec<Value> {
        let (status, page) = self
            .admin("GET", &format!("/api/audit?kind={kind}&limit=1000"), None)
            .await;
        assert_eq!(status, 200, "{page}");
        page["events"].as_array().unwrap().clone()
    }

    /// The outcomes of `family`'s statements (`pg`, `ssh`, ...) as payloads, each
    /// naming its statement's event (`statement`): folded into that event
    /// (`payload.outcome`), or an event of its own (`<family>.outcome`).
    pub async fn outcomes(&self, family: &str) -> Vec<Value> {
        let mut outcomes = Vec::new();
        for e in self.audit_events(&format!("{family}.")).await {
            let event = &e["event"];
            if event["kind"] == format!("{family}.outcome") {
                outcomes.push(event["payload"].clone());
            } else if let Some(folded) = event["payload"].get("outcome") {
                let mut o = folded.clone();
                o["statement"] = event["id"].clone();
                outcomes.push(o);
            }
        }
        outcomes
    }
}

/// Runs one async test body against both store engines.
#[macro_export]
macro_rules! both_stores {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(warden_store::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(warden_store::Backend::Postgres).await
            }
        }
    };
}

/// The test PostgreSQL server's certificate (Debian's self-signed "snakeoil" one,
/// or `WARDEN_TEST_PG_CA`) and the host name it is issued to.
pub fn pg_server_ca() -> (String, String) {
    let path = std::env::var("WARDEN_TEST_PG_CA")
        .unwrap_or_else(|_| "/etc/ssl/certs/ssl-cert-snakeoil.pem".into());
    let pem = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("the test PostgreSQL certificate {path}: {e}"));
    let out = std::process::Command::new("openssl")
        .args([
            "x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in", &path,
        ])
        .output()
        .expect("openssl must be installed (scripts/test.sh installs it)");
    let subject = String::from_utf8_lossy(&out.stdout).into_owned();
    let name = subject
        .split("CN=")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| panic!("no CN in {subject}"));
    (pem, name)
}

/// Waits (bounded) until `probe` returns something.
pub async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// tokio-postgres through the gateway's PostgreSQL listener to connection `db`, with
/// `token` as the password; the connection task runs in the background.
pub async fn pg_connect(
    gw: &TestGateway,
    db: &str,
    token: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let port = gw
        .gateway
        .listener(warden_core::ConnectionKind::Postgres)
        .map_or(0, |l| l.port());
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=anyone dbname={db} password={token}"),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(conn);
    Ok(client)
}
